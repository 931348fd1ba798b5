"""The offset tracker commits only the contiguous done prefix, whatever the completion order."""

from __future__ import annotations

import random

import pytest

from ingestor.model import TopicPartition
from ingestor.offsets import OffsetTracker, PartitionOffsets

TP = TopicPartition("t", 0)


def test_design_example_commits_up_to_the_first_not_done() -> None:
    part = PartitionOffsets()
    for off in range(10, 15):
        part.track(off)
    for off in (10, 11, 13, 14):
        part.done(off)
    assert part.committable() == 12
    part.done(12)
    assert part.committable() == 15


def test_nothing_tracked_means_nothing_to_commit() -> None:
    assert PartitionOffsets().committable() is None


def test_gaps_in_offsets_are_skipped() -> None:
    part = PartitionOffsets()
    for off in (3, 7, 9):
        part.track(off)
    part.done(3)
    assert part.committable() == 7
    part.done(9)
    assert part.committable() == 7
    part.done(7)
    assert part.committable() == 10


@pytest.mark.parametrize("seed", range(20))
def test_random_completion_order_never_commits_past_a_pending_record(seed: int) -> None:
    rng = random.Random(seed)
    part = PartitionOffsets()
    offsets = list(range(100))
    for off in offsets:
        part.track(off)
    order = offsets[:]
    rng.shuffle(order)
    done: set[int] = set()
    for off in order:
        part.done(off)
        done.add(off)
        expected = next((o for o in offsets if o not in done), 100)
        assert part.committable() == expected


def test_done_twice_or_untracked_is_a_bug() -> None:
    part = PartitionOffsets()
    part.track(1)
    part.track(2)
    part.done(2)
    with pytest.raises(ValueError):
        part.done(2)
    with pytest.raises(ValueError):
        part.done(5)
    with pytest.raises(ValueError):
        part.track(2)


def test_tracker_reports_only_advanced_offsets_of_owned_partitions() -> None:
    tracker = OffsetTracker()
    other = TopicPartition("t", 1)
    epoch = tracker.track(TP, 0)
    tracker.track(other, 5)
    tracker.done(TP, 0, epoch)
    assert tracker.to_commit() == {TP: 1, other: 5}
    assert tracker.to_commit({TP}) == {TP: 1}
    tracker.committed({TP: 1})
    assert tracker.to_commit({TP}) == {}
    assert tracker.pending_total == 1


def test_dropped_partition_ignores_late_done_marks() -> None:
    tracker = OffsetTracker()
    epoch = tracker.track(TP, 0)
    tracker.drop({TP})
    tracker.done(TP, 0, epoch)  # a call finished after revocation: ignored
    assert tracker.to_commit() == {}
    assert tracker.pending_total == 0


def test_a_late_done_mark_from_before_a_reassignment_does_not_touch_the_re_read_record() -> None:
    tracker = OffsetTracker()
    old = tracker.track(TP, 15)
    tracker.drop({TP})  # revoked ...
    new = tracker.track(TP, 15)  # ... assigned again: offset 15 is read again
    assert new != old
    tracker.done(TP, 15, old)  # the old generation's DLQ write finishes late
    assert tracker.to_commit() == {TP: 15}  # the re-read record is still pending
    tracker.done(TP, 15, new)
    assert tracker.to_commit() == {TP: 16}


def test_dropping_a_partition_with_done_marks_behind_a_pending_one_keeps_the_total_right() -> None:
    tracker = OffsetTracker()
    epoch = 0
    for off in range(10, 15):
        epoch = tracker.track(TP, off)
    tracker.done(TP, 13, epoch)  # done, but behind the pending 10..12
    tracker.done(TP, 10, epoch)
    assert tracker.pending_total == 3
    tracker.drop({TP})
    assert tracker.pending_total == 0  # was -2: the done marks behind 11 were subtracted twice


def test_done_checker_sees_the_done_prefix_and_scattered_done_marks() -> None:
    tracker = OffsetTracker()
    epoch = 0
    for off in range(10, 15):
        epoch = tracker.track(TP, off)
    for off in (10, 11, 13):
        tracker.done(TP, off, epoch)
    is_done = tracker.done_checker({TP})
    tracker.drop({TP})  # a frozen view: still answers after the partition is forgotten
    assert [off for off in range(8, 16) if is_done(TP, off)] == [8, 9, 10, 11, 13]
