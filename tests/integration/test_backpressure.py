"""The buffer bound on the real broker: a backlog many times ``max_buffered_records``, drained through rebalances
and a restart, never has more fetched-but-not-done records than the bound."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from ingestor.app import EXIT_OK, Service
from ingestor.config import Settings
from ingestor.emulator.app import running_emulator
from ingestor.emulator.config import EmulatorConfig
from ingestor.kafka_tools import create_topics, produce
from ingestor.model import SourceRecord
from ingestor.pipeline import Pipeline
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

CONFIG = Path(__file__).parents[2] / "config"
ITEMS_ARN = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/ITEMS"
BOUND = 300
RECORDS = 8_000  # 4 partitions of 2,000; a prefetched batch of one partition (~1 MB) holds all of them


def value(i: int) -> bytes:
    text = f"item {i}: a warm wool knit sweater with ribbed cuffs and a relaxed fit " * 4
    return json.dumps({"ITEM_ID": f"item-{i}", "PRICE": 1.5, "DESCRIPTION": text, "CREATION_TIMESTAMP": i}).encode()


async def test_buffered_records_never_exceed_the_bound_through_rebalances_and_a_restart(
    broker, unique, monkeypatch: pytest.MonkeyPatch
) -> None:
    suffix = unique("bp")
    topic, dlq = f"items-{suffix}", f"dlq-{suffix}"
    await create_topics(broker.bootstrap_servers, {topic: 4, dlq: 1})
    ends = await produce(broker.bootstrap_servers, [(topic, f"item-{i}".encode(), value(i)) for i in range(RECORDS)])

    peaks: dict[Pipeline, int] = {}
    ingest = Pipeline.ingest

    def ingest_and_watch(self: Pipeline, rec: SourceRecord) -> None:  # every record, so no peak is missed
        ingest(self, rec)
        peaks[self] = max(peaks.get(self, 0), self.buffered)

    monkeypatch.setattr(Pipeline, "ingest", ingest_and_watch)

    async with running_emulator(EmulatorConfig.load(CONFIG / "emulator.yaml", quotas={"enabled": False})) as emu:
        settings = Settings(
            kafka={
                "bootstrap_servers": broker.bootstrap_servers,
                "group_id": f"ingestor-{suffix}",
                "dead_letter_topic": dlq,
                "session_timeout_ms": 6000,
                "heartbeat_interval_ms": 500,
                "commit_interval_s": 0.2,
            },
            personalize={
                "endpoint_url": emu.url,
                "aws_access_key_id": "test",
                "aws_secret_access_key": "test",
                "rate_limits": {"PutItems": 60.0},  # slower than the broker: the buffer fills up
            },
            routes=[
                {
                    "topic": topic,
                    "kind": "items",
                    "dataset_arn": ITEMS_ARN,
                    "schema": str(CONFIG / "schemas/items.avsc"),
                }
            ],
            batching={"max_buffered_records": BOUND},
            metrics={"port": 0},
        )
        services: list[tuple[Service, asyncio.Task[int]]] = []

        def start() -> Service:
            service = Service(settings, registry=CollectorRegistry())
            services.append((service, asyncio.create_task(service.run())))
            return service

        async def stop(service: Service) -> None:
            service.stop_requested.set()
            task = next(t for s, t in services if s is service)
            assert await asyncio.wait_for(task, 30) == EXIT_OK

        def consumed(service: Service) -> float:
            return sum(s.value for m in service.metrics.records_consumed.collect() for s in m.samples)

        def committed() -> dict[tuple[str, int], int]:
            out: dict[tuple[str, int], int] = {}
            for service, _ in services:
                if service.pipeline is not None:
                    for tp, off in service.pipeline.tracker._committed.items():
                        out[(tp.topic, tp.partition)] = max(out.get((tp.topic, tp.partition), 0), off)
            return out

        try:
            first = start()
            await wait_until(
                lambda: first.metrics.paused_partitions._value.get() == 4, timeout=30, what="the first at its bound"
            )
            second = start()  # a rebalance: partitions move while buffers are full
            await wait_until(lambda: consumed(second) > BOUND, timeout=30, what="the second member to fetch")
            await stop(first)  # another rebalance: the second takes every partition
            third = start()  # a restart of the first: it re-reads from the commits
            await wait_until(lambda: consumed(third) > 0, timeout=30, what="the restarted member to fetch")
            await wait_until(
                lambda: all(committed().get((tp.topic, tp.partition)) == off + 1 for tp, off in ends.items()),
                timeout=90,
                what="commits at the end of every partition",
            )
            await stop(second)
            await stop(third)
        finally:
            for service, task in services:
                service.stop_requested.set()
                await asyncio.gather(task, return_exceptions=True)

    assert len(peaks) == 3
    assert max(peaks.values()) >= BOUND * 0.75, "backpressure was not exercised"
    assert all(peak <= BOUND for peak in peaks.values()), f"buffered peaks {sorted(peaks.values())} > {BOUND}"
