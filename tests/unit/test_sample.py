"""The sample stream's interaction events and the expectation that checks them."""

from __future__ import annotations

import json

from ingestor.events import EventBuilder, decode_event
from ingestor.model import SourceRecord
from ingestor.sample import EVENTS_TOPIC, Expectation, StreamSpec, generate
from tests.unit.test_events import SCHEMA


def test_events_are_off_by_default_and_every_valid_one_builds_to_what_is_expected() -> None:
    assert all(e.topic != EVENTS_TOPIC for e in generate(500, StreamSpec(seed=3)))
    events = [e for e in generate(2000, StreamSpec(seed=3, events_share=0.5, bad_share=0.1)) if e.topic == EVENTS_TOPIC]
    assert any(not e.valid for e in events) and sum(e.valid for e in events) > 500
    builder = EventBuilder.load(SCHEMA)
    for offset, e in enumerate(events):
        if not e.valid:
            continue
        r = SourceRecord(EVENTS_TOPIC, 0, offset, e.key, e.value)
        p = builder.build(r, decode_event(r))
        stored = {"userId": p.record_id, **p.request}
        if "properties" in stored:
            stored["properties"] = json.loads(stored["properties"])
        assert {k: stored[k] for k in e.expected or {}} == e.expected
        assert set(stored) - set(e.expected or {}) == {"eventId"}


def test_event_mismatches_catches_a_missing_and_a_repeated_event() -> None:
    expect = Expectation()
    events = [e for e in generate(400, StreamSpec(seed=5, events_share=1.0, bad_share=0)) if e.valid]
    for e in events:
        expect.add(e)
    stored = [{**(e.expected or {}), "eventId": str(i), "seq": i, "sessionId": "s"} for i, e in enumerate(events)]
    assert expect.event_mismatches(EVENTS_TOPIC, stored) == []
    wrong = expect.event_mismatches(EVENTS_TOPIC, [*stored[1:], stored[2]])
    assert len(wrong) == 2 and wrong[0].startswith("missing") and wrong[1].startswith("unexpected")
