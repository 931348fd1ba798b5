"""Coalescing, call size, one id in flight, latest-wins with fallback on rejection."""

from __future__ import annotations

import pytest

from ingestor.batcher import DatasetBuffer, Pending
from ingestor.model import SourceRecord, TopicPartition

_offsets: dict[int, int] = {}


def rec(record_id: str, version: int, partition: int = 0) -> Pending:
    off = _offsets[partition] = _offsets.get(partition, -1) + 1
    source = SourceRecord("items", partition, off, record_id.encode(), f"{record_id}-v{version}".encode())
    return Pending(source, record_id, {"itemId": record_id, "properties": f'{{"v":{version}}}'})


def version(p: Pending) -> str:
    return p.request["properties"]


def test_calls_carry_at_most_max_records_distinct_ids() -> None:
    buf = DatasetBuffer(max_records=10, linger_s=1.0)
    for i in range(25):
        buf.add(rec(f"i{i}", 1), now=0.0)
    assert buf.due_in(0.0) == 0.0
    batches = [buf.take(), buf.take(), buf.take()]
    assert [len(b) for b in batches] == [10, 10, 5]
    assert buf.take() == []
    ids = [p.record_id for b in batches for p in b]
    assert len(ids) == len(set(ids)) == 25


def test_linger_holds_a_small_batch_until_it_expires() -> None:
    buf = DatasetBuffer(max_records=10, linger_s=0.05)
    buf.add(rec("a", 1), now=1.0)
    assert buf.due_in(1.0) == pytest.approx(0.05)
    assert buf.due_in(1.06) == 0.0
    assert buf.due_in(1.0) is not None
    assert DatasetBuffer().due_in(0.0) is None


def test_newer_version_replaces_waiting_one_and_supersedes_it_on_accept() -> None:
    buf = DatasetBuffer()
    v1, v2 = rec("a", 1), rec("a", 2)
    assert buf.add(v1, 0.0) is False
    assert buf.add(v2, 0.0) is True
    (sent,) = buf.take()
    assert sent is v2
    done = buf.accepted(v2, 1.0)
    assert done == [v1, v2]
    assert buf.buffered == 0


def test_an_id_is_never_in_two_calls_at_once() -> None:
    buf = DatasetBuffer()
    v1 = rec("a", 1)
    buf.add(v1, 0.0)
    assert buf.take() == [v1]
    v2 = rec("a", 2)
    buf.add(v2, 0.0)
    assert buf.take() == []  # v1 still in flight
    assert buf.accepted(v1, 1.0) == [v1]
    assert buf.take() == [v2]


def test_rejected_newest_falls_back_to_the_previous_version() -> None:
    buf = DatasetBuffer()
    v1, v2, v3 = rec("a", 1), rec("a", 2), rec("a", 3)
    for v in (v1, v2, v3):
        buf.add(v, 0.0)
    assert buf.take() == [v3]
    buf.rejected(v3, 1.0)
    assert buf.take() == [v2]  # the most recent earlier record is sent in its place
    buf.rejected(v2, 2.0)
    assert buf.take() == [v1]
    assert buf.accepted(v1, 3.0) == [v1]
    assert buf.buffered == 0 and buf.in_flight == 0


def test_rejection_while_a_newer_version_waits_sends_the_newer_one() -> None:
    buf = DatasetBuffer()
    v1, v2 = rec("a", 1), rec("a", 2)
    buf.add(v1, 0.0)
    buf.take()
    buf.add(v2, 0.0)
    buf.rejected(v1, 1.0)
    assert buf.take() == [v2]


def test_released_call_is_sent_again_with_the_newest_version() -> None:
    buf = DatasetBuffer()
    v1, v2 = rec("a", 1), rec("a", 2)
    buf.add(v1, 0.0)
    buf.take()
    buf.add(v2, 0.0)
    buf.released(v1, 1.0)
    assert buf.take() == [v2]
    assert buf.accepted(v2, 2.0) == [v1, v2]


def test_outcome_for_a_version_not_in_flight_is_a_bug() -> None:
    buf = DatasetBuffer()
    v1 = rec("a", 1)
    buf.add(v1, 0.0)
    with pytest.raises(RuntimeError):
        buf.accepted(v1, 0.0)


def test_drop_partitions_keeps_in_flight_and_other_partitions() -> None:
    buf = DatasetBuffer()
    a1 = rec("a", 1, partition=0)
    buf.add(a1, 0.0)
    buf.take()
    a2, b1, c1 = rec("a", 2, partition=0), rec("b", 1, partition=0), rec("c", 1, partition=1)
    for v in (a2, b1, c1):
        buf.add(v, 0.0)
    assert buf.drop_partitions({TopicPartition("items", 0)}) == 2
    assert buf.versions_of("a") == [a1]
    assert buf.versions_of("b") == []
    assert buf.take() == [c1]
    assert buf.buffered == 2


def test_max_records_above_the_api_limit_is_refused() -> None:
    with pytest.raises(ValueError, match=r"1\.\.10"):
        DatasetBuffer(max_records=11)
