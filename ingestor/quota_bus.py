"""The quota heartbeats on Kafka: a small topic every replica writes to and reads from the end, without a group.

No compaction is needed (nor available everywhere): a reader starts at the end and keeps the last heartbeat per
member for a few seconds (``QuotaShare``), so the topic only needs a short retention. When missing it is created with
one partition and a retention of one hour. Failures map to ``QuotaBusError`` (the replica then falls back to its
partition share).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from ingestor.config import Settings
from ingestor.errors import QuotaBusError
from ingestor.kafka_auth import kafka_security_kwargs
from ingestor.quota_share import Heartbeat

log = logging.getLogger(__name__)

RETENTION_MS = 3_600_000


def quota_topic(settings: Settings) -> str:
    return settings.personalize.quota_sharing.topic or f"{settings.kafka.group_id}.quota"


class KafkaHeartbeatBus:
    def __init__(self, settings: Settings, *, client_id: str) -> None:
        self.topic = quota_topic(settings)
        self._settings = settings
        self._client_id = client_id
        self._timeout_s = max(1.0, settings.personalize.quota_sharing.heartbeat_interval_s)
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None

    def _common(self) -> dict[str, Any]:
        k = self._settings.kafka
        return {
            "bootstrap_servers": k.bootstrap_servers,
            "client_id": self._client_id,
            "request_timeout_ms": k.request_timeout_ms,
            **kafka_security_kwargs(self._settings),
        }

    async def start(self) -> None:
        try:
            if self._settings.personalize.quota_sharing.create_topic:
                await self._create_topic()
            if self._producer is None:
                producer = AIOKafkaProducer(acks=1, linger_ms=0, **self._common())
                await producer.start()
                self._producer = producer
            if self._consumer is None:
                consumer = AIOKafkaConsumer(
                    group_id=None,
                    enable_auto_commit=False,
                    auto_offset_reset="latest",
                    fetch_max_wait_ms=100,
                    **self._common(),
                )
                await consumer.start()
                try:
                    parts = consumer.partitions_for_topic(self.topic)
                    if not parts:
                        await consumer._client.force_metadata_update()
                        parts = consumer.partitions_for_topic(self.topic)
                    if not parts:
                        raise QuotaBusError(f"topic {self.topic} does not exist (create it, or set create_topic)")
                    consumer.assign([TopicPartition(self.topic, p) for p in sorted(parts)])
                    await consumer.seek_to_end()
                except BaseException:
                    await consumer.stop()
                    raise
                self._consumer = consumer
        except (KafkaError, OSError, TimeoutError) as exc:
            raise QuotaBusError(f"topic {self.topic}: {type(exc).__name__}: {exc}") from exc
        log.info("quota heartbeats on topic %s", self.topic)

    async def _create_topic(self) -> None:
        admin = AIOKafkaAdminClient(**self._common())
        await admin.start()
        try:
            if self.topic in set(await admin.list_topics()):
                return
            new = NewTopic(self.topic, 1, 1, topic_configs={"retention.ms": str(RETENTION_MS)})
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([new])
        finally:
            await admin.close()

    async def publish(self, heartbeat: Heartbeat) -> None:
        """Hands the heartbeat to the producer without waiting for the broker's answer (the loop keeps reading);
        whether it arrived shows when it comes back to our own reader."""
        if self._producer is None:
            raise QuotaBusError("not started")
        try:
            async with asyncio.timeout(self._timeout_s):
                delivery = await self._producer.send(
                    self.topic, heartbeat.encode(), key=heartbeat.member.encode(), partition=0
                )
        except (KafkaError, OSError, TimeoutError) as exc:
            raise QuotaBusError(f"publish to {self.topic}: {type(exc).__name__}: {exc}") from exc
        delivery.add_done_callback(self._delivered)

    def _delivered(self, delivery: asyncio.Future[Any]) -> None:
        if not delivery.cancelled() and (exc := delivery.exception()) is not None:
            log.debug("a quota heartbeat was not delivered to %s: %r", self.topic, exc)

    async def receive(self, timeout_s: float) -> list[Heartbeat]:
        if self._consumer is None:
            raise QuotaBusError("not started")
        try:
            batches = await self._consumer.getmany(timeout_ms=int(timeout_s * 1000))
        except (KafkaError, OSError) as exc:
            raise QuotaBusError(f"read {self.topic}: {type(exc).__name__}: {exc}") from exc
        out: list[Heartbeat] = []
        for records in batches.values():
            for r in records:
                try:
                    out.append(Heartbeat.decode(r.value))
                except ValueError as exc:
                    log.debug("skipping %s@%d: %s", self.topic, r.offset, exc)
        return out

    async def stop(self) -> None:
        for client in (self._consumer, self._producer):
            if client is not None:
                with contextlib.suppress(KafkaError, OSError, TimeoutError):
                    async with asyncio.timeout(5):
                        await client.stop()
        self._consumer = self._producer = None
