"""Each dataset group's quota shared among replicas by demand (max-min fair), learnt from heartbeats.

Every replica publishes a small heartbeat every ``heartbeat_interval_s`` (to the topic ``<group_id>.quota``, see
``quota_bus.py``): per dataset group and API, its demand (the share of the quota it could use now, from its backlog and
its recent intake) and how many of the route's partitions it owns. Each replica keeps the last heartbeat of every
member for ``ttl_s`` and computes the same allocation from the same view (``allocate``): idle replicas keep a small
reserve so they can start at once, the rest goes max-min fairly by demand, spare quota is spread evenly. It paces at
its own share with ``RateLimiter.set_share``.

Safety, in order of importance:

* Partitions nobody claims (a replica that does not publish: unreachable topic, ``mode: partitions``, not yet heard
  of) keep their partition share reserved, so an incomplete view never hands out more than the visible members own.
* A replica that cannot see its own heartbeats within ``ttl_s`` paces at its partition share and says so (``fixed``),
  so the others leave that share alone. A replica that dies stops counting after ``ttl_s``; its partitions stay
  reserved until the group reassigns them (a clean stop announces itself and counts no more at once).
* Transitions: a share is lowered at once and raised only after it was computed for a whole heartbeat interval
  (the applied share is the minimum of the target over the last interval), so a replica that gains quota takes it
  only after the others, who learn of the change within a fetch, have given it up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from ingestor.config import QuotaSharingSettings
from ingestor.errors import QuotaBusError
from ingestor.metrics import Metrics
from ingestor.ratelimit import RateLimiter

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (dataset group, API)

HEADROOM = 1.25  # a replica keeping up with its intake asks for this much more than the intake needs
DRAIN_S = 5.0  # a backlog asks for the rate that would drain it in this many seconds
RATE_WINDOW_S = 5.0  # intake rate measured over this window
VERSION = 1


@dataclass(frozen=True, slots=True)
class Claim:
    """One member's entry for one quota in a heartbeat."""

    demand: float  # share of the quota it could use now, 0..1
    partitions: int  # partitions of the quota's topics it owns
    fixed: float | None = None  # it paces at this share whatever the others do (it cannot see them)
    backlog: int = 0  # records waiting (information)
    rate: float = 0.0  # calls/s its recent intake needs (information)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    member: str
    seq: int
    ts: float  # the sender's wall-clock time, seconds
    claims: Mapping[Key, Claim] = field(default_factory=dict)
    leaving: bool = False  # a clean stop: count it no more

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "v": VERSION,
                "member": self.member,
                "seq": self.seq,
                "ts": self.ts,
                "leaving": self.leaving,
                "claims": [
                    {
                        "group": g,
                        "api": a,
                        "demand": round(c.demand, 4),
                        "partitions": c.partitions,
                        "fixed": c.fixed,
                        "backlog": c.backlog,
                        "rate": round(c.rate, 3),
                    }
                    for (g, a), c in self.claims.items()
                ],
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> Heartbeat:
        """Raises ValueError for anything that is not a heartbeat of this version."""
        try:
            raw = orjson.loads(data)
            if raw.get("v") != VERSION:
                raise ValueError(f"unknown heartbeat version {raw.get('v')!r}")
            claims = {
                (str(c["group"]), str(c["api"])): Claim(
                    demand=float(c["demand"]),
                    partitions=int(c["partitions"]),
                    fixed=None if c.get("fixed") is None else float(c["fixed"]),
                    backlog=int(c.get("backlog", 0)),
                    rate=float(c.get("rate", 0.0)),
                )
                for c in raw["claims"]
            }
            return cls(str(raw["member"]), int(raw["seq"]), float(raw["ts"]), claims, bool(raw.get("leaving")))
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a quota heartbeat: {type(exc).__name__}: {exc}") from exc


def allocate(claims: Mapping[str, Claim], total_partitions: int, idle_reserve: float) -> dict[str, float]:
    """Every member's share of one quota, the same for whoever computes it from the same claims.

    Unclaimed partitions keep their share reserved; members with a ``fixed`` share get it; the rest (the budget) goes
    max-min fairly by demand, each member getting at least ``idle_reserve / n``; what nobody wants is spread evenly.
    """
    if not claims:
        return {}
    claimed = sum(c.partitions for c in claims.values())
    unseen = max(0, total_partitions - claimed) / total_partitions if total_partitions > 0 else 0.0
    out = {m: c.fixed for m, c in claims.items() if c.fixed is not None}
    budget = max(0.0, 1.0 - unseen - sum(out.values()))
    sharing = sorted((m for m, c in claims.items() if c.fixed is None), key=lambda m: (claims[m].demand, m))
    if not sharing:
        return out
    n = len(sharing)
    floor = min(idle_reserve, budget) / n
    left = budget
    for i, m in enumerate(sharing):
        give = min(max(floor, min(1.0, claims[m].demand)), left / (n - i))
        out[m] = give
        left -= give
    if left > 1e-9:
        for m in sharing:
            out[m] += left / n
    return out


class HeartbeatBus(Protocol):
    """Where heartbeats go and come from (Kafka in production, in memory in tests). Failures raise QuotaBusError."""

    async def start(self) -> None: ...
    async def publish(self, heartbeat: Heartbeat) -> None: ...
    async def receive(self, timeout_s: float) -> list[Heartbeat]: ...
    async def stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Load:
    """What one replica has to send for one quota."""

    backlog: int | None  # records waiting: fetched and not done, plus not fetched yet (lag); None: not known yet
    consumed: float  # records consumed so far (a counter: the intake rate is its slope)


Probe = Callable[[], Mapping[Key, Load]]


def member_id(prefix: str) -> str:
    """Unique per process start: a restarted pod is a new member (the old one expires)."""
    return f"{prefix}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class QuotaShare:
    def __init__(
        self,
        settings: QuotaSharingSettings,
        limiters: Mapping[Key, RateLimiter],
        bus: HeartbeatBus,
        probe: Probe,
        *,
        member: str,
        max_records: int = 10,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.member = member
        self._limiters = limiters
        self._bus = bus
        self._probe = probe
        self._max_records = max_records
        self._metrics = metrics
        self._clock = clock
        self._wall = wall
        self._counts: dict[Key, tuple[int, int]] = {}  # partitions owned, total, per quota
        self._intake: dict[Key, deque[tuple[float, float]]] = {k: deque() for k in limiters}
        self._mine: Heartbeat | None = None  # the last heartbeat this member built (what the others see of it)
        self._seq = 0
        self._peers: dict[str, tuple[Heartbeat, float]] = {}  # other members → last heartbeat, expiry (clock)
        self._own_seen_at: float | None = None  # when our own heartbeat last came back from the bus
        self._history: dict[Key, deque[tuple[float, float]]] = {k: deque() for k in limiters}  # (since, target)
        self.applied: dict[Key, float] = {}
        self._beat_soon = False
        self._bus_ok = True
        self._bus_started_at = 0.0

    # ------------------------------------------------------------------ view

    @property
    def healthy(self) -> bool:
        """Our own heartbeat came back within the TTL: we publish and read, so the view is trustworthy."""
        return self._own_seen_at is not None and self._clock() - self._own_seen_at <= self.settings.ttl_s

    def peers(self) -> list[str]:
        now = self._clock()
        return sorted(m for m, (_, expires) in self._peers.items() if expires > now)

    def receive(self, heartbeats: Iterable[Heartbeat]) -> None:
        now, wall, ttl = self._clock(), self._wall(), self.settings.ttl_s
        for hb in heartbeats:
            if hb.member == self.member:
                if self._mine is not None and hb.seq <= self._mine.seq:
                    self._own_seen_at = now
                continue
            if hb.leaving:
                self._peers.pop(hb.member, None)
                continue
            age = max(0.0, wall - hb.ts)
            if age >= ttl:
                continue  # read late (e.g. from before we started): already expired
            known = self._peers.get(hb.member)
            if known is not None and known[0].seq > hb.seq:
                continue
            self._peers[hb.member] = (hb, now + ttl - age)
        for m in [m for m, (_, expires) in self._peers.items() if expires <= now]:
            del self._peers[m]

    # ------------------------------------------------------------------ this member

    def assigned(self, counts: Mapping[Key, tuple[int, int]]) -> None:
        """A rebalance gave us these partitions (owned, total per quota): claim them at once, publish soon."""
        self._counts.update(counts)
        self.beat()
        self._beat_soon = True
        self.update()

    def _partition_share(self, key: Key) -> float:
        mine, total = self._counts.get(key, (0, 0))
        return 1.0 if total == 0 else max(mine, 1) / total

    def beat(self) -> Heartbeat:
        """Sample the load and build our heartbeat (the view of us the others will have)."""
        now = self._clock()
        loads = self._probe()
        healthy = self.healthy
        claims: dict[Key, Claim] = {}
        for key, limiter in self._limiters.items():
            load = loads.get(key, Load(0, 0.0))
            samples = self._intake[key]
            samples.append((now, load.consumed))
            while len(samples) > 2 and samples[1][0] <= now - RATE_WINDOW_S:
                samples.popleft()
            (t0, c0) = samples[0]
            rate = max(0.0, load.consumed - c0) / (now - t0) / self._max_records if now > t0 else 0.0
            if load.backlog is None:  # just assigned, not fetched yet: ask for all until we know
                demand = 1.0
            else:
                demand = min(1.0, (HEADROOM * rate + load.backlog / (self._max_records * DRAIN_S)) / limiter.configured)
            if key not in self._counts:
                fixed: float | None = 0.0  # no partitions yet: nothing to send, nothing to reserve
            else:
                fixed = None if healthy else self._partition_share(key)
            claims[key] = Claim(
                demand=demand,
                partitions=self._counts.get(key, (0, 0))[0],
                fixed=fixed,
                backlog=load.backlog or 0,
                rate=rate,
            )
        self._seq += 1
        self._mine = Heartbeat(self.member, self._seq, self._wall(), claims)
        return self._mine

    def target(self, key: Key) -> float:
        """The share we should pace at now, before the raise delay."""
        fallback = self._partition_share(key)
        if self._mine is None or key not in self._mine.claims or not self.healthy:
            return fallback
        now = self._clock()
        claims = {m: hb.claims[key] for m, (hb, expires) in self._peers.items() if expires > now and key in hb.claims}
        claims[self.member] = self._mine.claims[key]
        shares = allocate(claims, self._counts.get(key, (0, 0))[1], self.settings.idle_reserve)
        return shares[self.member]

    def update(self) -> None:
        """Recompute every share; lower at once, raise only what was the target for a whole heartbeat interval."""
        now = self._clock()
        window = self.settings.heartbeat_interval_s
        for key, limiter in self._limiters.items():
            if key not in self._counts:
                continue  # not assigned yet: nothing to pace
            target = self.target(key)
            history = self._history[key]
            if not history or history[-1][1] != target:
                history.append((now, target))
            while len(history) > 1 and history[1][0] <= now - window:
                history.popleft()
            share = min(v for _, v in history)
            if self.applied.get(key) != share:
                self.applied[key] = share
                limiter.set_share(share)
                if self._metrics is not None:
                    self._metrics.quota_share.labels(*key).set(share)
                    self._metrics.rate_limit.labels(*key).set(limiter.rate)
                log.debug("quota share %s/%s → %.3f", key[0], key[1], share)
        if self._metrics is not None:
            self._metrics.quota_peers.set(len(self.peers()) + 1 if self.healthy else 0)

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Publish every heartbeat interval (and soon after a rebalance), read the others, keep shares up to date."""
        interval = self.settings.heartbeat_interval_s
        await self._start_bus()
        next_beat = self._clock()
        while True:
            now = self._clock()
            if now >= next_beat or self._beat_soon:
                hb = self._mine if self._beat_soon and self._mine is not None else self.beat()
                self._beat_soon = False
                next_beat = now + interval
                await self._io("publish", self._bus.publish(hb))
            received = await self._io("read", self._bus.receive(min(interval / 10, max(0.0, next_beat - now))))
            if received is None:
                await asyncio.sleep(interval / 10)  # a failing bus must not spin
            self.receive(received or ())
            self.update()
            if self._clock() - max(self._own_seen_at or 0.0, self._bus_started_at) > 2 * self.settings.ttl_s:
                # Our heartbeats do not come back (e.g. the topic is gone with a broker that lost its storage):
                # start the clients again, which re-creates the topic.
                log.info("our quota heartbeats do not come back: restarting the heartbeat clients")
                with contextlib.suppress(QuotaBusError, TimeoutError):
                    async with asyncio.timeout(5):
                        await self._bus.stop()
                await self._start_bus()

    async def _start_bus(self) -> None:
        delay = self.settings.heartbeat_interval_s
        while True:
            try:
                await self._bus.start()
                self._bus_started_at = self._clock()
                return
            except QuotaBusError as exc:
                if self._bus_ok:
                    log.warning("quota heartbeats unavailable (%s): pacing at the partition share meanwhile", exc)
                self._bus_ok = False
                if self._metrics is not None:
                    self._metrics.quota_heartbeat_errors.labels("start").inc()
            self.update()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _io(self, operation: str, call: Any) -> Any:
        try:
            result = await call
        except QuotaBusError as exc:
            if self._metrics is not None:
                self._metrics.quota_heartbeat_errors.labels(operation).inc()
            if self._bus_ok:
                log.warning(
                    "quota heartbeat %s failed (%s): the partition share applies once our heartbeats are unseen "
                    "for %gs",
                    operation,
                    exc,
                    self.settings.ttl_s,
                )
            self._bus_ok = False
            return None
        if not self._bus_ok:
            log.info("quota heartbeats %s again", "published" if operation == "publish" else "read")
            self._bus_ok = True
        return result

    async def stop(self) -> None:
        """After the drain: tell the others we no longer count, then close the bus."""
        if self._mine is not None:
            self._seq += 1
            with contextlib.suppress(QuotaBusError, TimeoutError):
                async with asyncio.timeout(self.settings.heartbeat_interval_s):
                    await self._bus.publish(Heartbeat(self.member, self._seq, self._wall(), {}, leaving=True))
        with contextlib.suppress(QuotaBusError, TimeoutError):
            async with asyncio.timeout(5):
                await self._bus.stop()
