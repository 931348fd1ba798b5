"""The events buffer: nothing coalesces, a call holds ≤10 events of one session, one call per session in flight."""

from __future__ import annotations

import pytest

from ingestor.batcher import Pending
from ingestor.event_buffer import EventBuffer
from ingestor.events import PendingEvent
from ingestor.model import SourceRecord, TopicPartition


def ev(offset: int, user: str = "u1", session: str | None = None, partition: int = 0) -> PendingEvent:
    source = SourceRecord("events", partition, offset, None, b"{}")
    return PendingEvent(source, user, {"eventId": f"e{offset}"}, session_id=session or user)


def offsets(batch: list[Pending]) -> list[int]:
    return [p.source.offset for p in batch]


def test_every_event_of_an_id_is_kept_and_sent_in_order() -> None:
    buf = EventBuffer(max_records=10, linger_s=0.05)
    for i in range(25):
        assert buf.add(ev(i), 0.0) is False  # never superseded
    assert buf.buffered == 25 and buf.due_in(0.0) == 0.0  # a full call is due at once
    first = buf.take()
    assert offsets(first) == list(range(10))
    assert buf.take() == []  # one call per session in flight
    for p in first:
        assert buf.accepted(p, 0.0) == [p]
    assert offsets(buf.take()) == list(range(10, 20))


def test_a_call_holds_one_session_and_sessions_go_in_parallel() -> None:
    buf = EventBuffer()
    buf.add(ev(0, "u1"), 0.0)
    buf.add(ev(1, "u2"), 0.0)
    buf.add(ev(2, "u1", session="other"), 0.0)
    batches = [buf.take(), buf.take(), buf.take()]
    assert [{(p.record_id, p.session_id) for p in b} for b in batches] == [
        {("u1", "u1")},
        {("u2", "u2")},
        {("u1", "other")},
    ]
    assert buf.in_flight == 3


def test_linger_waits_for_more_events_of_a_session() -> None:
    buf = EventBuffer(linger_s=0.05)
    assert buf.due_in(0.0) is None
    buf.add(ev(0), 1.0)
    assert buf.due_in(1.0) == pytest.approx(0.05)
    assert buf.due_in(1.06) == 0.0


def test_a_rejected_event_is_removed_and_the_rest_carry_on() -> None:
    buf = EventBuffer()
    for i in range(3):
        buf.add(ev(i), 0.0)
    batch = buf.take()
    buf.accepted(batch[0], 0.0)
    buf.rejected(batch[1], 0.0)
    buf.accepted(batch[2], 0.0)
    assert buf.buffered == 0 and buf.in_flight == 0 and buf.take() == []


def test_a_released_event_stays_first_in_line() -> None:
    buf = EventBuffer()
    for i in range(3):
        buf.add(ev(i), 0.0)
    batch = buf.take()
    buf.add(ev(3), 0.0)  # arrives while the call is in flight
    buf.released(batch[0], 0.0)
    buf.accepted(batch[1], 0.0)
    assert buf.take() == []  # batch[2] has no outcome yet
    buf.released(batch[2], 0.0)
    assert offsets(buf.take()) == [0, 2, 3]


def test_an_outcome_for_an_event_not_in_flight_is_a_bug() -> None:
    buf = EventBuffer()
    p = ev(0)
    buf.add(p, 0.0)
    with pytest.raises(RuntimeError, match="not in flight"):
        buf.accepted(p, 0.0)


def test_drop_partitions_forgets_waiting_events_but_not_in_flight_ones() -> None:
    buf = EventBuffer(max_records=2)
    buf.add(ev(0, partition=0), 0.0)
    buf.add(ev(1, partition=0), 0.0)
    buf.add(ev(2, partition=0), 0.0)
    buf.add(ev(3, "u2", partition=1), 0.0)
    flying = buf.take()
    assert offsets(flying) == [0, 1]
    assert buf.drop_partitions({TopicPartition("events", 0)}) == 1  # offset 2; 0 and 1 are in flight
    assert buf.buffered == 3
    for p in flying:
        buf.accepted(p, 0.0)
    assert offsets(buf.take()) == [3] and buf.take() == []


def test_full_sessions_are_due_and_the_count_survives_drops() -> None:
    buf = EventBuffer(max_records=2, linger_s=10)
    buf.add(ev(0, partition=0), 0.0)
    buf.add(ev(1, partition=0), 0.0)
    assert buf.due_in(0.0) == 0.0
    buf.drop_partitions({TopicPartition("events", 0)})
    assert buf.due_in(0.0) is None and buf.buffered == 0


def test_max_records_is_the_putevents_limit() -> None:
    with pytest.raises(ValueError, match="PutEvents"):
        EventBuffer(max_records=11)
