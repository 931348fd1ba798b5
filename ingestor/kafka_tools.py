"""Small Kafka helpers shared by the demo, the DLQ tools and the tests: create topics, produce, read a topic."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError


async def create_topics(bootstrap: str, partitions: dict[str, int]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(t, num_partitions=n, replication_factor=1) for t, n in partitions.items() if t not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
    finally:
        await admin.close()


Headers = list[tuple[str, bytes]]


async def produce(
    bootstrap: str,
    records: Iterable[tuple[str, bytes | None, bytes | None] | tuple[str, bytes | None, bytes | None, Headers]],
    *,
    linger_ms: int = 5,
    **client: Any,
) -> dict[TopicPartition, int]:
    """Send (topic, key, value[, headers]) records; returns the last offset written per partition."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=linger_ms, acks="all", **client)
    await producer.start()
    last: dict[TopicPartition, int] = {}
    try:
        futures = [
            await producer.send(r[0], key=r[1], value=r[2], headers=r[3] if len(r) > 3 else None) for r in records
        ]
        for meta in await asyncio.gather(*futures):
            tp = TopicPartition(meta.topic, meta.partition)
            last[tp] = max(last.get(tp, -1), meta.offset)
    finally:
        await producer.stop()
    return last


async def read_topic(
    bootstrap: str, topic: str, *, idle_s: float = 2.0, timeout_s: float = 60.0, **client: Any
) -> list[Any]:
    """Every record of ``topic`` from the start (no group), stopping once nothing new arrived for ``idle_s``."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest", **client
    )
    await consumer.start()
    out: list[Any] = []
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in sorted(parts)])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        quiet_since = loop.time()
        while loop.time() < deadline and loop.time() - quiet_since < idle_s:
            batch = await consumer.getmany(timeout_ms=200)
            if batch:
                quiet_since = loop.time()
                for records in batch.values():
                    out.extend(records)
    finally:
        await consumer.stop()
    return out
