"""The Kafka side: one consumer group member, batched fetches, backpressure, safe commits.

Backpressure leaves partitions out of ``getmany`` (their prefetched batch waits in aiokafka, which fetches nothing
more for them meanwhile); only partitions held for long (a dataset held by a fatal error or the bulk catch-up,
records waiting for a writer schema) are paused. A pause drops aiokafka's prefetched batch, and a dropped batch is
cyclic garbage (aiokafka's record iterator refers back to its owner) that only a full collection frees: pausing
every partition at the bound, as this did before, kept ~30 MB of dropped fetches alive between collections.

Guards against aiokafka's traps (see shared/design/pitfalls.md): commits always pass explicit offsets filtered by the
current assignment and run under a timeout; ``CommitFailedError`` is not retried; pauses are re-applied after a
rebalance; ``getmany`` is called at least every quarter of ``max_poll_interval_ms`` so the member stays in the group
while nothing may be read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from collections.abc import Set as AbstractSet

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka import TopicPartition as KafkaTP
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from ingestor.broker_health import BrokerHealth
from ingestor.config import Settings
from ingestor.kafka_auth import kafka_security_kwargs
from ingestor.metrics import Metrics
from ingestor.model import SourceRecord, TopicPartition
from ingestor.pipeline import Pipeline

log = logging.getLogger(__name__)

RESUME_BELOW = 0.75  # partitions held back are read again once their records fall below this share of the limit
MIN_FAIR_SHARE = 50  # records a partition may always buffer, however many partitions share the bound
FAIR_FILL = 0.75  # the partitions' fair shares add up to this much of the bound (the rest absorbs one fetch each)
FETCH_SHARE = 4  # one getmany takes at most a quarter of a fair share
IDLE_WAIT_S = 0.05  # while nothing may be read: how often the bound is looked at again
KEEPALIVE_SHARE = 4  # while nothing may be read, getmany still runs every max_poll_interval_ms ÷ this


def _ours(tp: KafkaTP) -> TopicPartition:
    return TopicPartition(tp.topic, tp.partition)


def _theirs(tp: TopicPartition) -> KafkaTP:
    return KafkaTP(tp.topic, tp.partition)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, source: KafkaSource) -> None:
        self._source = source

    async def on_partitions_revoked(self, revoked: set[KafkaTP]) -> None:
        await self._source.on_revoked({_ours(tp) for tp in revoked})

    async def on_partitions_assigned(self, assigned: set[KafkaTP]) -> None:
        await self._source.on_assigned({_ours(tp) for tp in assigned})


class KafkaSource:
    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        metrics: Metrics,
        *,
        consumer: AIOKafkaConsumer | None = None,
        clock: Callable[[], float] = time.monotonic,
        broker_health: BrokerHealth | None = None,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.metrics = metrics
        k = settings.kafka
        self.consumer = consumer or AIOKafkaConsumer(
            bootstrap_servers=k.bootstrap_servers,
            group_id=k.group_id,
            client_id=k.client_id,
            enable_auto_commit=False,
            auto_offset_reset=k.auto_offset_reset,
            session_timeout_ms=k.session_timeout_ms,
            heartbeat_interval_ms=k.heartbeat_interval_ms,
            rebalance_timeout_ms=k.rebalance_timeout_ms,
            max_poll_interval_ms=k.max_poll_interval_ms,
            request_timeout_ms=k.request_timeout_ms,
            fetch_max_bytes=k.fetch_max_bytes,
            max_partition_fetch_bytes=k.max_partition_fetch_bytes,
            fetch_max_wait_ms=k.fetch_max_wait_ms,
            **kafka_security_kwargs(settings),
        )
        self._clock = clock
        self._paused: set[TopicPartition] = set()
        self.held: set[TopicPartition] = set()  # paused by the bulk catch-up until its import job finishes
        self.on_assigned_hooks: list[Callable[[set[TopicPartition]], None]] = []
        self.on_revoked_hooks: list[Callable[[set[TopicPartition]], Awaitable[None]]] = []
        self._full = False  # at the bound: nothing read until buffered falls below RESUME_BELOW of it
        self._over: set[TopicPartition] = set()  # at their fair share of the bound: not read
        self._fair = settings.batching.max_buffered_records  # one partition's fair share of the bound
        self._readable: set[TopicPartition] = set()  # what the next getmany reads (none assigned: every partition)
        self._keepalive_s = k.max_poll_interval_ms / 1000 / KEEPALIVE_SHARE
        self._last_poll = clock()
        self._stopping = False
        self.joined = False
        self.broker_ok_at: float | None = None
        self.broker_health = broker_health if broker_health is not None else BrokerHealth(metrics, clock=clock)
        # Quota sharing by demand (quota_share.py) takes the partition counts instead of a fixed partition share.
        self.quota_listener: Callable[[dict[tuple[str, str], tuple[int, int]]], None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        self.consumer.subscribe(self.pipeline.topics, listener=_Rebalance(self))

    def assignment(self) -> set[TopicPartition]:
        return {_ours(tp) for tp in self.consumer.assignment()}

    # ------------------------------------------------------------------ fetch loop

    async def run(self) -> None:
        """Fetch and ingest until ``stop_fetching``; backpressure keeps fetched, not-done records within the bound."""
        max_records = self.settings.kafka.fetch_max_records
        while not self._stopping:
            room = self._backpressure()
            if not self._readable and self.consumer.assignment():
                await self._idle()  # at the bound, or every partition at its share or held: nothing to read
                continue
            # Never fetch more than the bound has room for: one getmany may otherwise hand over a whole
            # fetch_max_records (from several partitions' prefetched batches) on top of a nearly full buffer.
            # And no more than a quarter of one partition's fair share: a getmany drains one partition's fetched
            # batch first, so a partition just under its share ends at most that far over it; partitions at their
            # share are not read (their prefetched data waits in aiokafka, nothing is refetched).
            # Before the first assignment nothing is readable yet and this reads every partition (up to the limit).
            limit = max(1, min(max_records, room, self._fair // FETCH_SHARE))
            readable = [_theirs(tp) for tp in self._readable]
            await self._fetch(readable, timeout_ms=200, max_records=limit)

    async def _idle(self) -> None:
        """Nothing may be read: wait a little, but call ``getmany`` every ``max_poll_interval_ms`` ÷ 4 (aiokafka
        leaves the group after that long without one) for at most one record of the partition holding the fewest —
        one record over the bound at worst, and unlike pausing every partition it drops no prefetched batch."""
        if self._clock() - self._last_poll < self._keepalive_s:
            await asyncio.sleep(IDLE_WAIT_S)
            return
        pending = self.pipeline.tracker.pending_by_partition()
        candidates = self.assignment() - self._paused or self.assignment()
        tp = min(candidates, key=lambda t: (pending.get(t, 0), t))
        await self._fetch([_theirs(tp)], timeout_ms=0, max_records=1)

    async def _fetch(self, partitions: list[KafkaTP], *, timeout_ms: int, max_records: int) -> None:
        batches = await self.consumer.getmany(*partitions, timeout_ms=timeout_ms, max_records=max_records)
        self._last_poll = self._clock()
        if self._stopping:
            return  # fetched but not ingested: not tracked, so never committed; read again later
        for kafka_tp, records in batches.items():
            consumed = self.metrics.records_consumed.labels(kafka_tp.topic)
            for r in records:
                self.pipeline.ingest(
                    SourceRecord(r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers or ()), r.timestamp)
                )
            consumed.inc(len(records))
        self.metrics.buffered.set(self.pipeline.buffered)
        await asyncio.sleep(0)

    def hold(self, partitions: set[TopicPartition]) -> None:
        """Stop fetching these (assigned) partitions until ``release`` (bulk catch-up)."""
        partitions &= self.assignment()
        self.held |= partitions
        if partitions:
            self.consumer.pause(*(_theirs(tp) for tp in partitions))

    def release(self, partitions: set[TopicPartition], seek_to: dict[TopicPartition, int] | None = None) -> None:
        """Fetch these partitions again, from ``seek_to`` where given (the cut of a finished import)."""
        self.held -= partitions
        owned = self.assignment()
        for tp, offset in (seek_to or {}).items():
            if tp in owned:
                self.consumer.seek(_theirs(tp), offset)
        resume = [tp for tp in partitions if tp in owned and tp not in self._paused]
        if resume:
            self.consumer.resume(*(_theirs(tp) for tp in resume))

    def stop_fetching(self) -> None:
        self._stopping = True

    def _backpressure(self) -> int:
        """Choose what the next fetch reads and pause or resume held partitions; returns how many more records the
        bound has room for now.

        At the bound no partition is read (each keeps at most its one prefetched batch in aiokafka, which fetches
        nothing more for it) until the buffer falls below ``RESUME_BELOW`` of the bound; then all are read again
        and the caller caps each fetch to the room left, so reading every partition at once cannot overshoot either.
        A partition with records waiting for their writer schema is paused until they are released: all it fetched
        would only be held behind them, and held records count as buffered, so it alone would fill the bound and
        stop every partition. The same goes for a partition with records of a dataset held by a fatal error
        (``personalize.on_fatal: hold``) until the dataset is released; and as those records are never done
        meanwhile, the hysteresis counts only the rest of the bound (else a held dataset holding a quarter of it
        would keep every partition from being read for good). Held partitions are paused rather than left out:
        they wait for long, and a pause lets aiokafka drop what it prefetched for them.
        """
        limit = self.settings.batching.max_buffered_records
        total = self.pipeline.buffered
        waiting: AbstractSet[TopicPartition] = self.pipeline.held.partitions
        stuck = 0  # records of datasets held by a fatal error: not done before the dataset is released
        pending = self.pipeline.tracker.pending_by_partition()  # once per poll: also the fair shares' input
        if fatal_topics := self.pipeline.fatal_topics():
            stuck = self.pipeline.waiting_on_fatal
            waiting = {*waiting, *(tp for tp, n in pending.items() if n and tp.topic in fatal_topics)}
        assigned = self.assignment()
        if total >= limit:
            self._full = True
            self._readable = set()
        elif self._full and total - stuck >= (limit - stuck) * RESUME_BELOW:
            self._readable = set()  # hysteresis: nothing is read until below RESUME_BELOW (of what can drain)
        else:
            self._full = False
            over = self._over_fair_share(assigned, limit, pending)
            self._readable = assigned - over - waiting  # empty: every partition at its share (or waiting)
        if self._paused != assigned & waiting:
            self._pause_only(assigned & waiting, assigned)
        # partitions held back: all of them while nothing may be read, else the paused ones
        self.metrics.paused_partitions.set(len(assigned) if not self._readable else len(self._paused))
        return limit - total

    def _over_fair_share(
        self, assigned: set[TopicPartition], limit: int, pending: Mapping[TopicPartition, int]
    ) -> set[TopicPartition]:
        """Partitions holding their fair share of the bound (``FAIR_FILL`` of ``limit`` ÷ assigned partitions) or
        more: not read until they fall below ``RESUME_BELOW`` of it. Without this the partitions that happen to fetch
        first fill the whole bound and the others — other datasets, other dataset groups — get nothing until it
        drains (starvation). They are left out of ``getmany`` (see the module docstring for why not paused). The
        shares leave a quarter of the bound free, so partitions at their shares (plus one capped fetch each) do not
        reach it: reaching it stops reading every partition, which left some datasets with nothing to send for a
        while (20 dataset groups got 84-99 % of their quotas instead of 99 %)."""
        fair = self._fair = max(MIN_FAIR_SHARE, int(limit * FAIR_FILL) // max(1, len(assigned)))
        over = {
            tp
            for tp, n in pending.items()
            if tp in assigned and n >= (fair * RESUME_BELOW if tp in self._over else fair)
        }
        self._over = over
        return over

    def _pause_only(self, paused: set[TopicPartition], assigned: set[TopicPartition]) -> None:
        """Make ``paused`` (a subset of ``assigned``) the set of paused partitions."""
        new = paused - self._paused
        if new:
            self.consumer.pause(*(_theirs(tp) for tp in new))
        resume = (self._paused - paused) & assigned - self.held  # held ones wait for their import job
        if resume:
            self.consumer.resume(*(_theirs(tp) for tp in resume))
        self._paused = set(paused)

    # ------------------------------------------------------------------ commits

    async def commit(self, partitions: set[TopicPartition] | None = None) -> dict[TopicPartition, int]:
        """Commit the done prefix of owned partitions (optionally only ``partitions``). Returns what was committed."""
        owned = self.assignment()
        if partitions is not None:
            owned &= partitions
        offsets = self.pipeline.tracker.to_commit(owned)
        if not offsets:
            return {}
        try:
            async with asyncio.timeout(self.settings.kafka.commit_timeout_s):
                await self.consumer.commit({_theirs(tp): off for tp, off in offsets.items()})
        except (CommitFailedError, IllegalStateError) as exc:
            # The group moved on (rebalance): these partitions' records are re-read by whoever owns them now.
            self.metrics.commits.labels("rejected").inc()
            log.warning("commit rejected (%s: %s); not retried", type(exc).__name__, exc)
            return {}
        except (KafkaError, TimeoutError) as exc:
            self.metrics.commits.labels("failed").inc()
            if self.broker_health.up:
                log.warning("commit failed (%s: %s); will try again", type(exc).__name__, exc)
            else:  # part of a broker outage already reported
                self.broker_health.failed("commit", f"{type(exc).__name__}: {exc}")
            return {}
        self.broker_health.answered()
        self.pipeline.tracker.committed(offsets)
        self.metrics.commits.labels("ok").inc()
        self.metrics.last_commit.set(time.time())
        for tp, off in offsets.items():
            self.metrics.committed_offset.labels(tp.topic, str(tp.partition)).set(off)
        return offsets

    def update_lag(self) -> None:
        for tp in self.assignment():
            try:
                high = self.consumer.highwater(_theirs(tp))
            except (AssertionError, IllegalStateError):
                continue
            position = self.pipeline.tracker.position(tp)
            if position is None:
                position = self.pipeline.tracker.last_committed(tp)
            if high is not None and position is not None:
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, high - position))

    async def check_broker(self, timeout_s: float = 5.0) -> bool:
        """A metadata round trip to the cluster; records when the broker last answered (for /readyz)."""
        try:
            async with asyncio.timeout(timeout_s):
                await self.consumer.topics()
        except (KafkaError, TimeoutError, OSError) as exc:
            self.broker_health.failed("metadata", f"broker metadata request failed: {type(exc).__name__}: {exc}")
            return False
        self.broker_ok_at = self._clock()
        self.broker_health.answered()
        return True

    # ------------------------------------------------------------------ rebalance

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        if not revoked:
            return
        for hook in self.on_revoked_hooks:
            await hook(revoked)
        budget = self.settings.shutdown.drain_budget_s
        log.info("partitions revoked: %s; finishing in-flight work (budget %.0fs)", sorted(map(str, revoked)), budget)
        await self.pipeline.revoke(revoked, budget)
        await self.commit(revoked)
        self.pipeline.forget(revoked)
        self._paused -= revoked
        for tp in revoked:
            with contextlib.suppress(KeyError):
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        self.joined = True
        # After a rebalance every partition comes back unpaused: re-apply the pauses before any await (partitions
        # with records waiting for a writer schema or of a dataset held by a fatal error, and those held by the bulk
        # catch-up). What is read next is chosen again before the next fetch: nothing while the records still
        # buffered (of partitions kept across the rebalance) hold the bound.
        self._full = self._full and self.pipeline.buffered > 0
        self._over &= assigned
        self._paused = set()
        self.held &= assigned
        if self.held:
            self.consumer.pause(*(_theirs(tp) for tp in self.held))
        self._backpressure()  # pauses the waiting ones again
        for hook in self.on_assigned_hooks:
            hook(assigned)
        counts = {key: self._partition_counts(assigned, topics) for key, topics in self.pipeline.limiter_topics.items()}
        if self.quota_listener is not None:
            self.quota_listener(counts)
        else:
            for (group, api), (mine, total) in counts.items():
                limiter = self.pipeline.limiters[(group, api)]
                share = 1.0 if total == 0 else max(mine, 1) / total
                limiter.set_share(share)
                self.metrics.quota_share.labels(group, api).set(share)
                self.metrics.rate_limit.labels(group, api).set(limiter.rate)
        shares = ", ".join(f"{g}/{a}={mine}/{total}" for (g, a), (mine, total) in counts.items())
        log.info("partitions assigned: %s; partitions per quota: %s", sorted(map(str, assigned)), shares)

    def _partition_counts(self, assigned: set[TopicPartition], topics: list[str]) -> tuple[int, int]:
        """This member's partitions feeding one quota, and all of them: its partition share is mine / total."""
        total = mine = 0
        for topic in topics:
            parts = self.consumer.partitions_for_topic(topic)
            total += len(parts) if parts else 0
            mine += sum(1 for tp in assigned if tp.topic == topic)
        return mine, total

    def backlog(self, topics: list[str]) -> int | None:
        """Records of these topics waiting on this member: fetched and not done, or not fetched yet (lag).
        None while a partition's backlog is not known yet (assigned, no fetch answered since)."""
        waiting = 0
        for tp in self.assignment():
            if tp.topic not in topics:
                continue
            try:
                high = self.consumer.highwater(_theirs(tp))
            except (AssertionError, IllegalStateError):
                high = None
            if high is None:
                return None
            position = self.pipeline.tracker.position(tp)
            if position is None:
                position = self.pipeline.tracker.last_committed(tp)
            lag = high - position if position is not None else 0
            waiting += max(self.pipeline.tracker.pending(tp), lag)
        return waiting

    async def stop(self) -> None:
        try:
            async with asyncio.timeout(10):
                await self.consumer.stop()
        except TimeoutError:
            log.warning("the Kafka consumer did not stop within 10s")
