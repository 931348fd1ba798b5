"""Interactions: one Kafka record → one PutEvents event, checked against the interactions dataset's schema.

PutEvents carries one ``userId`` and one ``sessionId`` per call and up to ten events, each with ``eventType``,
``sentAt`` and, depending on the schema, ``itemId``, ``eventValue``, ``impression``, ``recommendationId`` and
``properties`` (a JSON string of the schema's other fields, camelCase keys, at most 1,024 characters).

Input shapes (``routes[].format``), one event per record:

* ``flat``: a row with the schema's column names in any spelling (``ITEM_ID``, ``item_id``, ``itemId``):
  ``{"USER_ID": "u1", "ITEM_ID": "i1", "EVENT_TYPE": "click", "TIMESTAMP": 1700000000, "DEVICE": "ios"}``, plus the
  optional ``SESSION_ID`` / ``EVENT_ID`` columns (not schema fields: they become ``sessionId`` / ``eventId``);
* ``api``: PutEvents-shaped, ``{"userId": "u1", "sessionId": "s1", "eventList": [{"eventType": "click",
  "sentAt": 1700000000, "itemId": "i1", "properties": {"device": "ios"}}]}`` with exactly one event (or that event's
  members next to ``userId`` without ``eventList``); ``properties`` is an object or a JSON string holding one;
  ``trackingId`` is ignored (the route's ``tracking_id`` decides); ``impression`` may be a list;
* ``debezium``: a change event of an interactions table (``after`` is a flat row); a delete is counted and skipped,
  as PutEvents cannot remove an event;
* ``auto``: Debezium when the value has ``op`` with ``before``/``after``, otherwise an event row. ``flat`` and
  ``api`` need no telling apart: both are read the same way (any spelling; ``properties`` and ``eventList`` are
  unpacked when present), so a forced ``flat`` or ``api`` only rules out Debezium detection.

Ids: the user id comes from the value (``USER_ID``/``userId``) or else the Kafka key, as for users routes. The
session id from the value (``SESSION_ID``/``sessionId``), or else — ``routes[].session_id`` — the user id (default:
one long session per user, the usual choice when users are known) or the Kafka key. The event id from the value
(``EVENT_ID``/``eventId``), or else the record's position ``topic/partition@offset``: the same record always gets
the same id, so a retried call or a re-read after a crash repeats the event id, and Personalize does not use an event
id a second time in training.

``TIMESTAMP`` (or ``sentAt``) is Unix time in ``routes[].timestamp_unit`` (``s`` default, ``ms``, ``us``) or an
ISO-8601 string; it is sent as whole seconds. Values over 10^11 seconds (year 5138) are rejected as a probable unit
mix-up.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import orjson

from ingestor.batcher import Pending
from ingestor.codec import _SPELLINGS, _from_object, _key_id, decode, is_wrapper
from ingestor.errors import ConfigError, DecodeError, SchemaError
from ingestor.model import Change, Op, SourceRecord
from ingestor.schema import (
    _EVENT_ATTRIBUTE_FIELDS,
    ID_MAX_CHARS,
    DatasetKind,
    DatasetSchema,
    FieldSpec,
    _coerce,
    _parse_field,
    camel_case,
)

SessionSource = Literal["user_id", "key"]
TimestampUnit = Literal["s", "ms", "us"]

MAX_EVENTS_PER_CALL: Final = 10
EVENT_STRING_MAX_CHARS: Final = 256  # eventType, eventId, sessionId (botocore's StringType)
RECOMMENDATION_ID_MAX_CHARS: Final = 40
IMPRESSION_MAX_ITEMS: Final = 25
MAX_SENT_AT_S: Final = 10**11  # later than year 5138: surely milliseconds or microseconds
_UNIT_DIVISOR: Final = {"s": 1, "ms": 1_000, "us": 1_000_000}
_INTERACTIONS = DatasetKind.INTERACTIONS

# Event members that are not schema fields, by the camelCase form of any spelling.
_SESSION, _EVENT_ID, _SENT_AT = "sessionId", "eventId", "sentAt"
# Members of a PutEvents-shaped value that are dropped (the route decides them).
_IGNORED: Final = frozenset({"trackingId"})


@dataclass(slots=True, eq=False)
class PendingEvent(Pending):
    """A validated event waiting to be delivered; ``record_id`` is the user id. Calls group (user, session)."""

    session_id: str = ""

    @property
    def session(self) -> tuple[str, str]:
        return (self.record_id, self.session_id)


_CAMEL: dict[str, str] = {}  # spelling → camelCase: the few column names a topic uses (bounded against hostile input)
_CAMEL_MAX = 4096


def _camel(key: str) -> str:
    found = _CAMEL.get(key)
    if found is None:
        found = camel_case(key)
        if len(_CAMEL) < _CAMEL_MAX and len(key) <= 128:
            _CAMEL[key] = found
    return found


def source_event_id(record: SourceRecord) -> str:
    """The event id derived from the record's position: stable across retries and re-reads."""
    where = record.where
    if len(where) <= EVENT_STRING_MAX_CHARS:
        return where
    return "sha256:" + hashlib.sha256(where.encode()).hexdigest()


# --------------------------------------------------------------------------- record → change


def decode_event(record: SourceRecord, fmt: str = "auto") -> Change:
    """One record → a Change whose ``record_id`` is the user id and ``fields`` the event's other members."""
    value = record.value
    if value is None or fmt == "debezium":
        return decode(record, _INTERACTIONS, "debezium" if fmt == "debezium" else "auto")
    try:
        obj = orjson.loads(value)
    except ValueError:
        return decode(record, _INTERACTIONS, "flat")  # not JSON: the codec says why (or decodes another encoding)
    if type(obj) is not dict:
        return decode(record, _INTERACTIONS, "flat")  # the codec's message for a value that is not an object
    if is_wrapper(obj):  # the same wrappers as items and users records
        payload = obj["payload"]
        if type(payload) is not dict:  # null: a tombstone; anything else: the codec's message
            return decode(record, _INTERACTIONS, "flat")
        obj = payload
    if fmt == "auto" and "op" in obj and ("after" in obj or "before" in obj):
        return _from_object(record, _SPELLINGS[_INTERACTIONS], obj, "debezium")  # parsed already: not again
    return Change(Op.UPSERT, *_event_row(record, obj))


def _event_row(record: SourceRecord, obj: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    row: dict[str, Any] = {}
    events = obj.get("eventList")
    if events is not None:
        if type(events) is not list or len(events) != 1 or type(events[0]) is not dict:
            count = f"{len(events)} events" if type(events) is list else f"a {type(events).__name__}"
            raise _fail(record, f"eventList must hold exactly one event object (one event per record), got {count}")
        row.update((k, v) for k, v in obj.items() if k != "eventList")
        _merge(record, row, events[0], "the event")
    else:
        row.update(obj)
    props = row.pop("properties", None)
    if type(props) is str:
        try:
            props = orjson.loads(props)
        except ValueError as exc:
            raise _fail(record, f"properties is not valid JSON: {str(exc)[:80]}") from exc
    if props is not None:
        if type(props) is not dict:
            raise _fail(record, f"properties must be a JSON object or a string holding one, got {_type(props)}")
        _merge(record, row, props, "properties")
    for key in _IGNORED & row.keys():
        del row[key]
    user_keys = [k for k in row if k == "userId" or _camel(k) == "userId"]
    user_ids = {_text_id(record, row.pop(k), k) for k in user_keys}
    if len(user_ids) > 1:
        raise _fail(record, f"the user id is given twice with different values: {sorted(user_ids)}")
    if user_ids:
        return user_ids.pop(), row
    rid, why = _key_id(record, _SPELLINGS[_INTERACTIONS])
    if rid is None:
        raise _fail(record, f"no user id: the value has no USER_ID/userId and {why}")
    return rid, row


def _merge(record: SourceRecord, row: dict[str, Any], extra: Mapping[str, Any], what: str) -> None:
    for key, value in extra.items():
        if key in row:
            raise _fail(record, f"{key!r} is given twice (in {what} and next to it)")
        row[key] = value


def _text_id(record: SourceRecord, value: Any, label: str) -> str:
    if type(value) is str:
        return str(value)
    if type(value) is int:
        return str(value)
    raise _fail(record, f"{label} must be a string or an integer, got {_type(value)}")


def _fail(record: SourceRecord, message: str) -> DecodeError:
    return DecodeError(f"{record.where}: {message}")


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# --------------------------------------------------------------------------- change → event


class EventBuilder:
    """The interactions schema compiled into the PutEvents event builder."""

    def __init__(
        self,
        avro: Mapping[str, Any] | str,
        *,
        where: str = "schema",
        session_id: SessionSource = "user_id",
        timestamp_unit: TimestampUnit = "s",
    ) -> None:
        self.schema = DatasetSchema.from_avro(avro, _INTERACTIONS, where)  # checks the Avro; the property fields
        parsed = orjson.loads(avro) if isinstance(avro, str) else avro
        specs = [_parse_field(f, _INTERACTIONS, where) for f in parsed["fields"]]
        self.attributes: dict[str, FieldSpec] = {
            s.name: s for s in specs if s.name in _EVENT_ATTRIBUTE_FIELDS and s.name != "USER_ID"
        }
        if "TIMESTAMP" not in self.attributes:
            raise ConfigError(f"{where}: an INTERACTIONS schema needs the field TIMESTAMP (PutEvents' sentAt)")
        self.session_source = session_id
        self._divisor = _UNIT_DIVISOR[timestamp_unit]
        self._unit = timestamp_unit
        # Every accepted spelling's camelCase form → the slot it fills.
        self._slots: dict[str, str] = {spec.key: name for name, spec in self.attributes.items()}
        # PutEvents requires eventType even when the schema has no EVENT_TYPE field.
        self._slots.update({_SESSION: _SESSION, _EVENT_ID: _EVENT_ID, _SENT_AT: "TIMESTAMP", "eventType": "EVENT_TYPE"})
        self._required_item = "ITEM_ID" in self.attributes and not self.attributes["ITEM_ID"].nullable

    @classmethod
    def load(
        cls, path: Path, *, session_id: SessionSource = "user_id", timestamp_unit: TimestampUnit = "s"
    ) -> EventBuilder:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"schema file {path}: cannot be read ({exc.strerror})") from exc
        return cls(text, where=f"schema file {path}", session_id=session_id, timestamp_unit=timestamp_unit)

    @property
    def kind(self) -> DatasetKind:
        return _INTERACTIONS

    def build(self, record: SourceRecord, change: Change, epoch: int = 0) -> PendingEvent:
        """The pending event for a decoded change; raises SchemaError listing every problem."""
        user_id = change.record_id
        problems: list[str] = []
        try:
            DatasetSchema.check_id(user_id, "userId")
        except SchemaError as exc:
            problems += exc.problems
        slots: dict[str, tuple[str, Any]] = {}
        rest: dict[str, Any] = {}
        for key, value in change.fields.items():
            slot = self._slots.get(key) or self._slots.get(_camel(key))
            if slot is None:
                rest[key] = value
            elif slot in slots:
                problems.append(f"{slot} is given twice (as {slots[slot][0]!r} and {key!r})")
            else:
                slots[slot] = (key, value)
        event: dict[str, Any] = {}
        event_id = _string(slots, _EVENT_ID, EVENT_STRING_MAX_CHARS, problems)
        event["eventId"] = event_id if event_id is not None else source_event_id(record)
        event_type = _string(slots, "EVENT_TYPE", EVENT_STRING_MAX_CHARS, problems)
        if _absent(slots, "EVENT_TYPE"):
            problems.append("EVENT_TYPE (eventType) is required by PutEvents but missing")
        elif event_type is not None:
            event["eventType"] = event_type
        self._sent_at(slots.get("TIMESTAMP"), event, problems)
        item_id = _string(slots, "ITEM_ID", ID_MAX_CHARS, problems)
        if item_id is not None:
            event["itemId"] = item_id
        elif self._required_item and _absent(slots, "ITEM_ID"):
            problems.append("ITEM_ID (itemId) is required by the schema but missing")
        if "EVENT_VALUE" in self.attributes:
            given = slots.get("EVENT_VALUE")
            value, problem = _coerce(self.attributes["EVENT_VALUE"], given and given[1], present=given is not None)
            if problem:
                problems.append(problem)
            elif value is not None:
                event["eventValue"] = float(value)
        impression = self._impression(slots.get("IMPRESSION"), problems)
        if impression is not None:
            event["impression"] = impression
        recommendation_id = _string(slots, "RECOMMENDATION_ID", RECOMMENDATION_ID_MAX_CHARS, problems)
        if recommendation_id is not None:
            event["recommendationId"] = recommendation_id
        session = self._session(record, user_id, slots, problems)
        try:
            props = self.schema.properties_json(self.schema.normalize(rest))
        except SchemaError as exc:
            problems += exc.problems
            props = None
        if props is not None:
            event["properties"] = props
        if problems:
            raise SchemaError(problems)
        assert user_id is not None and session is not None
        return PendingEvent(record, user_id, event, epoch=epoch, session_id=session)

    # ------------------------------------------------------------------ members

    def _sent_at(self, given: tuple[str, Any] | None, event: dict[str, Any], problems: list[str]) -> None:
        if given is None or given[1] is None:
            problems.append("TIMESTAMP (sentAt) is required by PutEvents but missing")
            return
        key, raw = given
        if isinstance(raw, str) and not raw.strip().lstrip("+-").isdigit():
            try:
                parsed = dt.datetime.fromisoformat(raw)
            except ValueError:
                problems.append(f"{key} must be Unix time ({self._unit}) or an ISO-8601 string, got {raw[:60]!r}")
                return
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=dt.UTC)
            seconds = int(parsed.timestamp())
        else:
            value, problem = _coerce(self.attributes["TIMESTAMP"], raw, present=True)
            if problem:
                problems.append(problem)
                return
            seconds = int(value) // self._divisor
        if not 0 <= seconds < MAX_SENT_AT_S:
            hint = " (milliseconds? set routes[].timestamp_unit: ms)" if seconds >= MAX_SENT_AT_S else ""
            problems.append(f"{key} is not a plausible Unix time in {self._unit}: {raw!r}{hint}")
            return
        event["sentAt"] = seconds

    def _impression(self, given: tuple[str, Any] | None, problems: list[str]) -> list[str] | None:
        if given is None or given[1] is None:
            if "IMPRESSION" in self.attributes and not self.attributes["IMPRESSION"].nullable:
                problems.append("IMPRESSION (impression) is required by the schema but missing")
            return None
        key, raw = given
        items = raw.split("|") if isinstance(raw, str) else raw
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            problems.append(f"{key} must be item ids separated by | or a list of them, got {_type(raw)}")
            return None
        if not 1 <= len(items) <= IMPRESSION_MAX_ITEMS:
            problems.append(f"{key} must hold 1-{IMPRESSION_MAX_ITEMS} item ids, got {len(items)}")
            return None
        if any(not 1 <= len(i) <= ID_MAX_CHARS for i in items):
            problems.append(f"{key}: every item id must be 1-{ID_MAX_CHARS} characters")
            return None
        return items

    def _session(
        self, record: SourceRecord, user_id: str | None, slots: dict[str, tuple[str, Any]], problems: list[str]
    ) -> str | None:
        if _SESSION in slots and slots[_SESSION][1] is not None:
            return _string(slots, _SESSION, EVENT_STRING_MAX_CHARS, problems)
        if self.session_source == "key":
            try:
                text = record.key.decode("utf-8") if record.key else ""
            except UnicodeDecodeError:
                text = ""
            if not 1 <= len(text) <= EVENT_STRING_MAX_CHARS:
                problems.append(
                    f"no session id: the value has no SESSION_ID/sessionId and the key is not 1-"
                    f"{EVENT_STRING_MAX_CHARS} characters of UTF-8 text (routes[].session_id: key)"
                )
                return None
            return text
        return user_id


def _absent(slots: dict[str, tuple[str, Any]], slot: str) -> bool:
    given = slots.get(slot)
    return given is None or given[1] is None


def _string(slots: dict[str, tuple[str, Any]], slot: str, max_chars: int, problems: list[str]) -> str | None:
    """A string member (integers are taken as their decimal form), or None when absent, null or wrong."""
    given = slots.get(slot)
    if given is None or given[1] is None:
        return None
    key, value = given
    if type(value) is int:
        value = str(value)
    if not isinstance(value, str):
        problems.append(f"{key} must be a string, got {_type(value)}")
        return None
    if not 1 <= len(value) <= max_chars:
        problems.append(f"{key} must be 1-{max_chars} characters, got {len(value)}")
        return None
    return value
