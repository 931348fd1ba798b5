"""The dead-letter topic: every record that cannot be delivered, with its original bytes and the reason.

A dead-lettered record is done only once the broker acknowledged it: ``on_done`` is called then, never before.
A failed write is retried until it succeeds or the service stops (then the record stays uncommitted and is read
again after a restart: nothing is dropped). A value too large for the producer is truncated, and the header
``ingestor.value.truncated`` gives the original length. If the record is still too large (a huge key or huge source
headers), the key is truncated too (``ingestor.key.truncated``: its length) and the source's headers are left out
(``ingestor.source.headers.dropped``: how many).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from ingestor.metrics import Metrics
from ingestor.model import SourceRecord

log = logging.getLogger(__name__)

MAX_REASON_CHARS = 2000
TRUNCATED_VALUE_BYTES = 64 * 1024
SUMMARY_EVERY_S = 10.0
H_STAGE = "ingestor.error.stage"
H_REASON = "ingestor.error.reason"
H_CLASS = "ingestor.error.class"
H_TOPIC = "ingestor.source.topic"
H_PARTITION = "ingestor.source.partition"
H_OFFSET = "ingestor.source.offset"
H_DATASET = "ingestor.dataset.arn"
H_TRUNCATED = "ingestor.value.truncated"
H_KEY_TRUNCATED = "ingestor.key.truncated"
H_HEADERS_DROPPED = "ingestor.source.headers.dropped"
OUR_HEADERS = frozenset(
    {
        H_STAGE,
        H_REASON,
        H_CLASS,
        H_TOPIC,
        H_PARTITION,
        H_OFFSET,
        H_DATASET,
        H_TRUNCATED,
        H_KEY_TRUNCATED,
        H_HEADERS_DROPPED,
    }
)
TRUNCATED_KEY_BYTES = 1024  # a key left after the value was truncated and the record is still too large


class Producer(Protocol):
    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Awaitable[Any]: ...


def dlq_headers(
    record: SourceRecord, stage: str, reason: str, error_class: str, dataset_arn: str | None
) -> list[tuple[str, bytes]]:
    headers = [(k, v if v is not None else b"") for k, v in record.headers if k not in OUR_HEADERS]
    headers += [
        (H_STAGE, stage.encode()),
        (H_REASON, reason[:MAX_REASON_CHARS].encode("utf-8", "replace")),
        (H_CLASS, error_class.encode()),
        (H_TOPIC, record.topic.encode()),
        (H_PARTITION, str(record.partition).encode()),
        (H_OFFSET, str(record.offset).encode()),
    ]
    if dataset_arn:
        headers.append((H_DATASET, dataset_arn.encode()))
    return headers


class DeadLetterQueue:
    def __init__(
        self,
        producer: Producer,
        topic: str,
        metrics: Metrics,
        *,
        on_task_done: Callable[[asyncio.Task[None]], None] = lambda task: None,
        timeout_s: float = 30.0,
        retry_delay_s: float = 1.0,
    ) -> None:
        self._producer = producer
        self.topic = topic
        self._metrics = metrics
        self._on_task_done = on_task_done  # sees every finished write: a write that raised is a bug, not a skip
        self._timeout_s = timeout_s
        self._retry_delay_s = retry_delay_s
        self._tasks: set[asyncio.Task[None]] = set()
        self._recent: Counter[str] = Counter()
        self._summary_at = -SUMMARY_EVERY_S
        self._latest: tuple[str, str | None] = ("", None)

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def add(
        self,
        record: SourceRecord,
        stage: str,
        reason: str,
        error_class: str,
        dataset_arn: str | None,
        on_done: Callable[[], None],
    ) -> None:
        """Dead-letter ``record``; ``on_done()`` runs once the broker has it, never before."""
        log.debug("dead-lettering %s (stage %s): %s", record.where, stage, reason[:300])
        self._summarize(stage, reason, dataset_arn)
        headers = dlq_headers(record, stage, reason, error_class, dataset_arn)
        task = asyncio.create_task(self._deliver(record, stage, headers, on_done), name=f"dlq {record.where}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._on_task_done)

    def _summarize(self, stage: str, reason: str, dataset_arn: str | None) -> None:
        """At most one WARNING per SUMMARY_EVERY_S: counts by stage and the latest reason (never one per record)."""
        self._recent[stage] += 1
        self._latest = (reason, dataset_arn)
        if time.monotonic() - self._summary_at >= SUMMARY_EVERY_S:
            self.report()

    def report(self) -> None:
        """Log what was dead-lettered since the last report, if anything (also called periodically and at stop,
        so the tail of a burst is not left unreported)."""
        if not self._recent:
            return
        counts = dict(self._recent)
        reason, dataset_arn = self._latest
        log.warning(
            "dead-lettered %d record(s) since the last report %s; latest: %s",
            sum(counts.values()),
            counts,
            reason[:300],
            extra={"dead_lettered": counts, "dataset_arn": dataset_arn},
        )
        self._recent.clear()
        self._summary_at = time.monotonic()

    async def _deliver(
        self, record: SourceRecord, stage: str, headers: list[tuple[str, bytes]], on_done: Callable[[], None]
    ) -> None:
        value, key = record.value, record.key
        while True:
            try:
                ack = await self._producer.send(self.topic, value=value, key=key, headers=headers)
                async with asyncio.timeout(self._timeout_s):
                    await ack
                break
            except MessageSizeTooLargeError:
                if value is not None and len(value) > TRUNCATED_VALUE_BYTES:
                    log.warning("%s: value of %d bytes too large for the DLQ; truncating", record.where, len(value))
                    headers = [*headers, (H_TRUNCATED, str(len(value)).encode())]
                    value = value[:TRUNCATED_VALUE_BYTES]
                    continue
                if any(k in (H_KEY_TRUNCATED, H_HEADERS_DROPPED) for k, _ in headers):
                    raise  # already as small as it gets
                # The key or the source's headers are what is too large: keep their sizes, not their bytes.
                log.warning(
                    "%s: key or headers too large for the DLQ; truncating the key, leaving out the source's headers",
                    record.where,
                )
                ours = [(k, v) for k, v in headers if k in OUR_HEADERS]
                headers = [*ours, (H_HEADERS_DROPPED, str(len(headers) - len(ours)).encode())]
                if key is not None and len(key) > TRUNCATED_KEY_BYTES:
                    headers.append((H_KEY_TRUNCATED, str(len(key)).encode()))
                    key = key[:TRUNCATED_KEY_BYTES]
            except (KafkaError, TimeoutError) as exc:
                log.warning("%s: DLQ write failed (%s: %s); retrying", record.where, type(exc).__name__, exc)
                await asyncio.sleep(self._retry_delay_s)
        self._metrics.records_dead_lettered.labels(stage).inc()
        on_done()

    async def flush(self, timeout_s: float) -> bool:
        """Wait for every DLQ write in progress; True when all were acknowledged in time."""
        if not self._tasks:
            return True
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        return not pending

    async def aclose(self) -> None:
        """Abandon writes still in progress (their records stay uncommitted and are read again later)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
