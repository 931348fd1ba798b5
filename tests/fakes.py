"""In-memory fakes of the I/O edges: the Personalize Events client and the DLQ producer."""

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
