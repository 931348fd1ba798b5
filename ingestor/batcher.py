"""Per-dataset buffer: coalesces updates by id (latest wins), forms calls of at most 10 ids, keeps one id in flight.

Each id keeps the versions that are not done yet, oldest first. A call always carries an id's newest version; while
it is in flight no other call may carry that id (so an older update can never overtake a newer one).

* accepted(v): v and every older version of its id are done (the older ones were superseded by v);
* rejected(v): v is removed (it goes to the DLQ); if older versions remain and nothing newer arrived, the newest of
  them is sent in its place — Personalize must end up with the last record it accepts;
* released(v): the call was abandoned (revocation, shutdown): v stays buffered and its id becomes ready again.

The buffer is pure (no I/O, no clock of its own): the dispatcher passes ``now``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ingestor.model import SourceRecord, TopicPartition


@dataclass(slots=True, eq=False)
class Pending:
    """A validated record waiting to be delivered."""

    source: SourceRecord
    record_id: str
    request: dict[str, Any]  # the API record: {"itemId": ..., "properties": "..."} or a PutEvents event
    epoch: int = 0  # the offset tracker's epoch of the record's partition when it was fetched
    first_attempt: float | None = None  # set by the sender: the start of the record's retry budget


@dataclass(slots=True)
class _IdState:
    versions: list[Pending] = field(default_factory=list)
    in_flight: Pending | None = None


class DatasetBuffer:
    def __init__(self, max_records: int = 10, linger_s: float = 0.05) -> None:
        if not 1 <= max_records <= 10:
            raise ValueError("max_records must be 1..10 (the PutItems/PutUsers limit)")
        self.max_records = max_records
        self.linger_s = linger_s
        self._ids: dict[str, _IdState] = {}
        # ids ready to send → when they became ready, oldest first (OrderedDict: O(1) pops from the front, where a
        # plain dict's iteration would skip ever more deleted slots)
        self._ready: OrderedDict[str, float] = OrderedDict()
        self.buffered = 0  # versions held (waiting or in flight)
        self.in_flight = 0  # ids in flight

    # ----------------------------------------------------------------- intake

    def add(self, pending: Pending, now: float) -> bool:
        """Buffer a record. Returns True when it superseded a waiting version of the same id."""
        state = self._ids.get(pending.record_id)
        if state is None:
            state = self._ids[pending.record_id] = _IdState()
        superseded = bool(state.versions) and state.versions[-1] is not state.in_flight
        state.versions.append(pending)
        self.buffered += 1
        if state.in_flight is None and pending.record_id not in self._ready:
            self._ready[pending.record_id] = now
        return superseded

    @property
    def distinct_ids(self) -> int:
        """Ids with a version buffered (waiting or in flight)."""
        return len(self._ids)

    # ----------------------------------------------------------------- dispatch

    def due_in(self, now: float) -> float | None:
        """Seconds until a call should be sent (0 = now); None when nothing is ready."""
        if not self._ready:
            return None
        if len(self._ready) >= self.max_records:
            return 0.0
        oldest = next(iter(self._ready.values()))
        return max(0.0, oldest + self.linger_s - now)

    def take(self, limit: int | None = None) -> list[Pending]:
        """Up to ``limit`` (default max_records) ready ids, each with its newest version, now in flight."""
        n = min(limit or self.max_records, self.max_records)
        batch: list[Pending] = []
        while self._ready and len(batch) < n:
            record_id, _ = self._ready.popitem(last=False)
            state = self._ids[record_id]
            newest = state.versions[-1]
            state.in_flight = newest
            batch.append(newest)
        self.in_flight += len(batch)
        return batch

    # ----------------------------------------------------------------- outcomes

    def accepted(self, pending: Pending, now: float) -> list[Pending]:
        """The call carrying ``pending`` was accepted: returns the versions now done (it and the older ones)."""
        state = self._finish(pending)
        cut = state.versions.index(pending) + 1
        done, state.versions = state.versions[:cut], state.versions[cut:]
        self.buffered -= len(done)
        self._settle(pending.record_id, state, now)
        return done

    def rejected(self, pending: Pending, now: float) -> None:
        """The API rejected ``pending`` (it goes to the DLQ): an older or newer version is sent instead, if any."""
        state = self._finish(pending)
        state.versions.remove(pending)
        self.buffered -= 1
        self._settle(pending.record_id, state, now)

    def released(self, pending: Pending, now: float) -> None:
        """The call was abandoned without an outcome: the id may be sent again."""
        state = self._finish(pending)
        self._settle(pending.record_id, state, now)

    def _finish(self, pending: Pending) -> _IdState:
        state = self._ids[pending.record_id]
        if state.in_flight is not pending:
            raise RuntimeError(f"id {pending.record_id!r}: outcome for a version that is not in flight")
        state.in_flight = None
        self.in_flight -= 1
        return state

    def _settle(self, record_id: str, state: _IdState, now: float) -> None:
        if state.versions:
            self._ready.setdefault(record_id, now)
        else:
            del self._ids[record_id]

    # ----------------------------------------------------------------- revocation

    def drop_partitions(self, partitions: Iterable[TopicPartition]) -> int:
        """Forget every version from these partitions that is not in flight. Returns how many were dropped.

        Their records were not committed, so the partitions' next owner reads them again.
        """
        gone = set(partitions)
        dropped = 0
        for record_id in list(self._ids):
            state = self._ids[record_id]
            keep = [v for v in state.versions if v is state.in_flight or v.source.tp not in gone]
            dropped += len(state.versions) - len(keep)
            state.versions = keep
            if not keep:
                del self._ids[record_id]
                self._ready.pop(record_id, None)
        self.buffered -= dropped
        return dropped

    def versions_of(self, record_id: str) -> list[Pending]:
        state = self._ids.get(record_id)
        return [] if state is None else list(state.versions)
