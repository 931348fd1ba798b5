"""The Kafka side against a fake consumer: backpressure, pauses survive a rebalance, safe commits."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiokafka import TopicPartition as KafkaTP
from aiokafka.errors import CommitFailedError

from ingestor.config import Settings
from ingestor.errors import FatalRouteError
from ingestor.metrics import Metrics
from ingestor.model import SourceRecord, TopicPartition
from ingestor.pipeline import Pipeline
from ingestor.sender import Sender
from ingestor.source import KafkaSource
from tests.conftest import wait_until
from tests.fakes import FakeConsumer, FakePersonalize, FakeProducer, client_error

CONFIG = Path(__file__).parents[2] / "config"
TOPIC = "catalog.items"
ARN = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/ITEMS"


def make(
    max_buffered: int = 100,
    commit_timeout_s: float = 10.0,
    *,
    fetch_max_records: int = 1_000,
    personalize: FakePersonalize | None = None,
    rate: float = 10.0,
) -> tuple[KafkaSource, FakeConsumer, Pipeline]:
    settings = Settings(
        kafka={
            "dead_letter_topic": "dlq",
            "commit_timeout_s": commit_timeout_s,
            "fetch_max_records": fetch_max_records,
        },
        routes=[{"topic": TOPIC, "kind": "items", "dataset_arn": ARN, "schema": CONFIG / "schemas/items.avsc"}],
        batching={"max_buffered_records": max_buffered, "linger_ms": 0},
        personalize={"rate_limits": {"PutItems": rate}},
    )
    metrics = Metrics()
    sender = Sender(personalize or FakePersonalize(), metrics, settings.personalize.retry)
    pipeline = Pipeline(settings, sender, FakeProducer(), metrics)
    consumer = FakeConsumer(assigned={KafkaTP(TOPIC, p) for p in range(4)})
    return KafkaSource(settings, pipeline, metrics, consumer=consumer), consumer, pipeline  # type: ignore[arg-type]


def fill(pipeline: Pipeline, partition: int, count: int, start: int = 0) -> None:
    for off in range(start, start + count):
        value = {"ITEM_ID": f"p{partition}-{off}", "PRICE": 1, "CREATION_TIMESTAMP": 1}
        pipeline.ingest(SourceRecord(TOPIC, partition, off, None, json.dumps(value).encode()))


def value(tp: KafkaTP, offset: int) -> bytes:
    return json.dumps({"ITEM_ID": f"p{tp.partition}-{offset}", "PRICE": 1, "CREATION_TIMESTAMP": 1}).encode()


async def test_at_the_bound_no_partition_is_read_until_below_75_percent_and_none_is_paused() -> None:
    """Backpressure leaves partitions out of the fetch instead of pausing them: a pause drops aiokafka's prefetched
    batch, which is cyclic garbage that only a full collection frees (and is fetched again after the resume)."""
    source, consumer, pipeline = make(max_buffered=100)
    every = {TopicPartition(TOPIC, p) for p in range(4)}
    fill(pipeline, 0, 60)
    fill(pipeline, 1, 30)
    assert source._backpressure() == 10  # room left under the bound
    assert source._readable == {TopicPartition(TOPIC, p) for p in (1, 2, 3)}  # 60 ≥ its share: not read (kept)
    fill(pipeline, 2, 10)
    assert source._backpressure() == 0
    assert source._readable == set()  # at the bound nothing is read, not only the busiest
    assert source.metrics.paused_partitions._value.get() == 4
    for off in range(20):
        pipeline.tracker.done(TopicPartition(TOPIC, 0), off, 0)
    source._backpressure()
    assert source._readable == set()  # 80 is not below 75 % of the limit: still held back (hysteresis)
    for off in range(20, 30):
        pipeline.tracker.done(TopicPartition(TOPIC, 0), off, 0)
    assert source._backpressure() == 30
    assert source._readable == every  # 70 < 75: all read again (p0 holds 30, below its share of 50)
    assert source.metrics.paused_partitions._value.get() == 0
    assert consumer.paused == set()  # nothing was ever paused, so nothing prefetched was dropped


async def test_the_fetch_loop_never_buffers_more_than_the_bound() -> None:
    """A backlog on 4 partitions, prefetched batches bigger than the room left: buffered ≤ bound at every record."""
    personalize = FakePersonalize(gate=asyncio.Event())  # nothing is delivered until the gate opens
    source, consumer, pipeline = make(max_buffered=100, fetch_max_records=30, personalize=personalize, rate=10_000.0)
    consumer.backlog = {tp: 1_000 for tp in consumer.assigned}
    consumer.value = value
    consumer.prefetch = 40
    peak = 0
    ingest = pipeline.ingest

    def ingest_and_watch(rec: SourceRecord) -> None:
        nonlocal peak
        ingest(rec)
        peak = max(peak, pipeline.buffered)

    pipeline.ingest = ingest_and_watch  # type: ignore[method-assign]
    pipeline.start()
    loop = asyncio.create_task(source.run())
    try:
        await wait_until(lambda: pipeline.buffered == 100, timeout=10, what="the buffer at its bound")
        fetches = len(consumer.fetches)
        for _ in range(5):  # the loop goes on, but reads nothing more
            source._last_poll = float("inf")
            await asyncio.sleep(0.06)
        assert pipeline.buffered == 100 and len(consumer.fetches) == fetches
        personalize.gate.set()  # type: ignore[union-attr]
        await wait_until(lambda: len(personalize.calls) >= 150, timeout=20, what="deliveries through resumes")
    finally:
        source.stop_fetching()
        await loop
        await pipeline.stop()
    assert sum(len(records) for _, records in personalize.calls) >= 1_000
    assert peak <= 100, f"{peak} records buffered with a bound of 100"
    assert consumer.dropped == 0  # no prefetched batch was thrown away (and fetched again)


async def test_while_nothing_may_be_read_getmany_still_runs_so_the_member_stays_in_the_group() -> None:
    """aiokafka leaves the group after max_poll_interval_ms without a getmany: at the bound the loop calls it every
    quarter of that for at most one record of the partition holding the fewest."""
    now = [0.0]
    settings = Settings(
        kafka={"dead_letter_topic": "dlq", "max_poll_interval_ms": 20_000},
        routes=[{"topic": TOPIC, "kind": "items", "dataset_arn": ARN, "schema": CONFIG / "schemas/items.avsc"}],
        batching={"max_buffered_records": 100, "linger_ms": 0},
    )
    metrics = Metrics()
    pipeline = Pipeline(
        settings, Sender(FakePersonalize(), metrics, settings.personalize.retry), FakeProducer(), metrics
    )
    consumer = FakeConsumer(assigned={KafkaTP(TOPIC, p) for p in range(4)}, prefetch=40)
    consumer.backlog = {tp: 1_000 for tp in consumer.assigned}
    consumer.value = value
    source = KafkaSource(settings, pipeline, metrics, consumer=consumer, clock=lambda: now[0])  # type: ignore[arg-type]
    fill(pipeline, 0, 40)
    fill(pipeline, 1, 30)
    fill(pipeline, 2, 30)  # at the bound; partition 3 holds none
    loop = asyncio.create_task(source.run())
    try:
        for _ in range(5):
            await asyncio.sleep(0.06)
        assert consumer.fetches == []  # within the interval: nothing called
        now[0] = 5.0  # a quarter of max_poll_interval_ms
        await wait_until(lambda: len(consumer.fetches) == 1, timeout=5, what="the keep-alive getmany")
        assert consumer.fetches == [((KafkaTP(TOPIC, 3),), 1)]
        assert pipeline.buffered <= 101 and consumer.dropped == 0
        for _ in range(5):
            await asyncio.sleep(0.06)
        assert len(consumer.fetches) == 1  # the next one a quarter of the interval later
    finally:
        source.stop_fetching()
        await loop


async def test_after_a_rebalance_nothing_is_read_while_kept_records_hold_the_bound() -> None:
    source, consumer, pipeline = make(max_buffered=10)
    fill(pipeline, 0, 20)
    fill(pipeline, 3, 20)
    source._backpressure()
    assert source._readable == set()
    # the group rebalanced: we keep partition 0 and get partition 1, and the records still buffered hold the
    # bound: neither is read
    consumer.assigned = {KafkaTP(TOPIC, 0), KafkaTP(TOPIC, 1)}
    await source.on_assigned({TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)})
    assert source._readable == set() and consumer.paused == set()
    assert source.metrics.paused_partitions._value.get() == 2
    limiter = next(iter(pipeline.limiters.values()))
    assert limiter.rate == pytest.approx(10.0 * 2 / 4)  # quota share = 2 of the topic's 4 partitions


async def test_after_a_rebalance_that_emptied_the_buffer_nothing_stays_paused() -> None:
    source, consumer, pipeline = make(max_buffered=10)
    fill(pipeline, 0, 20)
    source._backpressure()
    assert source._readable == set()
    await source.on_revoked({TopicPartition(TOPIC, p) for p in range(4)})  # eager: everything revoked, dropped
    assert pipeline.buffered == 0
    await source.on_assigned({TopicPartition(TOPIC, p) for p in range(4)})
    assert consumer.paused == set()
    assert source._backpressure() == 10
    assert source._readable == {TopicPartition(TOPIC, p) for p in range(4)}


async def test_commit_passes_explicit_offsets_of_owned_partitions_only() -> None:
    source, consumer, pipeline = make()
    fill(pipeline, 0, 3)
    fill(pipeline, 1, 2)
    for off in range(3):
        pipeline.tracker.done(TopicPartition(TOPIC, 0), off, 0)
    pipeline.tracker.done(TopicPartition(TOPIC, 1), 0, 0)
    consumer.assigned.discard(KafkaTP(TOPIC, 1))  # revoked meanwhile
    committed = await source.commit()
    assert committed == {TopicPartition(TOPIC, 0): 3}
    assert consumer.commits == [{KafkaTP(TOPIC, 0): 3}]
    assert await source.commit() == {}  # nothing advanced: no second commit
    assert len(consumer.commits) == 1


async def test_commit_failed_is_not_retried_and_not_recorded() -> None:
    source, consumer, pipeline = make()
    fill(pipeline, 0, 1)
    pipeline.tracker.done(TopicPartition(TOPIC, 0), 0, 0)
    consumer.commit_error = CommitFailedError("rebalance in progress")
    assert await source.commit() == {}
    assert pipeline.tracker.last_committed(TopicPartition(TOPIC, 0)) is None
    assert source.metrics.commits.labels("rejected")._value.get() == 1


async def test_a_commit_that_hangs_is_bounded_by_its_timeout() -> None:
    source, consumer, pipeline = make(commit_timeout_s=0.05)
    fill(pipeline, 0, 1)
    pipeline.tracker.done(TopicPartition(TOPIC, 0), 0, 0)

    async def hang(offsets: dict[KafkaTP, int]) -> None:
        await asyncio.Event().wait()

    consumer.commit = hang  # type: ignore[method-assign]
    assert await source.commit() == {}
    assert source.metrics.commits.labels("failed")._value.get() == 1


async def test_backlog_counts_what_waits_and_is_unknown_before_the_first_fetch() -> None:
    source, consumer, pipeline = make()
    assert source.backlog([TOPIC]) is None  # assigned, nothing fetched yet
    consumer.highwaters = {KafkaTP(TOPIC, p): 0 for p in range(4)}
    assert source.backlog([TOPIC]) == 0
    fill(pipeline, 0, 10)
    consumer.highwaters[KafkaTP(TOPIC, 0)] = 100  # 10 fetched and pending, 90 more not fetched yet
    assert source.backlog([TOPIC]) == 100
    assert source.backlog(["another.topic"]) == 0


async def test_a_partition_waiting_for_the_schema_registry_is_paused_so_the_others_flow_on() -> None:
    """Held records (waiting for a writer schema) count as buffered: a partition that keeps fetching into the hold
    would fill the bound alone and pause every partition for as long as the registry is down."""
    from fastavro import parse_schema

    from ingestor.avro import encode
    from ingestor.registry import RegisteredSchema

    schema = {
        "type": "record",
        "name": "Value",
        "fields": [
            {"name": "ITEM_ID", "type": "string"},
            {"name": "PRICE", "type": "double"},
            {"name": "CREATION_TIMESTAMP", "type": "long"},
        ],
    }
    answer = asyncio.Event()

    class SlowRegistry:
        async def schema(self, schema_id: int) -> RegisteredSchema:
            await answer.wait()
            return RegisteredSchema(schema_id, json.dumps(schema))

        async def version(self, subject: str, version: int | str) -> RegisteredSchema:
            raise AssertionError("no references")

    settings = Settings(
        kafka={"dead_letter_topic": "dlq", "fetch_max_records": 30},
        routes=[{"topic": TOPIC, "kind": "items", "dataset_arn": ARN, "schema": CONFIG / "schemas/items.avsc"}],
        batching={"max_buffered_records": 100, "linger_ms": 0},
        personalize={"rate_limits": {"PutItems": 10_000.0}},
        schema_registry={"url": "http://registry:8081"},
    )
    metrics = Metrics()
    personalize = FakePersonalize()
    pipeline = Pipeline(
        settings,
        Sender(personalize, metrics, settings.personalize.retry),
        FakeProducer(),
        metrics,
        registry=SlowRegistry(),
    )
    consumer = FakeConsumer(assigned={KafkaTP(TOPIC, 0), KafkaTP(TOPIC, 1)}, prefetch=40)
    consumer.backlog = {KafkaTP(TOPIC, 0): 500, KafkaTP(TOPIC, 1): 500}
    avro_first = encode(1, parse_schema(schema), {"ITEM_ID": "p0-0", "PRICE": 1.0, "CREATION_TIMESTAMP": 1})
    consumer.value = lambda tp, offset: avro_first if (tp.partition, offset) == (0, 0) else value(tp, offset)
    source = KafkaSource(settings, pipeline, metrics, consumer=consumer)  # type: ignore[arg-type]
    p0, p1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
    pipeline.start()
    loop = asyncio.create_task(source.run())
    try:
        await wait_until(lambda: pipeline.tracker.to_commit().get(p1) == 500, timeout=10, what="partition 1 to flow")
        assert pipeline.tracker.to_commit().get(p0) == 0 and 0 < pipeline.held.count < 100
        assert consumer.paused == {KafkaTP(TOPIC, 0)}
        answer.set()  # the registry answers: partition 0 is released and resumed
        await wait_until(lambda: pipeline.tracker.to_commit().get(p0) == 500, timeout=10, what="partition 0")
        assert consumer.paused == set() and pipeline.held.count == 0
    finally:
        source.stop_fetching()
        await loop
        await pipeline.stop()
    state = personalize.state[ARN]
    assert len(state) == 1000 and json.loads(state["p0-0"])["price"] == 1.0


async def test_partitions_that_fetch_first_do_not_take_the_whole_bound() -> None:
    """8 partitions with a backlog, fetched batches of 100, a bound of 800: without a per-partition share the first
    partitions' batches fill the bound and the others (other datasets, other dataset groups) get nothing until it
    drains. Each partition holds its share (¾ of the bound ÷ 8 = 75) plus at most one capped fetch (75 // 4), so the
    bound itself is not reached."""
    personalize = FakePersonalize(gate=asyncio.Event())  # nothing is delivered: the buffer only fills
    source, consumer, pipeline = make(max_buffered=800, fetch_max_records=100, personalize=personalize, rate=10_000.0)
    consumer.assigned = {KafkaTP(TOPIC, p) for p in range(8)}
    consumer.backlog = {tp: 1_000 for tp in consumer.assigned}
    consumer.value = value
    consumer.prefetch = 100
    pipeline.start()
    loop = asyncio.create_task(source.run())
    try:

        def held() -> list[int]:
            by_partition = pipeline.tracker.pending_by_partition()
            return [by_partition.get(TopicPartition(TOPIC, p), 0) for p in range(8)]

        await wait_until(lambda: min(held()) >= 75, timeout=10, what="every partition at its share")
        for _ in range(20):  # more polls change nothing: every partition is at its share
            await asyncio.sleep(0)
        assert all(75 <= n <= 75 + 75 // 4 for n in held()), held()
        assert pipeline.buffered < 800
    finally:
        source.stop_fetching()
        personalize.gate.set()  # type: ignore[union-attr]
        await loop
        await pipeline.stop()


USERS_TOPIC = "crm.users"
USERS_ARN = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/USERS"


def two_datasets(
    max_buffered: int, assigned: set[KafkaTP], personalize: FakePersonalize
) -> tuple[KafkaSource, FakeConsumer, Pipeline]:
    """Items and users routes; on_fatal: hold with a probe every 0.2 s."""
    settings = Settings(
        kafka={"dead_letter_topic": "dlq", "fetch_max_records": 100},
        routes=[
            {"topic": TOPIC, "kind": "items", "dataset_arn": ARN, "schema": CONFIG / "schemas/items.avsc"},
            {"topic": USERS_TOPIC, "kind": "users", "dataset_arn": USERS_ARN, "schema": CONFIG / "schemas/users.avsc"},
        ],
        batching={"max_buffered_records": max_buffered, "linger_ms": 0},
        personalize={
            "rate_limits": {"PutItems": 10_000.0, "PutUsers": 10_000.0},
            "on_fatal": "hold",
            "fatal_retry_s": 0.2,
        },
    )
    metrics = Metrics()
    pipeline = Pipeline(settings, Sender(personalize, metrics, settings.personalize.retry), FakeProducer(), metrics)
    consumer = FakeConsumer(assigned=assigned)
    return KafkaSource(settings, pipeline, metrics, consumer=consumer), consumer, pipeline  # type: ignore[arg-type]


def user_value(tp: KafkaTP, offset: int) -> bytes:
    return json.dumps({"USER_ID": f"u{tp.partition}-{offset}", "MEMBERSHIP": "gold"}).encode()


async def test_a_dataset_held_by_a_fatal_error_does_not_keep_the_others_paused() -> None:
    """Three items partitions whose dataset is held hold 75 of a bound of 100 records, which are never done while it
    is held: the hysteresis counts only the rest, so the users partition is read again once its own records drain
    (counting all 100, nothing would resume before 75, which the held records alone never fall below)."""
    items = {TopicPartition(TOPIC, p) for p in range(3)}
    users = TopicPartition(USERS_TOPIC, 0)
    source, consumer, pipeline = two_datasets(
        100, {KafkaTP(TOPIC, p) for p in range(3)} | {KafkaTP(USERS_TOPIC, 0)}, FakePersonalize()
    )
    for p in range(3):
        fill(pipeline, p, 25)
    pipeline.datasets[0].fatal = FatalRouteError("PutItems on ITEMS failed with ResourceNotFoundException")
    assert pipeline.waiting_on_fatal == 75
    for off in range(25):
        pipeline.ingest(SourceRecord(USERS_TOPIC, 0, off, None, user_value(KafkaTP(USERS_TOPIC, 0), off)))
    assert source._backpressure() == 0
    assert source._readable == set()  # at the bound: nothing read
    assert consumer.paused == {KafkaTP(tp.topic, tp.partition) for tp in items}  # held: paused
    consumer.paused.clear()  # a rebalance hands every partition back unpaused: the held ones are paused again
    await source.on_assigned({*items, users})
    assert consumer.paused == {KafkaTP(tp.topic, tp.partition) for tp in items}
    for off in range(10):
        pipeline.tracker.done(users, off, 0)
    assert source._backpressure() == 10  # 15 of the users' 25 left: below 75 % of what can drain
    assert source._readable == {users}
    assert consumer.paused == {KafkaTP(tp.topic, tp.partition) for tp in items}  # held: not fetched any further
    pipeline.datasets[0].fatal = None  # released: its partitions are fetched again (up to their share)
    source._backpressure()
    assert consumer.paused == set()


async def test_held_partitions_stop_fetching_while_the_others_flow_and_resume_after_the_probe() -> None:
    """Items (3 partitions) fail with AccessDenied from the first call: their partitions keep what they fetched (at
    most their share of the bound plus one fetched batch) and are paused; the users partitions are read to the end
    and committed; once access is granted the probe succeeds and the items partitions are read to the end too."""
    personalize = FakePersonalize()
    failing = [True]
    personalize.on_call = lambda arn, _: (
        personalize.fail_next.append(client_error("AccessDeniedException")) if arn == ARN and failing[0] else None
    )
    assigned = {KafkaTP(TOPIC, p) for p in range(3)} | {KafkaTP(USERS_TOPIC, p) for p in range(2)}
    source, consumer, pipeline = two_datasets(500, assigned, personalize)  # a share of 100 per partition
    consumer.backlog = {tp: 300 for tp in assigned}
    consumer.value = lambda tp, offset: user_value(tp, offset) if tp.topic == USERS_TOPIC else value(tp, offset)
    consumer.prefetch = 40
    peak = 0
    ingest = pipeline.ingest

    def ingest_and_watch(rec: SourceRecord) -> None:
        nonlocal peak
        ingest(rec)
        peak = max(peak, pipeline.buffered)

    pipeline.ingest = ingest_and_watch  # type: ignore[method-assign]
    users = [TopicPartition(USERS_TOPIC, p) for p in range(2)]
    items = [TopicPartition(TOPIC, p) for p in range(3)]
    pipeline.start()
    loop = asyncio.create_task(source.run())
    try:
        await wait_until(
            lambda: all(pipeline.tracker.to_commit().get(tp) == 300 for tp in users), timeout=10, what="every user"
        )
        assert pipeline.fatal is not None
        assert all(pipeline.tracker.to_commit().get(tp, 0) == 0 for tp in items)  # nothing committed
        fetched = {tp: consumer.positions.get(KafkaTP(tp.topic, tp.partition), 0) for tp in items}
        assert all(0 < n <= 100 + 40 for n in fetched.values()), fetched  # at most their share + one batch
        assert {KafkaTP(tp.topic, tp.partition) for tp in items if fetched[tp]} <= consumer.paused
        failing[0] = False  # access granted: the next probe succeeds and the items partitions are read again
        await wait_until(
            lambda: all(pipeline.tracker.to_commit().get(tp) == 300 for tp in items), timeout=10, what="every item"
        )
        assert pipeline.fatal is None and consumer.paused == set()
    finally:
        source.stop_fetching()
        await loop
        await pipeline.stop()
    assert peak <= 500
    assert len(personalize.state[ARN]) == 900 and len(personalize.state[USERS_ARN]) == 600
