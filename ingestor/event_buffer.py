"""Per-dataset buffer of PutEvents events: nothing coalesces, ≤10 events of one session per call, in Kafka order.

Unlike items and users, every event counts: there is no "latest wins", each event is delivered (or dead-lettered)
on its own. A PutEvents call carries one ``userId`` and one ``sessionId``, so events are grouped by that pair (the
*session*); a call takes up to ``max_records`` events of one session, oldest first.

Events are independent for Personalize (each carries its own ``sentAt`` and ``eventId``), so no newer state can be
overwritten by an older one; still, one call per session is in flight at a time. That keeps a session's events
arriving in Kafka order, even across retries (a retried call is answered before the session's next call goes out),
and costs nothing when many sessions are active; a single hot session is limited to ten events per round trip.

* accepted(e): e is done; rejected(e): e is removed (it goes to the DLQ), the session's other events carry on;
* released(e): the call was abandoned (revocation, shutdown, exhausted retries in block mode): e stays first in line.

The buffer is pure (no I/O, no clock of its own): the dispatcher passes ``now``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from ingestor.batcher import Pending
from ingestor.events import MAX_EVENTS_PER_CALL, PendingEvent
from ingestor.model import TopicPartition


@dataclass(slots=True)
class _Session:
    events: list[PendingEvent] = field(default_factory=list)  # oldest first; a call takes the head
    flying: list[PendingEvent] = field(default_factory=list)  # the events of the call in flight without an outcome


class EventBuffer:
    def __init__(self, max_records: int = MAX_EVENTS_PER_CALL, linger_s: float = 0.05) -> None:
        if not 1 <= max_records <= MAX_EVENTS_PER_CALL:
            raise ValueError(f"max_records must be 1..{MAX_EVENTS_PER_CALL} (the PutEvents limit)")
        self.max_records = max_records
        self.linger_s = linger_s
        self._sessions: dict[tuple[str, str], _Session] = {}
        # sessions with waiting events and no call in flight → when they became ready, oldest first
        self._ready: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._full = 0  # ready sessions holding at least max_records waiting events
        self.buffered = 0  # events held (waiting or in flight)
        self.in_flight = 0  # events in flight

    # ----------------------------------------------------------------- intake

    def add(self, pending: Pending, now: float) -> bool:
        """Buffer an event. Never supersedes anything: returns False."""
        if not isinstance(pending, PendingEvent):
            raise TypeError("EventBuffer holds PendingEvent records")
        key = pending.session
        state = self._sessions.get(key)
        if state is None:
            state = self._sessions[key] = _Session()
        state.events.append(pending)
        self.buffered += 1
        if not state.flying:
            if key not in self._ready:
                self._ready[key] = now
            if len(state.events) == self.max_records:
                self._full += 1
        return False

    # ----------------------------------------------------------------- dispatch

    def due_in(self, now: float) -> float | None:
        """Seconds until a call should be sent (0 = now); None when nothing is ready."""
        if not self._ready:
            return None
        if self._full:
            return 0.0
        oldest = next(iter(self._ready.values()))
        return max(0.0, oldest + self.linger_s - now)

    def take(self, limit: int | None = None) -> list[Pending]:
        """The oldest ready session's first events (up to ``limit``, default max_records), now in flight."""
        if not self._ready:
            return []
        n = min(limit or self.max_records, self.max_records)
        key, _ = self._ready.popitem(last=False)
        state = self._sessions[key]
        if len(state.events) >= self.max_records:
            self._full -= 1
        state.flying = state.events[:n]
        self.in_flight += len(state.flying)
        return list(state.flying)

    # ----------------------------------------------------------------- outcomes

    def accepted(self, pending: Pending, now: float) -> list[Pending]:
        """The call carrying ``pending`` was accepted: returns the events now done (just it: nothing coalesces)."""
        self._remove(pending, now)
        return [pending]

    def rejected(self, pending: Pending, now: float) -> None:
        """The API rejected ``pending`` (it goes to the DLQ); the session's other events carry on."""
        self._remove(pending, now)

    def released(self, pending: Pending, now: float) -> None:
        """The call was abandoned without an outcome: the event stays first in line and is sent again."""
        self._finish_one(pending, now, remove=False)

    def _remove(self, pending: Pending, now: float) -> None:
        self._finish_one(pending, now, remove=True)

    def _finish_one(self, pending: Pending, now: float, *, remove: bool) -> None:
        key = pending.session if isinstance(pending, PendingEvent) else None
        state = self._sessions.get(key) if key is not None else None
        if state is None or not any(e is pending for e in state.flying):
            raise RuntimeError(f"session {key!r}: outcome for an event that is not in flight")
        state.flying = [e for e in state.flying if e is not pending]
        self.in_flight -= 1
        if remove:
            index = next(i for i, e in enumerate(state.events) if e is pending)
            del state.events[index]
            self.buffered -= 1
        if state.flying:
            return
        assert key is not None
        if state.events:
            self._ready[key] = now
            if len(state.events) >= self.max_records:
                self._full += 1
        else:
            del self._sessions[key]

    # ----------------------------------------------------------------- revocation

    def drop_partitions(self, partitions: Iterable[TopicPartition]) -> int:
        """Forget every waiting event from these partitions (in-flight ones stay). Returns how many were dropped.

        Their records were not committed, so the partitions' next owner reads them again.
        """
        gone = set(partitions)
        dropped = 0
        for key in list(self._sessions):
            state = self._sessions[key]
            keep = [e for e in state.events if e.source.tp not in gone or any(e is f for f in state.flying)]
            if len(keep) == len(state.events):
                continue
            was_full = key in self._ready and len(state.events) >= self.max_records
            dropped += len(state.events) - len(keep)
            state.events = keep
            is_full = key in self._ready and len(state.events) >= self.max_records
            self._full += int(is_full) - int(was_full)
            if not keep:
                del self._sessions[key]
                self._ready.pop(key, None)
        self.buffered -= dropped
        return dropped
