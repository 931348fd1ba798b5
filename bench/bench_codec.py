"""Records/second of ``ingestor.codec.decode`` per input shape, with orjson (used) and stdlib json (for comparison),
then Avro (Confluent wire format, fastavro) next to JSON for the same rows, both through the pipeline's decode entry
(``AvroDecoder.decode``, writer schemas cached).

Run: ``python bench/bench_codec.py [--records N] [--repeat R]`` (defaults: 200,000 records, best of 3).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson

from ingestor import codec
from ingestor.avro import AvroDecoder, encode
from ingestor.model import SourceRecord
from ingestor.registry import RegisteredSchema
from ingestor.schema import DatasetKind
from ingestor.schema_cache import WriterSchemas

KIND = DatasetKind.ITEMS


def _row(i: int) -> dict[str, Any]:
    return {
        "ITEM_ID": f"item-{i}",
        "PRICE": 9.5 + i % 100,
        "GENRES": "drama|comedy|thriller",
        "TITLE": f"A moderately long title for item number {i}",
        "DESCRIPTION": "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor. " * 3,
        "CREATION_TIMESTAMP": 1_700_000_000 + i,
        "IN_STOCK": i % 2 == 0,
        "BRAND": None,
        "RATING": 4.25,
        "COLOR": "blue",
    }


def _api(i: int, as_string: bool) -> dict[str, Any]:
    row = _row(i)
    rid = row.pop("ITEM_ID")
    props = {k.lower(): v for k, v in row.items()}
    return {"itemId": rid, "properties": json.dumps(props) if as_string else props}


def _debezium(i: int, wrapped: str = "") -> dict[str, Any]:
    env = {
        "before": None,
        "after": _row(i),
        "op": "u",
        "source": {"connector": "postgresql", "db": "shop", "table": "items", "lsn": 123456 + i},
        "ts_ms": 1_700_000_000_000 + i,
    }
    if wrapped == "schema":
        return {"schema": {"type": "struct", "fields": []}, "payload": env}
    if wrapped == "payload":
        return {"payload": env}
    return env


SHAPES: dict[str, Callable[[int], tuple[bytes | None, bytes | None]]] = {
    "flat": lambda i: (f"item-{i}".encode(), json.dumps(_row(i)).encode()),
    "api (properties object)": lambda i: (None, json.dumps(_api(i, False)).encode()),
    "api (properties string)": lambda i: (None, json.dumps(_api(i, True)).encode()),
    "debezium": lambda i: (json.dumps({"ITEM_ID": f"item-{i}"}).encode(), json.dumps(_debezium(i)).encode()),
    "debezium (schema wrapper)": lambda i: (None, json.dumps(_debezium(i, "schema")).encode()),
    "debezium (payload only)": lambda i: (None, json.dumps(_debezium(i, "payload")).encode()),
    "flat, id from JSON key": lambda i: (
        json.dumps({"ITEM_ID": i}).encode(),
        json.dumps({k: v for k, v in _row(i).items() if k != "ITEM_ID"}).encode(),
    ),
    "tombstone": lambda i: (f"item-{i}".encode(), None),
}

PARSERS: dict[str, Callable[[Any], Any]] = {"orjson": orjson.loads, "json": json.loads}


@contextmanager
def _parser(loads: Callable[[Any], Any]) -> Iterator[None]:
    saved = codec._loads
    codec._loads = loads
    try:
        yield
    finally:
        codec._loads = saved


def _rate(records: list[SourceRecord], repeat: int) -> float:
    decode = codec.decode
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for rec in records:
            decode(rec, KIND)
        best = min(best, time.perf_counter() - start)
    return len(records) / best


# ---------------------------------------------------------------------- Avro next to JSON

_COLUMNS: list[dict[str, Any]] = [
    {"name": "ITEM_ID", "type": "string"},
    {"name": "PRICE", "type": "double"},
    {"name": "GENRES", "type": "string"},
    {"name": "TITLE", "type": "string"},
    {"name": "DESCRIPTION", "type": "string"},
    {"name": "CREATION_TIMESTAMP", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "IN_STOCK", "type": "boolean"},
    {"name": "BRAND", "type": ["null", "string"], "default": None},
    {"name": "RATING", "type": "double"},
    {"name": "COLOR", "type": "string"},
]
_ROW_SCHEMA = {"type": "record", "name": "Value", "namespace": "shop.items", "fields": _COLUMNS}
_ENVELOPE = {
    "type": "record",
    "name": "Envelope",
    "namespace": "shop.items",
    "fields": [
        {"name": "before", "type": ["null", _ROW_SCHEMA], "default": None},
        {"name": "after", "type": ["null", "Value"], "default": None},
        {
            "name": "source",
            "type": {
                "type": "record",
                "name": "Source",
                "fields": [
                    {"name": "connector", "type": "string"},
                    {"name": "db", "type": "string"},
                    {"name": "table", "type": "string"},
                    {"name": "lsn", "type": "long"},
                ],
            },
        },
        {"name": "op", "type": "string"},
        {"name": "ts_ms", "type": "long"},
    ],
}
_KEY_SCHEMA = {"type": "record", "name": "Key", "fields": [{"name": "ITEM_ID", "type": "string"}]}


def _avro_row(i: int) -> dict[str, Any]:
    return {**_row(i), "CREATION_TIMESTAMP": (1_700_000_000 + i) * 1000}


def _avro_pairs() -> dict[str, tuple[Callable[[int], tuple[bytes | None, bytes | None]], AvroDecoder]]:
    from fastavro import parse_schema

    cache = WriterSchemas(None)
    for sid, schema in ((1, _ROW_SCHEMA), (2, _ENVELOPE), (3, _KEY_SCHEMA)):
        cache.add(RegisteredSchema(sid, json.dumps(schema)))
    row, env, key = (parse_schema(json.loads(json.dumps(x))) for x in (_ROW_SCHEMA, _ENVELOPE, _KEY_SCHEMA))
    dec = AvroDecoder(cache)
    return {
        "flat": (lambda i: (f"item-{i}".encode(), encode(1, row, _avro_row(i))), dec),
        "debezium": (
            lambda i: (
                encode(3, key, {"ITEM_ID": f"item-{i}"}),
                encode(2, env, {**_debezium(i, False), "after": _avro_row(i)}),
            ),
            dec,
        ),
    }


def _rates_interleaved(dec: AvroDecoder, runs: list[tuple[list[SourceRecord], str]], repeat: int) -> list[float]:
    """Best records/s of each run, the runs interleaved in every repeat (a shared CPU's noise hits them alike)."""
    decode = dec.decode
    best = [float("inf")] * len(runs)
    for _ in range(repeat):
        for i, (records, fmt) in enumerate(runs):
            start = time.perf_counter()
            for rec in records:
                decode(rec, KIND, fmt)
            best[i] = min(best[i], time.perf_counter() - start)
    return [len(records) / t for (records, _), t in zip(runs, best, strict=True)]


def _avro_table(n: int, repeat: int) -> None:
    print(f"\nAvro (fastavro, writer schema cached) next to JSON (orjson), same rows, {n:,} records, best of {repeat}")
    print(f"{'shape':<28}{'json B':>7}{'avro B':>7}{'json/s':>12}{'avro/s':>12}{'avro/json':>11}")
    for shape, (make_avro, dec) in _avro_pairs().items():
        json_records = [SourceRecord("bench.items", 0, i, *SHAPES[shape](i)) for i in range(n)]
        avro_records = [SourceRecord("bench.items", 0, i, *make_avro(i)) for i in range(n)]
        json_rate, avro_rate = _rates_interleaved(dec, [(json_records, "auto"), (avro_records, "avro")], repeat)
        sizes = len(json_records[0].value or b""), len(avro_records[0].value or b"")
        print(
            f"{shape:<28}{sizes[0]:>7}{sizes[1]:>7}{json_rate:>12,.0f}{avro_rate:>12,.0f}"
            f"{avro_rate / json_rate:>10.2f}x"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    print(f"decode: records/second, best of {args.repeat} over {args.records:,} records per shape")
    print(f"{'shape':<28}{'bytes':>7}" + "".join(f"{name:>12}" for name in PARSERS) + f"{'speed-up':>10}")
    for shape, make in SHAPES.items():
        records = [SourceRecord("bench.items", 0, i, *make(i)) for i in range(args.records)]
        size = len(records[0].value or b"")
        rates = []
        for loads in PARSERS.values():
            with _parser(loads):
                rates.append(_rate(records, args.repeat))
        print(f"{shape:<28}{size:>7}" + "".join(f"{r:>12,.0f}" for r in rates) + f"{rates[0] / rates[1]:>9.2f}x")
    _avro_table(args.records, args.repeat)


if __name__ == "__main__":
    main()
