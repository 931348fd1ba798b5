"""The Kafka side against a fake consumer: backpressure pauses, pauses survive a rebalance, safe commits."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka import TopicPartition as KafkaTP
from aiokafka.errors import CommitFailedError

from ingestor.config import Settings
from ingestor.metrics import Metrics
from ingestor.model import SourceRecord, TopicPartition
from ingestor.pipeline import Pipeline
from ingestor.sender import Sender
from ingestor.source import KafkaSource
from tests.fakes import FakePersonalize, FakeProducer

CONFIG = Path(__file__).parents[2] / "config"
TOPIC = "catalog.items"
ARN = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/ITEMS"


@dataclass
class FakeConsumer:
    assigned: set[KafkaTP] = field(default_factory=set)
    paused: set[KafkaTP] = field(default_factory=set)
    commits: list[dict[KafkaTP, int]] = field(default_factory=list)
    commit_error: Exception | None = None
    partitions: int = 4
    highwaters: dict[KafkaTP, int] = field(default_factory=dict)

    def highwater(self, tp: KafkaTP) -> int | None:
        return self.highwaters.get(tp)

    def assignment(self) -> set[KafkaTP]:
        return set(self.assigned)

    def pause(self, *tps: KafkaTP) -> None:
        assert set(tps) <= self.assigned, "pause() on an unassigned partition raises in aiokafka"
        self.paused |= set(tps)

    def resume(self, *tps: KafkaTP) -> None:
        self.paused -= set(tps)

    async def commit(self, offsets: dict[KafkaTP, int]) -> None:
        assert offsets, "commit() without offsets commits every fetched position (aiokafka #929)"
        assert set(offsets) <= self.assigned, "commit() of an unassigned partition raises IllegalStateError"
        if self.commit_error is not None:
            raise self.commit_error
        self.commits.append(dict(offsets))

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.partitions))


def make(max_buffered: int = 100, commit_timeout_s: float = 10.0) -> tuple[KafkaSource, FakeConsumer, Pipeline]:
    settings = Settings(
        kafka={"dead_letter_topic": "dlq", "commit_timeout_s": commit_timeout_s},
        routes=[{"topic": TOPIC, "kind": "items", "dataset_arn": ARN, "schema": CONFIG / "schemas/items.avsc"}],
        batching={"max_buffered_records": max_buffered},
    )
    metrics = Metrics()
    pipeline = Pipeline(
        settings, Sender(FakePersonalize(), metrics, settings.personalize.retry), FakeProducer(), metrics
    )
    consumer = FakeConsumer(assigned={KafkaTP(TOPIC, p) for p in range(4)})
    return KafkaSource(settings, pipeline, metrics, consumer=consumer), consumer, pipeline  # type: ignore[arg-type]


def fill(pipeline: Pipeline, partition: int, count: int, start: int = 0) -> None:
    for off in range(start, start + count):
        value = {"ITEM_ID": f"p{partition}-{off}", "PRICE": 1, "CREATION_TIMESTAMP": 1}
        pipeline.ingest(SourceRecord(TOPIC, partition, off, None, json.dumps(value).encode()))


async def test_backpressure_pauses_the_busiest_partitions_then_resumes() -> None:
    source, consumer, pipeline = make(max_buffered=100)
    fill(pipeline, 0, 80)
    fill(pipeline, 1, 30)
    fill(pipeline, 2, 5)
    source._backpressure()
    assert consumer.paused == {KafkaTP(TOPIC, 0)}  # 115 buffered > 100: pausing the busiest is enough
    assert source.metrics.paused_partitions._value.get() == 1
    for off in range(80):  # partition 0 drains
        pipeline.tracker.done(TopicPartition(TOPIC, 0), off, 0)
    source._backpressure()
    assert consumer.paused == set()  # 35 < 75 % of the limit: resumed


async def test_pauses_are_reapplied_after_a_rebalance_for_partitions_still_owned() -> None:
    source, consumer, pipeline = make(max_buffered=10)
    fill(pipeline, 0, 20)
    fill(pipeline, 3, 20)
    source._backpressure()
    assert consumer.paused == {KafkaTP(TOPIC, 0), KafkaTP(TOPIC, 3)}
    # the group rebalanced: aiokafka hands partitions back unpaused; we keep partition 0 only
    consumer.paused.clear()
    consumer.assigned = {KafkaTP(TOPIC, 0), KafkaTP(TOPIC, 1)}
    await source.on_assigned({TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)})
    assert consumer.paused == {KafkaTP(TOPIC, 0)}
    limiter = next(iter(pipeline.limiters.values()))
    assert limiter.rate == pytest.approx(10.0 * 2 / 4)  # quota share = 2 of the topic's 4 partitions


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
