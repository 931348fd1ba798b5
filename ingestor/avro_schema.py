"""An Avro writer schema compiled once for decoding: how to read it, which shape it has (a Debezium envelope or a
plain row), which column is the id, and how each logical type becomes what the Personalize schema expects.

Logical types → Personalize values: timestamps (``timestamp-millis``/``-micros``/``-nanos``, Debezium's
``Timestamp``/``MicroTimestamp``/``NanoTimestamp``/``ZonedTimestamp``, Kafka Connect's ``Timestamp``) → Unix epoch
seconds (an integer, as Personalize's ``CREATION_TIMESTAMP`` wants); ``date`` → epoch seconds at midnight UTC;
``decimal`` (and Debezium's ``VariableScaleDecimal``) → a float; ``uuid`` → its string; ``time-*`` → ``HH:MM:SS``.
Timestamps and dates are read as the raw integers (their logical type is stripped before fastavro parses the schema)
and divided, which is exact and cheaper than building datetimes.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from datetime import time as dt_time
from decimal import Decimal
from typing import Any, Final

from fastavro import parse_schema, schemaless_reader

from ingestor.errors import DecodeError
from ingestor.model import SourceRecord
from ingestor.registry import RegisteredSchema
from ingestor.schema import DatasetKind, camel_case

MAGIC: Final = 0  # Confluent wire format: magic byte, 4-byte big-endian schema id, Avro binary
HEADER_BYTES: Final = 5


_MILLIS, _MICROS, _NANOS = 1_000, 1_000_000, 1_000_000_000


def _epoch_seconds(unit: int) -> Callable[[Any], Any]:
    return lambda v: v // unit if type(v) is int else v


def _days(v: Any) -> Any:
    return v * 86_400 if type(v) is int else v


def _zoned(v: Any) -> Any:
    if type(v) is not str:
        return v
    try:
        return int(datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return v  # the schema stage reports it as not a number


def _decimal(v: Any) -> Any:
    return float(v) if isinstance(v, Decimal) else v


def _variable_scale_decimal(v: Any) -> Any:
    if isinstance(v, dict) and isinstance(v.get("value"), bytes) and isinstance(v.get("scale"), int):
        return float(Decimal(int.from_bytes(v["value"], "big", signed=True)).scaleb(-v["scale"]))
    return v


def _to_str(v: Any) -> Any:
    return v.isoformat() if isinstance(v, dt_time) else str(v)


# logicalType or connect.name → (converter, strip the logicalType so fastavro hands over the raw integer)
_LOGICAL: Final[Mapping[str, tuple[Callable[[Any], Any], bool]]] = {
    "timestamp-millis": (_epoch_seconds(_MILLIS), True),
    "local-timestamp-millis": (_epoch_seconds(_MILLIS), True),
    "timestamp-micros": (_epoch_seconds(_MICROS), True),
    "local-timestamp-micros": (_epoch_seconds(_MICROS), True),
    "timestamp-nanos": (_epoch_seconds(_NANOS), True),
    "local-timestamp-nanos": (_epoch_seconds(_NANOS), True),
    "date": (_days, True),
    "io.debezium.time.Timestamp": (_epoch_seconds(_MILLIS), True),
    "org.apache.kafka.connect.data.Timestamp": (_epoch_seconds(_MILLIS), True),
    "io.debezium.time.MicroTimestamp": (_epoch_seconds(_MICROS), True),
    "io.debezium.time.NanoTimestamp": (_epoch_seconds(_NANOS), True),
    "io.debezium.time.Date": (_days, True),
    "org.apache.kafka.connect.data.Date": (_days, True),
    "io.debezium.time.ZonedTimestamp": (_zoned, False),
    "decimal": (_decimal, False),
    "io.debezium.data.VariableScaleDecimal": (_variable_scale_decimal, False),
    "uuid": (_to_str, False),
    "time-millis": (_to_str, False),
    "time-micros": (_to_str, False),
}


# --------------------------------------------------------------------------- compiled writer schemas


@dataclass(eq=False)
class Writer:
    """A writer schema, compiled once: how to read it and how its rows map to a change."""

    schema_id: int
    parsed: Any
    debezium: bool = False
    row_fields: tuple[str, ...] | None = None  # None: the top level is not a record (a key schema, say)
    converters: dict[str, Callable[[Any], Any]] = field(default_factory=dict)
    may_nest: bool = True  # a row field may hold a record, array or map (checked per record only then)
    _id_fields: dict[DatasetKind, tuple[str, ...]] = field(default_factory=dict)

    def id_fields(self, kind: DatasetKind) -> tuple[str, ...]:
        found = self._id_fields.get(kind)
        if found is None:
            found = self._id_fields[kind] = tuple(
                n for n in self.row_fields or () if n == kind.id_key or camel_case(n) == kind.id_key
            )
        return found

    def read(self, data: bytes | memoryview, record: SourceRecord, what: str) -> Any:
        buf = io.BytesIO(data)
        buf.seek(HEADER_BYTES)
        try:
            obj = schemaless_reader(buf, self.parsed, None)
        except Exception as exc:  # fastavro raises EOFError, ValueError, IndexError, UnicodeDecodeError...
            why = "a union or enum index out of range" if isinstance(exc, IndexError) else f"{exc}"
            raise fail(
                record, f"{what} does not decode with schema id {self.schema_id}: {type(exc).__name__}: {why}"
            ) from exc
        left = len(data) - buf.tell()
        if left:
            raise fail(record, f"{what} has {left} bytes left after the Avro record of schema id {self.schema_id}")
        return obj


def compile_schema(registered: RegisteredSchema, references: Sequence[RegisteredSchema] = ()) -> Writer:
    """Parse a registered writer schema (with the schemas it references, dependencies first); raise ValueError with
    a reason when it cannot serve as one."""
    sid = registered.schema_id
    if registered.references and not references:
        raise ValueError(f"schema id {sid} references other schemas, which were not resolved")
    converters_by_record: dict[int, dict[str, Callable[[Any], Any]]] = {}
    named: dict[str, Any] = {}
    fastavro_named: dict[str, Any] = {}
    for what, reg in [*((f"its reference {r.text[:60]!r}", r) for r in references), ("it", registered)]:
        if reg.schema_type.upper() != "AVRO":
            raise ValueError(f"schema id {sid}: {what} is a {reg.schema_type} schema, not Avro")
        try:
            raw = json.loads(reg.text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"schema id {sid}: {what} is not valid JSON: {exc}") from exc
        try:
            _walk(raw, None, named, converters_by_record)
        except ValueError as exc:
            raise ValueError(f"schema id {sid}: {exc}") from exc
        try:
            parsed = parse_schema(raw, named_schemas=fastavro_named)
        except Exception as exc:  # fastavro's SchemaParseException, and errors of malformed schemas
            raise ValueError(
                f"schema id {sid}: {what} is not a valid Avro schema: {type(exc).__name__}: {exc}"
            ) from exc
    writer = Writer(sid, parsed)
    top = _resolve(raw, named)
    if not _is_record(top):
        return writer
    fields = {f["name"]: f["type"] for f in top["fields"]}
    row = top
    if "op" in fields and ("after" in fields or "before" in fields):
        writer.debezium = True
        row = next(
            (r for t in ("after", "before") if t in fields for r in _branches(fields[t], named) if _is_record(r)), None
        )
    if row is not None:
        writer.row_fields = tuple(f["name"] for f in row["fields"])
        writer.converters = converters_by_record.get(id(row), {})
        writer.may_nest = any(
            _is_container(b)
            for f in row["fields"]
            if f["name"] not in writer.converters  # a converted record (VariableScaleDecimal) becomes a scalar
            for b in _branches(f["type"], named)
        )
    return writer


def _is_container(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") in ("record", "error", "array", "map")


def _is_record(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "record" and isinstance(schema.get("fields"), list)


def _fullname(schema: dict[str, Any], namespace: str | None) -> str:
    name = str(schema.get("name", ""))
    ns = schema.get("namespace", namespace)
    return name if "." in name or not ns else f"{ns}.{name}"


def _resolve(schema: Any, named: dict[str, Any]) -> Any:
    return named.get(schema, schema) if isinstance(schema, str) else schema


def _branches(schema: Any, named: dict[str, Any]) -> list[Any]:
    return [_resolve(s, named) for s in (schema if isinstance(schema, list) else [schema])]


def _walk(
    schema: Any, namespace: str | None, named: dict[str, Any], converters: dict[int, dict[str, Callable[[Any], Any]]]
) -> None:
    """Index named types; note each record field's converter (by the record's identity); strip the logical types
    that we convert from the raw integers."""
    if isinstance(schema, list):
        for s in schema:
            _walk(s, namespace, named, converters)
        return
    if not isinstance(schema, dict):
        return
    kind = schema.get("type")
    if kind in ("record", "error", "enum", "fixed"):
        full = _fullname(schema, namespace)
        named[full] = schema
        named.setdefault(str(schema.get("name")), schema)
        namespace = full.rpartition(".")[0] or None
    if kind in ("record", "error") and isinstance(schema.get("fields"), list):
        mine = converters.setdefault(id(schema), {})
        for f in schema["fields"]:
            if not isinstance(f, dict):
                continue
            ftype = f.get("type")
            for branch in ftype if isinstance(ftype, list) else [ftype]:
                conv = _logical(branch)
                if conv is not None:
                    mine[str(f.get("name"))] = conv
            _walk(ftype, namespace, named, converters)
    elif kind == "array":
        items = _resolve(schema.get("items"), named)
        if items == "null" or items == {"type": "null"} or (_is_record(items) and not items["fields"]):
            # Items of zero bytes: a garbage block count would make the reader loop for ages (a poison record
            # must never block a partition).
            raise ValueError("arrays of zero-size items (null or empty records) are not supported")
        _walk(schema.get("items"), namespace, named, converters)
    elif kind == "map":
        _walk(schema.get("values"), namespace, named, converters)
    elif isinstance(kind, (dict, list)):
        _walk(kind, namespace, named, converters)


def _logical(branch: Any) -> Callable[[Any], Any] | None:
    if not isinstance(branch, dict):
        return None
    for tag in (branch.get("connect.name"), branch.get("logicalType")):
        entry = _LOGICAL.get(tag) if isinstance(tag, str) else None
        if entry is not None:
            conv, strip = entry
            if strip:
                branch.pop("logicalType", None)
            return conv
    return None


def fail(record: SourceRecord, message: str) -> DecodeError:
    """A decode error naming the record."""
    return DecodeError(f"{record.where}: {message}")
