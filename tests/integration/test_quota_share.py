"""Quota sharing by demand on the real broker: two replicas, the backlog on one's partition only."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from ingestor.app import Service
from ingestor.config import Settings
from ingestor.emulator.app import running_emulator
from ingestor.emulator.config import EmulatorConfig
from ingestor.kafka_tools import create_topics
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

CONFIG = Path(__file__).parents[2] / "config"
ARN = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/ITEMS"
KEY = ("shop", "PutItems")


def settings(bootstrap: str, endpoint: str, suffix: str) -> Settings:
    return Settings(
        kafka={
            "bootstrap_servers": bootstrap,
            "group_id": f"share-{suffix}",
            "dead_letter_topic": f"dlq-{suffix}",
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 500,
        },
        personalize={
            "endpoint_url": endpoint,
            "aws_access_key_id": "test",
            "aws_secret_access_key": "test",
            "rate_limits": {"PutItems": 10},
            "quota_sharing": {"mode": "demand", "heartbeat_interval_s": 0.5, "ttl_s": 2},
        },
        routes=[
            {"topic": f"items-{suffix}", "kind": "items", "dataset_arn": ARN, "schema": CONFIG / "schemas/items.avsc"}
        ],
        metrics={"port": 0},
        shutdown={"drain_budget_s": 5},
    )


async def test_the_busy_replica_takes_more_than_its_partition_share(broker, unique) -> None:
    suffix = unique("share")
    topic = f"items-{suffix}"
    await create_topics(broker.bootstrap_servers, {topic: 2, f"dlq-{suffix}": 1})
    config = EmulatorConfig.load(CONFIG / "emulator.yaml", quotas={"enabled": True, "put_items": 10})
    async with running_emulator(config) as emu:
        a, b = (
            Service(settings(broker.bootstrap_servers, emu.url, suffix), registry=CollectorRegistry()) for _ in "ab"
        )
        runs = [asyncio.create_task(s.run()) for s in (a, b)]
        try:

            def spread() -> bool:
                owned = [len(s.source.assignment()) if s.source and s.source.joined else 0 for s in (a, b)]
                return owned == [1, 1]

            await wait_until(spread, timeout=60, what="one partition each")
            assert a.source is not None and a.quota is not None and b.quota is not None
            (busy,) = a.source.assignment()
            producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=20)
            await producer.start()
            try:
                for i in range(3000):
                    value = {"ITEM_ID": f"i{i}", "PRICE": 1.5, "CREATION_TIMESTAMP": 1_700_000_000}
                    await producer.send(
                        topic, json.dumps(value).encode(), key=f"i{i}".encode(), partition=busy.partition
                    )
                await producer.flush()
            finally:
                await producer.stop()
            # both see each other, and a's share (and rate) rises above its partition share of 1/2
            await wait_until(lambda: a.quota.applied.get(KEY, 0) > 0.75, timeout=60, what="a's share rises")
            assert a.quota.peers() == [b.quota.member]
            assert a.pipeline is not None
            assert a.pipeline.limiters[KEY].rate > 5.0
            assert b.quota.applied[KEY] < 0.25
        finally:
            for s in (a, b):
                s.stop_requested.set()
            await asyncio.gather(*runs)
