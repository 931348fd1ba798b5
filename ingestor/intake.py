"""Decode → validate for one fetched record: the rules both paths share (streaming and bulk decide alike).

``prepare`` returns what the record is — an upsert with its request record, a delete, or a rejection with the
dead-letter stage and reason — and never raises for bad input: a poison record must never block.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from ingestor.codec import decode
from ingestor.errors import RecordError
from ingestor.model import Change, Op, SourceRecord
from ingestor.schema import DatasetKind, DatasetSchema
from ingestor.schema_cache import SchemaPending

# bytes → change: codec.decode (JSON), or AvroDecoder.decode (Avro too; raises SchemaPending while a writer schema
# is being fetched)
Decoder = Callable[[SourceRecord, DatasetKind, str], Change]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Upsert:
    record_id: str
    request: dict[str, str]  # the PutItems/PutUsers record: {"itemId": ..., "properties": "<json>"}


@dataclass(frozen=True, slots=True)
class Delete:
    record_id: str | None


@dataclass(frozen=True, slots=True)
class Rejected:
    stage: str  # decode | validate
    reason: str  # names the record (topic/partition@offset) and what is wrong
    error_class: str


def prepare(
    rec: SourceRecord,
    schema: DatasetSchema,
    fmt: str = "auto",
    decoder: Decoder = decode,  # type: ignore[assignment]
) -> Upsert | Delete | Rejected:
    """Raises only SchemaPending: the record must wait for its writer schema (it is neither valid nor invalid yet)."""
    try:
        change = decoder(rec, schema.kind, fmt)
    except SchemaPending:
        raise
    except RecordError as exc:
        return Rejected(exc.stage, str(exc), type(exc).__name__)
    except Exception as exc:  # a poison record must never block: DLQ it, loudly
        log.exception("unexpected error decoding %s", rec.where)
        return Rejected("decode", f"{rec.where}: {type(exc).__name__}: {exc}", type(exc).__name__)
    if change.op is Op.DELETE:
        return Delete(change.record_id)
    try:
        request = schema.build_record(change.record_id, change.fields)
    except RecordError as exc:
        return Rejected(exc.stage, f"{rec.where}: {exc}", type(exc).__name__)
    except Exception as exc:
        log.exception("unexpected error validating %s", rec.where)
        return Rejected("validate", f"{rec.where}: {type(exc).__name__}: {exc}", type(exc).__name__)
    assert change.record_id is not None  # build_record checked it
    return Upsert(change.record_id, request)
