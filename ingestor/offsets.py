"""Per-partition offset tracking: done marks in any order → the contiguous done prefix to commit. Pure, no I/O.

Example: offsets 10..14 tracked, 10, 11, 13, 14 done, 12 in flight → committable 12 (Kafka's "next offset to read").
Gaps in the offsets (compaction, transaction markers) are fine: only tracked offsets count.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ingestor.model import TopicPartition


@dataclass
class PartitionOffsets:
    """Offsets of one partition that were fetched and are not yet part of the committable prefix."""

    _pending: deque[int] = field(default_factory=deque)
    _done: set[int] = field(default_factory=set)
    _last_tracked: int | None = None

    def track(self, offset: int) -> None:
        if self._last_tracked is not None and offset <= self._last_tracked:
            raise ValueError(f"offset {offset} tracked after {self._last_tracked}: fetch order must increase")
        self._pending.append(offset)
        self._last_tracked = offset

    def done(self, offset: int) -> None:
        last = self._last_tracked
        if last is None or not self._pending or not self._pending[0] <= offset <= last or offset in self._done:
            raise ValueError(f"offset {offset} marked done but it is not pending")
        self._done.add(offset)
        pending, done = self._pending, self._done
        while pending and pending[0] in done:
            done.discard(pending.popleft())

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    @property
    def not_done_count(self) -> int:
        """Tracked offsets not yet done (``pending_count`` also holds done ones behind an undone offset)."""
        return len(self._pending) - len(self._done)

    def done_snapshot(self) -> tuple[int | None, frozenset[int]]:
        """(every offset below this is done, the done offsets above it): what is settled right now."""
        return self.committable(), frozenset(self._done)

    def committable(self) -> int | None:
        """The offset to commit (first not-done offset, or last tracked + 1); None when nothing was tracked."""
        if self._pending:
            return self._pending[0]
        return None if self._last_tracked is None else self._last_tracked + 1


class OffsetTracker:
    """All partitions of this member. The commit loop asks ``to_commit()`` and reports back ``committed()``.

    ``track`` returns the partition's epoch, which ``done`` must be given back: a partition dropped on revocation and
    assigned again starts a new epoch, so a late done mark from before (a DLQ write that finished after the
    revocation) can never mark the re-read record of the same offset done.
    """

    def __init__(self) -> None:
        self._parts: dict[TopicPartition, PartitionOffsets] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._epochs: dict[TopicPartition, int] = {}
        self.pending_total = 0

    def track(self, tp: TopicPartition, offset: int) -> int:
        part = self._parts.get(tp)
        if part is None:
            part = self._parts[tp] = PartitionOffsets()
        part.track(offset)
        self.pending_total += 1
        return self._epochs.get(tp, 0)

    def done(self, tp: TopicPartition, offset: int, epoch: int) -> None:
        part = self._parts.get(tp)
        if part is None or epoch != self._epochs.get(tp, 0):
            return  # from before a revocation: the partition's records are read again by whoever owns it
        part.done(offset)
        self.pending_total -= 1

    def pending(self, tp: TopicPartition) -> int:
        part = self._parts.get(tp)
        return 0 if part is None else part.pending_count

    def pending_by_partition(self) -> dict[TopicPartition, int]:
        return {tp: p.pending_count for tp, p in self._parts.items()}

    def position(self, tp: TopicPartition) -> int | None:
        part = self._parts.get(tp)
        return None if part is None else part.committable()

    def done_checker(self, partitions: set[TopicPartition]) -> Callable[[TopicPartition, int], bool]:
        """A frozen view of which offsets of these partitions are done now (delivered, dead-lettered or skipped)."""
        snapshots = {tp: part.done_snapshot() for tp, part in self._parts.items() if tp in partitions}

        def is_done(tp: TopicPartition, offset: int) -> bool:
            below, done = snapshots.get(tp, (None, frozenset()))
            return (below is not None and offset < below) or offset in done

        return is_done

    def to_commit(self, partitions: set[TopicPartition] | None = None) -> dict[TopicPartition, int]:
        """Offsets that advanced since the last successful commit, for the given (owned) partitions."""
        out: dict[TopicPartition, int] = {}
        for tp, part in self._parts.items():
            if partitions is not None and tp not in partitions:
                continue
            offset = part.committable()
            if offset is not None and offset != self._committed.get(tp):
                out[tp] = offset
        return out

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        self._committed.update(offsets)

    def last_committed(self, tp: TopicPartition) -> int | None:
        return self._committed.get(tp)

    def drop(self, partitions: set[TopicPartition]) -> None:
        """Forget revoked partitions: late done marks for them are ignored."""
        for tp in partitions:
            part = self._parts.pop(tp, None)
            if part is not None:
                self.pending_total -= part.not_done_count
            self._committed.pop(tp, None)
            self._epochs[tp] = self._epochs.get(tp, 0) + 1
