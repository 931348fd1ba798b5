"""Interactions: record → event (input shapes, ids) and the interactions schema → PutEvents event builder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ingestor.errors import ConfigError, DecodeError, SchemaError
from ingestor.events import EventBuilder, PendingEvent, decode_event, source_event_id
from ingestor.model import Op, SourceRecord

SCHEMA = Path(__file__).parents[2] / "config" / "schemas" / "interactions.avsc"
T0 = 1_700_000_000


def rec(value: Any, key: bytes | None = b"u1", offset: int = 7) -> SourceRecord:
    raw = value if isinstance(value, bytes) or value is None else json.dumps(value).encode()
    return SourceRecord("shop.events", 2, offset, key, raw)


def build(value: Any, key: bytes | None = b"u1", fmt: str = "auto", **options: Any) -> PendingEvent:
    r = rec(value, key)
    return EventBuilder.load(SCHEMA, **options).build(r, decode_event(r, fmt))


def problems(value: Any, **options: Any) -> str:
    with pytest.raises(SchemaError) as info:
        build(value, **options)
    return str(info.value)


FLAT = {"USER_ID": "u1", "ITEM_ID": "i1", "EVENT_TYPE": "click", "TIMESTAMP": T0}


def test_a_flat_row_becomes_an_event_with_properties_in_camel_case() -> None:
    p = build({**FLAT, "EVENT_VALUE": "2.5", "DEVICE": "ios"})
    assert (p.record_id, p.session_id) == ("u1", "u1")
    assert p.request == {
        "eventId": "shop.events/2@7",
        "eventType": "click",
        "sentAt": T0,
        "itemId": "i1",
        "eventValue": 2.5,
        "properties": '{"device":"ios"}',
    }


def test_any_spelling_of_the_columns_is_accepted() -> None:
    p = build({"user_id": "u1", "itemId": 7, "event_type": "view", "timestamp": T0, "device": None})
    assert p.request == {"eventId": "shop.events/2@7", "eventType": "view", "sentAt": T0, "itemId": "7"}


@pytest.mark.parametrize(
    "value",
    [
        {"userId": "u1", "sessionId": "s1", "trackingId": "ignored", "eventList": [{"eventType": "click",
         "sentAt": T0, "itemId": "i1", "properties": {"device": "ios"}}]},
        {"userId": "u1", "sessionId": "s1", "eventList": [{"eventType": "click", "sentAt": T0, "itemId": "i1",
         "properties": '{"device": "ios"}'}]},
        {"userId": "u1", "sessionId": "s1", "eventType": "click", "sentAt": T0, "itemId": "i1",
         "properties": {"device": "ios"}},
    ],
)  # fmt: skip
def test_putevents_shaped_values_are_unpacked(value: dict[str, Any]) -> None:
    p = build(value)
    assert (p.record_id, p.session_id) == ("u1", "s1")
    assert p.request["properties"] == '{"device":"ios"}' and p.request["itemId"] == "i1"


def test_an_eventlist_of_several_events_is_a_decode_error() -> None:
    value = {"userId": "u1", "sessionId": "s", "eventList": [{"eventType": "a"}, {"eventType": "b"}]}
    with pytest.raises(DecodeError, match=r"shop.events/2@7: eventList must hold exactly one event.*got 2 events"):
        build(value)


def test_a_debezium_insert_is_an_event_and_a_delete_is_a_delete() -> None:
    p = build({"op": "c", "before": None, "after": {**FLAT, "EVENT_ID": "row-42"}})
    assert p.request["eventId"] == "row-42" and p.record_id == "u1"
    change = decode_event(rec({"op": "d", "before": {"USER_ID": "u1"}, "after": None}))
    assert change.op is Op.DELETE


def test_a_detected_debezium_event_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import ingestor.codec

    def second_parse(value: bytes | str) -> None:
        raise AssertionError("the value was parsed a second time")

    monkeypatch.setattr(ingestor.codec, "_loads", second_parse)
    p = build({"op": "u", "before": None, "after": FLAT})
    assert (p.record_id, p.request["itemId"]) == ("u1", "i1")


def test_a_kafka_connect_wrapper_is_removed_and_a_tombstone_is_a_delete() -> None:
    assert build({"schema": {}, "payload": FLAT}).request["itemId"] == "i1"
    assert decode_event(rec(None)).op is Op.DELETE


def test_a_payload_only_wrapper_is_removed_as_for_items_and_users() -> None:
    # The codec removes {"payload": ...} (schema stripped) for every format: interactions must read it the same way.
    assert build({"payload": FLAT}).request["itemId"] == "i1"
    assert decode_event(rec({"payload": None})).op is Op.DELETE
    with pytest.raises(DecodeError, match="only key is 'payload'"):
        decode_event(rec({"payload": [1]}))


def test_the_user_id_comes_from_the_key_when_the_value_has_none() -> None:
    row = {k: v for k, v in FLAT.items() if k != "USER_ID"}
    assert build(row, key=b'{"user_id": "u9"}').record_id == "u9"
    with pytest.raises(DecodeError, match="no user id"):
        build(row, key=None)


def test_not_json_is_a_decode_error_naming_the_record() -> None:
    with pytest.raises(DecodeError, match=r"^shop.events/2@7: value is not valid JSON"):
        build(b"{oops")


def test_session_id_from_the_value_then_the_user_id_or_the_key() -> None:
    assert build({**FLAT, "SESSION_ID": "s9"}).session_id == "s9"
    assert build(FLAT).session_id == "u1"
    assert build(FLAT, key=b"web-session-3", session_id="key").session_id == "web-session-3"
    assert "no session id" in problems(FLAT, key=None, session_id="key")


def test_the_event_id_is_stable_per_record_position_and_bounded() -> None:
    assert build(FLAT).request["eventId"] == build(FLAT).request["eventId"] == "shop.events/2@7"
    long_topic = SourceRecord("t" * 300, 0, 1, None, b"")
    derived = source_event_id(long_topic)
    assert derived.startswith("sha256:") and len(derived) <= 256
    assert derived != source_event_id(SourceRecord("t" * 300, 0, 2, None, b""))


@pytest.mark.parametrize(
    ("timestamp", "unit", "sent_at"),
    [
        (T0, "s", T0),
        (str(T0), "s", T0),
        (T0 * 1000 + 999, "ms", T0),
        (T0 * 1_000_000, "us", T0),
        ("2023-11-14T22:13:20Z", "s", T0),
        ("2023-11-14T22:13:20", "s", T0),
    ],
)
def test_timestamps_become_whole_seconds(timestamp: Any, unit: str, sent_at: int) -> None:
    assert build({**FLAT, "TIMESTAMP": timestamp}, timestamp_unit=unit).request["sentAt"] == sent_at


def test_sent_at_is_an_alias_of_timestamp() -> None:
    row = {k: v for k, v in FLAT.items() if k != "TIMESTAMP"}
    assert build({**row, "sentAt": T0}).request["sentAt"] == T0
    assert "given twice" in problems({**FLAT, "sentAt": T0})


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"TIMESTAMP": T0 * 1000}, "milliseconds? set routes[].timestamp_unit: ms"),
        ({"TIMESTAMP": -1}, "not a plausible Unix time"),
        ({"TIMESTAMP": "yesterday"}, "ISO-8601"),
        ({"TIMESTAMP": 1.5}, "must be an integer"),
        ({"TIMESTAMP": None}, "TIMESTAMP (sentAt) is required"),
        ({"EVENT_TYPE": None}, "EVENT_TYPE (eventType) is required"),
        ({"EVENT_TYPE": "x" * 257}, "EVENT_TYPE must be 1-256 characters"),
        ({"ITEM_ID": None}, "ITEM_ID (itemId) is required"),
        ({"ITEM_ID": ""}, "ITEM_ID must be 1-256 characters"),
        ({"EVENT_VALUE": "high"}, "eventValue (float) must be a number"),
        ({"COLOR": "red"}, "unknown field 'COLOR'"),
        ({"IMPRESSION": "i1|i2"}, "unknown field 'IMPRESSION'"),  # not in this schema
        ({"DEVICE": "x" * 1100}, "categorical value is 1100 characters"),
        ({"USER_ID": "u" * 257}, "userId must be 1-256 characters"),
        ({"SESSION_ID": "s" * 257}, "SESSION_ID must be 1-256 characters"),
        ({"EVENT_ID": 1.5}, "EVENT_ID must be a string"),
    ],
)
def test_invalid_events_say_what_is_wrong(change: dict[str, Any], fragment: str) -> None:
    assert fragment in problems({**FLAT, **change})


def test_every_problem_is_listed_at_once() -> None:
    text = problems({"USER_ID": "u1", "COLOR": "red"})
    assert all(f in text for f in ("EVENT_TYPE", "TIMESTAMP", "ITEM_ID", "COLOR"))


def test_properties_are_at_most_1024_characters() -> None:
    avro = json.loads(SCHEMA.read_text())
    avro["fields"] += [{"name": f"F{i}", "type": ["null", "string"]} for i in range(4)]
    builder = EventBuilder(json.dumps(avro))
    r = rec({**FLAT, **{f"F{i}": "x" * 300 for i in range(4)}})
    with pytest.raises(SchemaError, match="over the API limit of 1024"):
        builder.build(r, decode_event(r))


def test_impressions_and_recommendation_ids_when_the_schema_has_them() -> None:
    avro = json.loads(SCHEMA.read_text())
    avro["fields"] += [
        {"name": "IMPRESSION", "type": ["null", "string"]},
        {"name": "RECOMMENDATION_ID", "type": ["null", "string"]},
    ]
    builder = EventBuilder(avro)
    r = rec({**FLAT, "IMPRESSION": "i1|i2|i3", "RECOMMENDATION_ID": "rec-1"})
    event = builder.build(r, decode_event(r)).request
    assert event["impression"] == ["i1", "i2", "i3"] and event["recommendationId"] == "rec-1"
    r = rec({**FLAT, "IMPRESSION": [f"i{i}" for i in range(26)], "RECOMMENDATION_ID": "r" * 41})
    with pytest.raises(SchemaError) as info:
        builder.build(r, decode_event(r))
    assert "1-25 item ids, got 26" in str(info.value) and "RECOMMENDATION_ID must be 1-40" in str(info.value)


def test_a_schema_without_timestamp_fails_at_start() -> None:
    avro = json.loads(SCHEMA.read_text())
    avro["fields"] = [f for f in avro["fields"] if f["name"] != "TIMESTAMP"]
    with pytest.raises(ConfigError, match="needs the field TIMESTAMP"):
        EventBuilder(avro)
