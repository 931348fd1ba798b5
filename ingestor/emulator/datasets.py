"""Datasets: the request checks Personalize makes on PutItems / PutUsers / PutEvents records, and the stored data.

A call is checked whole before anything is stored: if any record does not match, the call is rejected with
InvalidInputException saying how many records did not match, and which (briefly). Items and users are stored by
id, latest write wins; events are appended (the last ``max_events_kept`` are kept for inspection).
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ingestor.emulator.config import DatasetConfig
from ingestor.emulator.errors import invalid_input
from ingestor.errors import ConfigError
from ingestor.schema import ID_MAX_CHARS, ID_MIN_CHARS, DatasetKind, DatasetSchema

MAX_RECORDS_PER_CALL = 10
EVENT_STRING_MAX_CHARS = 256  # eventType, eventId, sessionId, trackingId (botocore's StringType)
RECOMMENDATION_ID_MAX_CHARS = 40
IMPRESSION_MAX_ITEMS = 25
_SHOWN_RECORDS = 3  # how many failing records an error message describes
_SHOWN_CHARS = 300

# Interactions schema columns that PutEvents carries as event attributes: column → request key.
_EVENT_ATTRIBUTES = {"ITEM_ID": "itemId", "EVENT_VALUE": "eventValue"}


def check_string(value: Any, label: str, max_chars: int = ID_MAX_CHARS, min_chars: int = ID_MIN_CHARS) -> str | None:
    """The problem with a string member (botocore's length constraints), or None."""
    if not isinstance(value, str):
        return f"{label} must be a string, got {_type_name(value)}"
    if not min_chars <= len(value) <= max_chars:
        return f"{label} must be {min_chars}-{max_chars} characters, got {len(value)}"
    return None


def check_list(value: Any, label: str, max_items: int = MAX_RECORDS_PER_CALL) -> str | None:
    if not isinstance(value, list):
        return f"{label} must be a list, got {_type_name(value)}"
    if not 1 <= len(value) <= max_items:
        return f"{label} must have 1-{max_items} members, got {len(value)}"
    return None


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def parse_properties(raw: Any, schema: DatasetSchema) -> tuple[dict[str, Any], list[str]]:
    """Check a ``properties`` member: a JSON string of at most the kind's limit, parsing to a matching object."""
    limit = schema.kind.max_properties_chars
    problem = check_string(raw, "properties", max_chars=limit)
    if problem:
        return {}, [problem]
    try:
        props = json.loads(raw)
    except json.JSONDecodeError as exc:
        return {}, [f"properties is not valid JSON ({exc.msg} at character {exc.pos})"]
    if not isinstance(props, dict):
        return {}, [f"properties must be a JSON object, got {_type_name(props)}"]
    return props, schema.check_properties(props)


@dataclass
class StoredRecord:
    """The latest properties written for one id; ``writes`` counts every accepted write, ``seq`` orders them,
    ``accepted_at`` is when the latest write was accepted (Unix time, seconds: compare with Kafka timestamps).

    ``bulk`` says whether that latest write came from an import job (a FULL import replaces bulk records only).
    """

    properties: dict[str, Any]
    writes: int
    seq: int
    accepted_at: float = 0.0
    bulk: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "properties": self.properties,
            "writes": self.writes,
            "seq": self.seq,
            "accepted_at": self.accepted_at,
            "bulk": self.bulk,
        }


class Dataset:
    """One configured dataset: its compiled schema and what has been written to it."""

    def __init__(self, config: DatasetConfig, max_events_kept: int = 10_000) -> None:
        self.config = config
        self.schema = config.load_schema()
        self.schema_text = config.schema_path.read_text(encoding="utf-8")  # what DescribeSchema answers
        self.records: dict[str, StoredRecord] = {}
        self.bulk_imported = False  # an import job has reached ACTIVE: INCREMENTAL imports are allowed
        self.events: deque[dict[str, Any]] = deque(maxlen=max_events_kept)
        self.event_count = 0
        self._required_event_attributes = (
            _required_event_attributes(config) if config.kind is DatasetKind.INTERACTIONS else frozenset()
        )

    @property
    def arn(self) -> str:
        return self.config.arn

    @property
    def kind(self) -> DatasetKind:
        return self.config.kind

    def clear(self) -> None:
        self.records.clear()
        self.bulk_imported = False
        self.events.clear()
        self.event_count = 0

    # ------------------------------------------------------------------ items and users

    def check_records(self, records: list[Any]) -> list[tuple[str, dict[str, Any]]]:
        """Every PutItems/PutUsers record as (id, properties); InvalidInputException if any does not match."""
        id_key = self.schema.id_key
        accepted: list[tuple[str, dict[str, Any]]] = []
        failures: list[str] = []
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                failures.append(f"record {index}: must be an object, got {_type_name(record)}")
                continue
            record_id = record.get(id_key)
            problems = [p for p in [check_string(record_id, id_key)] if p]
            props: dict[str, Any] = {}
            if "properties" in record:
                props, prop_problems = parse_properties(record["properties"], self.schema)
                problems += prop_problems
            else:
                problems += self.schema.check_properties({})  # required fields are still required
            if problems:
                failures.append(f"{_record_label(index, id_key, record_id)}: {'; '.join(problems)}")
            else:
                accepted.append((str(record_id), props))
        _reject_if_any(failures, len(records), "records")
        return accepted

    def store_records(self, records: list[tuple[str, dict[str, Any]]], next_seq: int, now: float = 0.0) -> int:
        """Store accepted records in order (latest write wins) as accepted at ``now`` (Unix time); returns the next
        sequence number."""
        for record_id, props in records:
            previous = self.records.get(record_id)
            self.records[record_id] = StoredRecord(props, (previous.writes if previous else 0) + 1, next_seq, now)
            next_seq += 1
        return next_seq

    def import_records(
        self, records: list[tuple[str, dict[str, Any]]], full: bool, next_seq: int, now: float = 0.0
    ) -> int:
        """Apply an import job's rows at ACTIVE: they become the latest records of their ids (overwriting what
        PutItems/PutUsers wrote). FULL first drops every earlier bulk record; records written individually stay."""
        if full:
            self.records = {rid: rec for rid, rec in self.records.items() if not rec.bulk}
        for record_id, props in records:
            previous = self.records.get(record_id)
            writes = (previous.writes if previous else 0) + 1
            self.records[record_id] = StoredRecord(props, writes, next_seq, accepted_at=now, bulk=True)
            next_seq += 1
        self.bulk_imported = True
        return next_seq

    def delete_users(self, user_ids: set[str]) -> int:
        """A data deletion job completed: these users' records and events are gone. Returns the records removed."""
        gone = [rid for rid in self.records if rid in user_ids]
        for rid in gone:
            del self.records[rid]
        if self.events:
            kept = [e for e in self.events if e.get("userId") not in user_ids]
            self.events.clear()
            self.events.extend(kept)
        return len(gone)

    # ------------------------------------------------------------------ events

    def check_events(self, events: list[Any], context: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Every PutEvents event as the dict to store (with ``context``: userId, sessionId); all must match."""
        accepted: list[dict[str, Any]] = []
        failures: list[str] = []
        for index, event in enumerate(events):
            if not isinstance(event, dict):
                failures.append(f"event {index}: must be an object, got {_type_name(event)}")
                continue
            stored, problems = self._check_event(event)
            if problems:
                failures.append(f"{_record_label(index, 'eventId', event.get('eventId'))}: {'; '.join(problems)}")
            else:
                accepted.append({**context, **stored})
        _reject_if_any(failures, len(events), "events")
        return accepted

    def _check_event(self, event: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        problems: list[str] = []
        stored = {k: v for k, v in event.items() if k != "properties"}
        problems += filter(None, [check_string(event.get("eventType"), "eventType", EVENT_STRING_MAX_CHARS)])
        sent_at = event.get("sentAt")
        if isinstance(sent_at, bool) or not isinstance(sent_at, (int, float)) or not math.isfinite(sent_at):
            problems.append(f"sentAt must be a timestamp (epoch seconds), got {_type_name(sent_at)}")
        optional_strings = {
            "eventId": EVENT_STRING_MAX_CHARS,
            "itemId": ID_MAX_CHARS,
            "recommendationId": RECOMMENDATION_ID_MAX_CHARS,
        }
        for key, max_chars in optional_strings.items():
            if key in event:
                problems += filter(None, [check_string(event[key], key, max_chars)])
        value = event.get("eventValue")
        if "eventValue" in event and (isinstance(value, bool) or not isinstance(value, (int, float))):
            problems.append(f"eventValue must be a number, got {_type_name(value)}")
        if "impression" in event:
            problems += _impression_problems(event["impression"])
        for key in sorted(self._required_event_attributes - event.keys()):
            problems.append(f"{key} is required by the interactions schema but missing")
        if "properties" in event:
            props, prop_problems = parse_properties(event["properties"], self.schema)
            problems += prop_problems
            stored["properties"] = props
        else:
            problems += self.schema.check_properties({})
        return stored, problems

    def store_events(self, events: list[dict[str, Any]], next_seq: int, now: float = 0.0) -> int:
        for event in events:
            self.events.append({**event, "seq": next_seq, "accepted_at": now})
            next_seq += 1
        self.event_count += len(events)
        return next_seq

    # ------------------------------------------------------------------ inspection

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind.value}
        if self.kind is DatasetKind.INTERACTIONS:
            out.update(tracking_id=self.config.tracking_id, event_count=self.event_count, events=list(self.events))
        else:
            out["records"] = {rid: rec.to_json() for rid, rec in self.records.items()}
        return out


def _impression_problems(value: Any) -> list[str]:
    problem = check_list(value, "impression", IMPRESSION_MAX_ITEMS)
    if problem:
        return [problem]
    return [p for i, item in enumerate(value) if (p := check_string(item, f"impression[{i}]"))]


def _record_label(index: int, id_key: str, record_id: Any) -> str:
    if isinstance(record_id, str) and ID_MIN_CHARS <= len(record_id) <= ID_MAX_CHARS:
        return f"{id_key} {record_id[:60]!r}"
    return f"record {index}"


def _reject_if_any(failures: list[str], total: int, noun: str) -> None:
    if not failures:
        return
    shown = [f[:_SHOWN_CHARS] + ("..." if len(f) > _SHOWN_CHARS else "") for f in failures[:_SHOWN_RECORDS]]
    more = f" (and {len(failures) - _SHOWN_RECORDS} more)" if len(failures) > _SHOWN_RECORDS else ""
    raise invalid_input(
        f"{len(failures)} of {total} {noun} did not match the dataset schema; none were stored: "
        + " | ".join(shown)
        + more
    )


def _required_event_attributes(config: DatasetConfig) -> frozenset[str]:
    """Event attributes (itemId, eventValue) that the interactions schema declares non-nullable."""
    try:
        avro = json.loads(config.schema_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:  # load_schema() has already succeeded on this file
        raise ConfigError(f"schema file {config.schema_path}: {exc}") from exc
    required = set()
    for field in avro.get("fields", []):
        key = _EVENT_ATTRIBUTES.get(field.get("name"))
        types = field.get("type")
        if key and "null" not in (types if isinstance(types, list) else [types]):
            required.add(key)
    return frozenset(required)
