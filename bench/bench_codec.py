"""Records/second of ``ingestor.codec.decode`` per input shape, with orjson (used) and stdlib json (for comparison).

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
from ingestor.model import SourceRecord
from ingestor.schema import DatasetKind

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


if __name__ == "__main__":
    main()
