"""Avro records in the Confluent wire format → the same :class:`~ingestor.model.Change` as JSON records.

Wire format: magic byte ``0``, the writer schema's id (4 bytes, big-endian), then Avro binary written with that
schema (decoded with fastavro). Writer schemas come from the Schema Registry by id and are kept in a bounded
least-recently-used cache, compiled once: which shape (a Debezium envelope or a plain row), which column is the id,
how each logical type becomes what the Personalize schema expects.

* Debezium envelope (a record with ``op`` and ``before``/``after``): ``c``/``u``/``r`` upsert the ``after`` row,
  ``d`` deletes the id of the ``before`` row (or of the key). Any other record is a plain row.
* Logical types → Personalize values: timestamps (``timestamp-millis``/``-micros``/``-nanos``, Debezium's
  ``Timestamp``/``MicroTimestamp``/``NanoTimestamp``/``ZonedTimestamp``, Kafka Connect's ``Timestamp``) → Unix epoch
  seconds (an integer, as Personalize's ``CREATION_TIMESTAMP`` wants); ``date`` → epoch seconds at midnight UTC;
  ``decimal`` (and Debezium's ``VariableScaleDecimal``) → a float; ``uuid`` → its string; ``time-*`` → ``HH:MM:SS``.
* The key supplies the id only when the row has none: an Avro key (magic byte 0: a record with the id column, or a
  single field, or a string/integer) or text/JSON, read exactly as for JSON records.

A record whose writer schema is not cached yet raises :class:`SchemaPending` (not a record error: the pipeline holds
it, in order, until the fetch ends). Fetches run in the background, retried with exponential back-off and jitter while
the registry is unavailable (never giving up: records wait, nothing is dead-lettered for an outage). An id the
registry does not know, a schema that is not Avro, or bytes that do not decode raise :class:`DecodeError` naming the
record and the schema id (→ DLQ at stage ``decode``).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from datetime import time as dt_time
from decimal import Decimal
from typing import Any, Final, Protocol

from fastavro import parse_schema, schemaless_reader, schemaless_writer

from ingestor import codec
from ingestor.errors import DecodeError, IngestorError
from ingestor.metrics import Metrics
from ingestor.model import Change, Op, SourceRecord
from ingestor.registry import RegisteredSchema, RegistryUnavailable, SchemaNotFound
from ingestor.schema import DatasetKind, camel_case

log = logging.getLogger(__name__)

MAGIC: Final = 0
HEADER_BYTES: Final = 5
UNKNOWN_ID_TTL_S: Final = 60.0  # an id the registry did not know is asked again after this long
_UPSERT_OPS: Final = ("c", "u", "r")
_NESTED: Final = (dict, list)


class SchemaPending(IngestorError):
    """The record's writer schema is being fetched: hold the record (and its partition's later ones) until then."""

    def __init__(self, schema_id: int) -> None:
        self.schema_id = schema_id
        super().__init__(f"waiting for schema id {schema_id} from the schema registry")


class SchemaSource(Protocol):
    """Where writer schemas come from (the registry client, or a fake in tests)."""

    async def schema(self, schema_id: int) -> RegisteredSchema: ...

    async def version(self, subject: str, version: int | str) -> RegisteredSchema: ...


MAX_REFERENCES = 100  # schemas one writer schema may pull in through references (a guard against cycles)


# --------------------------------------------------------------------------- logical types

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
            raise _fail(
                record, f"{what} does not decode with schema id {self.schema_id}: {type(exc).__name__}: {why}"
            ) from exc
        left = len(data) - buf.tell()
        if left:
            raise _fail(record, f"{what} has {left} bytes left after the Avro record of schema id {self.schema_id}")
        return obj


@dataclass(frozen=True, slots=True)
class _Failed:
    reason: str
    until: float | None = None  # retried after this time (an unknown id); None: permanent (not an Avro schema)


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


# --------------------------------------------------------------------------- the schema cache


class WriterSchemas:
    """Writer schemas by id: a bounded LRU cache, filled by background fetches retried with back-off."""

    def __init__(
        self,
        source: SchemaSource | None,
        *,
        max_size: int = 1000,
        base_delay_s: float = 0.5,
        max_delay_s: float = 30.0,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.max_size = max_size
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.metrics = metrics
        self._clock = clock
        self._cache: OrderedDict[int, Writer | _Failed] = OrderedDict()
        self._fetching: dict[int, asyncio.Task[None]] = {}
        self.failing: str | None = None  # the registry's last error while a fetch is being retried
        self.on_resolved: Callable[[], None] = lambda: None  # a fetch ended (schema, or a permanent failure)

    def __len__(self) -> int:
        return len(self._cache)

    def add(self, registered: RegisteredSchema, references: Sequence[RegisteredSchema] = ()) -> Writer:
        """Compile and cache a schema (a fetch's result; also primes the cache in tests and benchmarks)."""
        writer = compile_schema(registered, references)
        self._put(registered.schema_id, writer)
        return writer

    def get(self, schema_id: int, record: SourceRecord, what: str) -> Writer:
        """The compiled writer schema; raises SchemaPending (fetch started) or DecodeError (unknown/unusable id)."""
        entry = self._cache.get(schema_id)
        if entry is not None:
            if type(entry) is Writer:
                self._cache.move_to_end(schema_id)
                return entry
            assert isinstance(entry, _Failed)
            if entry.until is None or self._clock() < entry.until:
                raise _fail(record, f"{what}: {entry.reason}")
            del self._cache[schema_id]
        if self.source is None:
            raise _fail(
                record,
                f"{what} is Avro in the Confluent wire format (schema id {schema_id}), but no schema_registry is "
                "configured",
            )
        self._fetch(schema_id)
        raise SchemaPending(schema_id)

    def _put(self, schema_id: int, entry: Writer | _Failed) -> None:
        self._cache[schema_id] = entry
        self._cache.move_to_end(schema_id)
        while len(self._cache) > self.max_size:
            self._cache.popitem(last=False)

    def _fetch(self, schema_id: int) -> None:
        if schema_id in self._fetching:
            return
        task = asyncio.get_running_loop().create_task(self._fetch_until_answered(schema_id), name=f"schema {schema_id}")
        self._fetching[schema_id] = task

    async def _fetch_until_answered(self, schema_id: int) -> None:
        assert self.source is not None
        delay = self.base_delay_s
        try:
            while True:
                try:
                    registered = await self.source.schema(schema_id)
                except SchemaNotFound as exc:
                    self._count("not_found")
                    self._put(schema_id, _Failed(str(exc), self._clock() + UNKNOWN_ID_TTL_S))
                    break
                except Exception as exc:  # RegistryUnavailable, or a surprise: records wait, we retry
                    self._count("error")
                    why = str(exc) if isinstance(exc, RegistryUnavailable) else f"{type(exc).__name__}: {exc}"
                    if self.failing is None:
                        log.warning(
                            "%s; records with schema id %d wait, retrying with back-off",
                            why,
                            schema_id,
                            exc_info=not isinstance(exc, RegistryUnavailable),
                        )
                    self.failing = why
                    await asyncio.sleep(random.uniform(delay / 2, delay))
                    delay = min(delay * 2, self.max_delay_s)
                    continue
                self._count("ok")
                try:
                    references = await self._references(registered)
                except SchemaNotFound as exc:
                    reason = f"schema id {schema_id} references a schema the registry does not have: {exc}"
                    self._put(schema_id, _Failed(reason, self._clock() + UNKNOWN_ID_TTL_S))
                    break
                except Exception as exc:
                    if not isinstance(exc, RegistryUnavailable):
                        log.warning("resolving the references of schema id %d failed", schema_id, exc_info=exc)
                    self.failing = str(exc)
                    await asyncio.sleep(random.uniform(delay / 2, delay))
                    delay = min(delay * 2, self.max_delay_s)
                    continue
                try:
                    self.add(registered, references)
                except ValueError as exc:
                    self._put(schema_id, _Failed(str(exc)))
                break
        finally:
            self._fetching.pop(schema_id, None)
        if not self._fetching and self.failing is not None:
            log.info("the schema registry answers again")
            self.failing = None
        self.on_resolved()

    async def _references(self, registered: RegisteredSchema) -> list[RegisteredSchema]:
        """The schemas ``registered`` references, transitively, dependencies first (each once)."""
        assert self.source is not None
        out: list[RegisteredSchema] = []
        seen: set[tuple[str, str]] = set()

        async def visit(reg: RegisteredSchema) -> None:
            for ref in reg.references:
                key = (str(ref.get("subject")), str(ref.get("version")))
                if key in seen:
                    continue
                seen.add(key)
                if len(seen) > MAX_REFERENCES:
                    raise SchemaNotFound(f"more than {MAX_REFERENCES} referenced schemas")
                dep = await self.source.version(*key)  # type: ignore[union-attr]
                await visit(dep)
                out.append(dep)

        await visit(registered)
        return out

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.registry_requests.labels(outcome).inc()

    async def aclose(self) -> None:
        tasks = list(self._fetching.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._fetching.clear()


# --------------------------------------------------------------------------- decoding


class AvroDecoder:
    """``decode`` for every record: Avro ones here (``format: avro``, or magic byte 0 under ``auto``), the rest by
    :func:`ingestor.codec.decode`."""

    def __init__(self, schemas: WriterSchemas) -> None:
        self.schemas = schemas

    def decode(self, record: SourceRecord, kind: DatasetKind, fmt: str = "auto") -> Change:
        value = record.value
        if fmt == "avro":
            if value is None:
                return codec.decode(record, kind)  # a tombstone: a delete of the key's id
            return self._decode_avro(record, kind, value)
        if fmt == "auto" and value and value[0] == MAGIC:
            return self._decode_avro(record, kind, value)
        return codec.decode(record, kind, fmt)  # type: ignore[arg-type]

    def _decode_avro(self, record: SourceRecord, kind: DatasetKind, value: bytes) -> Change:
        writer = self.schemas.get(_schema_id(record, value, "the value"), record, "the value")
        if writer.row_fields is None:
            raise _fail(record, f"the value's schema (id {writer.schema_id}) is not an Avro record")
        obj = writer.read(value, record, "the value")
        if writer.debezium:
            op = obj.get("op")
            if op in _UPSERT_OPS:
                after = obj.get("after")
                if after is None:
                    raise _fail(record, f"Debezium op {op!r} has no 'after' row (schema id {writer.schema_id})")
                return self._upsert(record, kind, writer, after, "the Debezium 'after' row")
            if op == "d":
                before = obj.get("before")
                rid = None
                if isinstance(before, dict):
                    rid = self._row_id(record, kind, writer, before, "'before' ")
                if rid is None:
                    rid = self._required_key_id(record, kind, "the Debezium 'before' row")
                return Change(Op.DELETE, rid, {})
            raise _fail(record, f"unknown Debezium op {op!r} (expected c, u, r or d; schema id {writer.schema_id})")
        return self._upsert(record, kind, writer, obj, "the value")

    def _upsert(
        self, record: SourceRecord, kind: DatasetKind, writer: Writer, row: dict[str, Any], what: str
    ) -> Change:
        rid = self._row_id(record, kind, writer, row, "")
        for name in writer.id_fields(kind):
            row.pop(name, None)
        for name, conv in writer.converters.items():
            v = row.get(name)
            if v is not None:
                row[name] = conv(v)
        for name, v in row.items() if writer.may_nest else ():
            if isinstance(v, _NESTED):
                raise _fail(
                    record,
                    f"{what} must hold only scalar values, but {name!r} holds "
                    f"{'a record' if isinstance(v, dict) else 'a list'} (schema id {writer.schema_id})",
                )
        if rid is None:
            rid = self._required_key_id(record, kind, what)
        return Change(Op.UPSERT, rid, row)

    def _row_id(
        self, record: SourceRecord, kind: DatasetKind, writer: Writer, row: dict[str, Any], prefix: str
    ) -> str | None:
        names = writer.id_fields(kind)
        if len(names) == 1:  # the usual case
            v = row.get(names[0])
            return None if v is None else _as_id(record, v, f"{prefix}{names[0]}")
        ids = {n: _as_id(record, row[n], f"{prefix}{n}") for n in names if row.get(n) is not None}
        if len(set(ids.values())) > 1:
            given = ", ".join(f"{k}={v!r}" for k, v in sorted(ids.items()))
            raise _fail(record, f"the id is given twice with different values: {given}")
        return next(iter(ids.values()), None)

    def _required_key_id(self, record: SourceRecord, kind: DatasetKind, source: str) -> str:
        rid = self._key_id(record, kind)
        if rid is None:
            raise _fail(record, f"no id: {source} has no {kind.id_field}/{kind.id_key} and the key gives none")
        return rid

    def _key_id(self, record: SourceRecord, kind: DatasetKind) -> str | None:
        key = record.key
        if not key or key[0] != MAGIC or len(key) < HEADER_BYTES:
            # Text or JSON: read exactly as for JSON records (a tombstone of this key is a delete of its id).
            return codec.decode(replace(record, value=None), kind).record_id
        writer = self.schemas.get(_schema_id(record, key, "the key"), record, "the key")
        obj = writer.read(key, record, "the key")
        if isinstance(obj, dict):
            id_fields = writer.id_fields(kind)
            if id_fields:
                return self._row_id(record, kind, writer, obj, "key field ")
            if len(obj) == 1:
                name, v = next(iter(obj.items()))
                return _as_id(record, v, f"key field {name!r}")
            return None
        if obj is None:
            return None
        return _as_id(record, obj, "the key")


def _schema_id(record: SourceRecord, data: bytes, what: str) -> int:
    if len(data) < HEADER_BYTES or data[0] != MAGIC:
        shown = f"first byte 0x{data[0]:02x}" if data else "empty"
        raise _fail(record, f"{what} is not in the Confluent Avro wire format ({shown}; expected magic byte 0 + id)")
    return int.from_bytes(data[1:HEADER_BYTES], "big")


def _as_id(record: SourceRecord, value: Any, label: str) -> str:
    t = type(value)
    if t is str:
        return value  # type: ignore[no-any-return]
    if t is int:
        return str(value)
    raise _fail(record, f"{label} must be a string or an integer, got {t.__name__} ({value!r})"[:300])


def _fail(record: SourceRecord, message: str) -> DecodeError:
    return DecodeError(f"{record.where}: {message}")


# --------------------------------------------------------------------------- producing (demo, tests, benchmarks)


def encode(schema_id: int, parsed_schema: Any, datum: Any) -> bytes:
    """One datum in the Confluent wire format (magic byte, schema id, Avro binary)."""
    buf = io.BytesIO()
    buf.write(bytes([MAGIC]) + schema_id.to_bytes(4, "big"))
    schemaless_writer(buf, parsed_schema, datum)
    return buf.getvalue()
