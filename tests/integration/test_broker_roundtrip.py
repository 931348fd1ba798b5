"""aiokafka produce / consume / commit round trip on the embedded broker."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

pytestmark = pytest.mark.integration


async def test_produce_consume_commit_roundtrip(broker, unique) -> None:
    topic, group = unique("rt"), unique("grp")
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    finally:
        await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    await producer.start()
    try:
        metas = [
            await producer.send_and_wait(topic, f"v{i}".encode(), key=f"k{i}".encode(), partition=i % 2)
            for i in range(10)
        ]
    finally:
        await producer.stop()
    last = {m.partition: m.offset for m in metas}

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap_servers,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
    )
    await consumer.start()
    try:
        got: list[bytes] = []
        async with __import__("asyncio").timeout(30):
            while len(got) < 10:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    got.extend(r.value for r in records)
        assert sorted(got) == sorted(f"v{i}".encode() for i in range(10))
        offsets = {TopicPartition(topic, p): o + 1 for p, o in last.items()}
        await consumer.commit(offsets)
        for tp, off in offsets.items():
            assert await consumer.committed(tp) == off
            assert consumer.highwater(tp) == off
    finally:
        await consumer.stop()
