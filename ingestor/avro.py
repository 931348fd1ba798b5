"""Avro records in the Confluent wire format → the same :class:`~ingestor.model.Change` as JSON records.

Wire format: magic byte ``0``, the writer schema's id (4 bytes, big-endian), then Avro binary written with that
schema (decoded with fastavro). The compiled writer schemas come from ``schema_cache`` (fetched from the Schema
Registry by id, bounded LRU); ``avro_schema`` compiles them (shape, id column, logical types → Personalize values).

* Debezium envelope (a record with ``op`` and ``before``/``after``): ``c``/``u``/``r`` upsert the ``after`` row,
  ``d`` deletes the id of the ``before`` row (or of the key). Any other record is a plain row. A row's fields must
  be scalars, as for JSON; the schema stage validates them against the dataset schema.
* The key supplies the id only when the row has none: an Avro key (magic byte 0: a record with the id column, or a
  single field, or a string/integer) or text/JSON, read exactly as for JSON records. A tombstone (no value) is a
  delete of its key's id, the key read the same way (under ``auto``, as Avro only when a registry is configured).

A record whose writer schema is not cached yet raises :class:`~ingestor.schema_cache.SchemaPending` (not a record
error: the pipeline holds it, in order, until the fetch ends). An id the registry does not know, a schema that is not
Avro, or bytes that do not decode raise :class:`~ingestor.errors.DecodeError` naming the record and the schema id
(→ DLQ at stage ``decode``).
"""

from __future__ import annotations

import io
from typing import Any, Final

from fastavro import schemaless_writer

from ingestor import codec
from ingestor.avro_schema import HEADER_BYTES, MAGIC, Writer, fail
from ingestor.model import Change, Op, SourceRecord
from ingestor.schema import DatasetKind
from ingestor.schema_cache import WriterSchemas

_UPSERT_OPS: Final = ("c", "u", "r")
_NESTED: Final = (dict, list)


class AvroDecoder:
    """``decode`` for every record: Avro ones here (``format: avro``, or magic byte 0 under ``auto``), the rest by
    :func:`ingestor.codec.decode`."""

    def __init__(self, schemas: WriterSchemas) -> None:
        self.schemas = schemas

    def decode(self, record: SourceRecord, kind: DatasetKind, fmt: str = "auto") -> Change:
        value = record.value
        if value is None:  # a tombstone: a delete of the key's id
            key = record.key
            avro_key = key is not None and len(key) >= HEADER_BYTES and key[0] == MAGIC
            if avro_key and (fmt == "avro" or (fmt == "auto" and self.schemas.source is not None)):
                return Change(Op.DELETE, self._key_id(record, kind), {})  # e.g. Debezium's tombstone after a delete
            return codec.decode(record, kind, fmt)  # type: ignore[arg-type]
        if fmt == "avro":
            return self._decode_avro(record, kind, value)
        if fmt == "auto" and value and value[0] == MAGIC:
            return self._decode_avro(record, kind, value)
        return codec.decode(record, kind, fmt)  # type: ignore[arg-type]

    def _decode_avro(self, record: SourceRecord, kind: DatasetKind, value: bytes) -> Change:
        writer = self.schemas.get(_schema_id(record, value, "the value"), record, "the value")
        if writer.row_fields is None:
            raise fail(record, f"the value's schema (id {writer.schema_id}) is not an Avro record")
        obj = writer.read(value, record, "the value")
        if writer.debezium:
            op = obj.get("op")
            if op in _UPSERT_OPS:
                after = obj.get("after")
                if after is None:
                    raise fail(record, f"Debezium op {op!r} has no 'after' row (schema id {writer.schema_id})")
                return self._upsert(record, kind, writer, after, "the Debezium 'after' row")
            if op == "d":
                before = obj.get("before")
                rid = None
                if isinstance(before, dict):
                    rid = self._row_id(record, kind, writer, before, "'before' ")
                if rid is None:
                    rid = self._required_key_id(record, kind, "the Debezium 'before' row")
                return Change(Op.DELETE, rid, {})
            raise fail(record, f"unknown Debezium op {op!r} (expected c, u, r or d; schema id {writer.schema_id})")
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
                raise fail(
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
            raise fail(record, f"the id is given twice with different values: {given}")
        return next(iter(ids.values()), None)

    def _required_key_id(self, record: SourceRecord, kind: DatasetKind, source: str) -> str:
        rid = self._key_id(record, kind)
        if rid is None:
            raise fail(record, f"no id: {source} has no {kind.id_field}/{kind.id_key} and the key gives none")
        return rid

    def _key_id(self, record: SourceRecord, kind: DatasetKind) -> str | None:
        key = record.key
        if not key or key[0] != MAGIC or len(key) < HEADER_BYTES:
            # Text or JSON: read exactly as for JSON records (a tombstone of this key is a delete of its id).
            return codec.decode(record._replace(value=None), kind).record_id
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
        raise fail(record, f"{what} is not in the Confluent Avro wire format ({shown}; expected magic byte 0 + id)")
    return int.from_bytes(data[1:HEADER_BYTES], "big")


def _as_id(record: SourceRecord, value: Any, label: str) -> str:
    t = type(value)
    if t is str:
        return value  # type: ignore[no-any-return]
    if t is int:
        return str(value)
    raise fail(record, f"{label} must be a string or an integer, got {t.__name__} ({value!r})"[:300])


# --------------------------------------------------------------------------- producing (demo, tests, benchmarks)


def encode(schema_id: int, parsed_schema: Any, datum: Any) -> bytes:
    """One datum in the Confluent wire format (magic byte, schema id, Avro binary)."""
    buf = io.BytesIO()
    buf.write(bytes([MAGIC]) + schema_id.to_bytes(4, "big"))
    schemaless_writer(buf, parsed_schema, datum)
    return buf.getvalue()
