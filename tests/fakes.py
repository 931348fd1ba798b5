"""In-memory fakes of the I/O edges: the Personalize Events client, the DLQ producer and the Kafka consumer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError


def client_error(code: str, status: int = 400, message: str = "") -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": message or code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutItems",
    )


@dataclass
class FakePersonalize:
    """Accepts calls, or fails them by rule. ``state[arn][id]`` holds the last accepted properties."""

    bad_ids: set[str] = field(default_factory=set)
    rejects: Callable[[dict[str, str]], bool] | None = None  # rejects a record by content
    fail_next: list[Exception] = field(default_factory=list)
    gate: asyncio.Event | None = None  # when set, calls wait for it
    calls: list[tuple[str, list[dict[str, str]]]] = field(default_factory=list)
    state: dict[str, dict[str, str]] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0
    on_call: Callable[[str, list[dict[str, str]]], None] | None = None
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # PutEvents: tracking id → events
    put_events_calls: list[dict[str, Any]] = field(default_factory=list)  # PutEvents: each call's context

    async def put_items(self, *, datasetArn: str, items: list[dict[str, str]]) -> dict[str, Any]:
        return await self._put(datasetArn, items, "itemId")

    async def put_users(self, *, datasetArn: str, users: list[dict[str, str]]) -> dict[str, Any]:
        return await self._put(datasetArn, users, "userId")

    async def put_events(
        self, *, trackingId: str, sessionId: str, eventList: list[dict[str, Any]], userId: str | None = None
    ) -> dict[str, Any]:
        """Events are appended to ``events[trackingId]`` with userId and sessionId; ``bad_ids`` rejects eventIds."""
        context = {"trackingId": trackingId, "userId": userId, "sessionId": sessionId}
        self.put_events_calls.append(context)
        return await self._put(trackingId, eventList, "eventId", context=context)

    async def _put(
        self, arn: str, records: list[dict[str, Any]], key: str, *, context: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            else:
                await asyncio.sleep(0)
            self.calls.append((arn, records))
            if self.on_call:
                self.on_call(arn, records)
            if self.fail_next:
                raise self.fail_next.pop(0)
            bad = [r[key] for r in records if r[key] in self.bad_ids or (self.rejects and self.rejects(r))]
            if bad:
                raise client_error("InvalidInputException", message=f"{len(bad)} records do not match the schema")
            if context is not None:
                self.events.setdefault(arn, []).extend({**context, **r} for r in records)
                return {}
            for r in records:
                self.state.setdefault(arn, {})[r[key]] = r.get("properties", "")
            return {}
        finally:
            self.in_flight -= 1


@dataclass
class FakeProducer:
    """The DLQ producer: acknowledges at once unless ``hold`` is set."""

    sent: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]] = field(default_factory=list)
    hold: asyncio.Event | None = None

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def ack() -> None:
            if self.hold is not None:
                await self.hold.wait()
            self.sent.append((topic, key, value, list(headers or [])))
            fut.set_result(None)

        task = asyncio.create_task(ack())
        fut.add_done_callback(lambda _: task)  # keep a reference
        return fut

    def headers_of(self, index: int) -> dict[str, str]:
        return {k: v.decode() for k, v in self.sent[index][3]}


@dataclass
class FakeRecord:
    """What aiokafka's ``getmany`` hands over (the fields the source reads)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp: int = 0


@dataclass
class FakeConsumer:
    """The consumer side of aiokafka as the source uses it, with a backlog to fetch from.

    Like aiokafka, it keeps one prefetched batch per assigned, unpaused partition (up to ``prefetch`` records, the
    stand-in for ``max_partition_fetch_bytes``); ``getmany(max_records=n)`` drains those batches partition after
    partition until it has ``n`` records; a paused partition's prefetched batch is dropped and fetched again after it
    is resumed. ``backlog[tp]`` is how many records the partition holds; ``value(tp, offset)`` makes their values.
    """

    assigned: set[Any] = field(default_factory=set)
    paused: set[Any] = field(default_factory=set)
    commits: list[dict[Any, int]] = field(default_factory=list)
    commit_error: Exception | None = None
    partitions: int = 4
    backlog: dict[Any, int] = field(default_factory=dict)
    value: Callable[[Any, int], bytes] = lambda tp, offset: b"{}"
    prefetch: int = 500
    positions: dict[Any, int] = field(default_factory=dict)
    prefetched: dict[Any, list[FakeRecord]] = field(default_factory=dict)
    highwaters: dict[Any, int] = field(default_factory=dict)
    dropped: int = 0  # prefetched batches dropped by a pause (in aiokafka: garbage until a full collection)
    fetches: list[tuple[tuple[Any, ...], int | None]] = field(default_factory=list)  # (partitions, max_records)

    def highwater(self, tp: Any) -> int | None:
        return self.highwaters.get(tp)

    polls: int = 0

    def assignment(self) -> set[Any]:
        return set(self.assigned)

    def pause(self, *tps: Any) -> None:
        assert set(tps) <= self.assigned, "pause() on an unassigned partition raises in aiokafka"
        self.paused |= set(tps)

    def resume(self, *tps: Any) -> None:
        self.paused -= set(tps)

    async def commit(self, offsets: dict[Any, int]) -> None:
        assert offsets, "commit() without offsets commits every fetched position (aiokafka #929)"
        assert set(offsets) <= self.assigned, "commit() of an unassigned partition raises IllegalStateError"
        if self.commit_error is not None:
            raise self.commit_error
        self.commits.append(dict(offsets))

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.partitions))

    async def getmany(
        self, *partitions: Any, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[Any, list[FakeRecord]]:
        """Like aiokafka's: only ``partitions`` (all when none are given) hand over records; the others keep what
        they prefetched."""
        assert max_records is None or max_records >= 1, "aiokafka rejects max_records < 1"
        wanted = set(partitions) or set(self.assigned)
        self.polls += 1
        self.fetches.append((partitions, max_records))
        await asyncio.sleep(0)
        for tp in sorted(self.assigned - self.paused, key=str):  # the background prefetch
            if tp not in self.prefetched:
                start, end = self.positions.get(tp, 0), self.backlog.get(tp, 0)
                if start < end:
                    batch = range(start, min(end, start + self.prefetch))
                    self.prefetched[tp] = [
                        FakeRecord(tp.topic, tp.partition, o, None, self.value(tp, o)) for o in batch
                    ]
        out: dict[Any, list[FakeRecord]] = {}
        room = max_records if max_records is not None else float("inf")
        for tp in list(self.prefetched):
            if tp in self.paused or tp not in self.assigned:
                del self.prefetched[tp]  # dropped; fetched again from the position after resume
                self.dropped += 1
                continue
            if room <= 0 or tp not in wanted:
                continue
            batch = self.prefetched[tp]
            take, rest = batch[: int(min(room, len(batch)))], batch[int(min(room, len(batch))) :]
            out[tp] = take
            room -= len(take)
            self.positions[tp] = take[-1].offset + 1
            if rest:
                self.prefetched[tp] = rest
            else:
                del self.prefetched[tp]
        if not out:
            await asyncio.sleep(min(timeout_ms, 5) / 1000)
        return out
