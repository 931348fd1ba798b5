"""Catch-up inside ``ingestor run``: a dataset whose backlog outgrows the API quota switches to an import job.

With ``bulk.catch_up_after_s: N`` (> 0), every ``CHECK_INTERVAL_S`` this member estimates, per dataset, how long its
backlog would take through PutItems/PutUsers: the lag of its own partitions of the dataset (fetch high watermark −
the next offset to commit), discounted by the share of distinct ids among the dataset's buffered records (updates of
one id supersede each other: only the newest needs a call), over the records/s its share of the quota allows (calls/s
× records per call). The buffer sees hot ids, not repeats further apart than it holds: the estimate errs towards
importing. Above N seconds it switches that dataset:

1. stop fetching the dataset's partitions and stop dispatching the dataset (its in-flight calls finish);
2. fix the cut: the fetch high watermark of each of those partitions; the range starts at the committed offset;
3. forget what the pipeline buffered of those partitions (the import covers it), read the range with a separate
   consumer (no group), decode + validate with the streaming rules (invalid records → DLQ), coalesce, stage, run the
   import job (the importer's own steps, job name from the dataset and the range's start);
4. ACTIVE → commit the cut (for the partitions still owned) and stream from the cut; CREATE FAILED → the reason is
   logged and exported, nothing is committed, and the range goes back to the streaming path (no new switch for that
   dataset during ``FAILED_BACKOFF_S``).

Invariant 8 (nothing newer overtakes a job): while *any* import job of a dataset is running — this member's, another
replica's, or one left by a crashed run — this member does not dispatch that dataset's records. Every dataset is held
at start and after each rebalance until the control plane was asked. Other datasets keep streaming meanwhile.
Several replicas each import their own partitions; a second job of a dataset waits (ResourceInUse) and retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka import TopicPartition as KafkaTP
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter, Gauge

from ingestor.batcher import DatasetBuffer
from ingestor.bulk.importer import (
    DatasetRange,
    Importer,
    ImportResult,
    Progress,
    check_bucket,
    job_base_name,
    jobs_of,
    offsets_to_json,
    s3_client,
)
from ingestor.config import Route, Settings
from ingestor.control import ImportJobs, JobStatus, control_plane
from ingestor.deadletter import Producer
from ingestor.errors import IngestorError
from ingestor.kafka_auth import kafka_security_kwargs
from ingestor.model import TopicPartition
from ingestor.pipeline import Dataset, Pipeline
from ingestor.source import KafkaSource

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 5.0
FAILED_BACKOFF_S = 600.0
READER_FETCH_MAX_BYTES = 4 * 1024 * 1024


class BulkMetrics:
    """The bulk path's metrics, on the service's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.jobs = Counter(
            "ingestor_import_jobs_total",
            "Import jobs finished by this member, by final status.",
            ["status"],
            registry=r,
        )
        self.rows = Counter("ingestor_import_rows_total", "Rows (distinct ids) imported by ACTIVE jobs.", registry=r)
        self.bulk_seconds = Counter(
            "ingestor_bulk_mode_seconds_total", "Time datasets spent switched to the bulk path.", registry=r
        )
        for status in (JobStatus.ACTIVE, JobStatus.FAILED):  # exported (as 0) before the first job
            self.jobs.labels(status.value)
        self.in_bulk = Gauge("ingestor_bulk_mode_datasets", "Datasets switched to the bulk path now.", registry=r)
        self.held = Gauge(
            "ingestor_bulk_held_datasets", "Datasets whose streaming waits for an import job now.", registry=r
        )


@dataclass(frozen=True)
class Backlog:
    records: int
    records_per_s: float
    distinct_share: float = 1.0  # of the records, the share that will need a call: the others are superseded

    @property
    def seconds(self) -> float:
        to_send = self.records * self.distinct_share
        return to_send / self.records_per_s if self.records_per_s > 0 else float("inf")


MIN_SAMPLE = 500  # buffered records needed before the buffer's share of distinct ids is trusted


def superseded_discount(buffer: object) -> float:
    """The share of distinct ids among the dataset's buffered records: how much of a backlog will still need a call
    once newer records of the same ids supersede older ones. The buffer is a sample of the backlog's head, so this
    sees hot ids but not repeats further apart than the buffer: the estimate still errs towards importing."""
    if not isinstance(buffer, DatasetBuffer) or buffer.buffered < MIN_SAMPLE:
        return 1.0
    return max(0.01, buffer.distinct_ids / buffer.buffered)


def describe_duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def describe_count(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 10_000:
        return f"{n / 1e3:.0f}k"
    return str(n)


class CatchUp:
    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        source: KafkaSource,
        jobs: ImportJobs,
        s3: Any,
        dlq_producer: Producer,
        metrics: BulkMetrics,
        *,
        reader_factory: Callable[[], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.source = source
        self.jobs = jobs
        self.s3 = s3
        self.dlq_producer = dlq_producer
        self.metrics = metrics
        self._reader_factory = reader_factory or (lambda: _reader(settings))
        self._clock = clock
        self._routes: dict[str, list[Route]] = {}
        for route in settings.routes:
            if route.kind != "interactions":  # events are not "latest per id": they always stream (PutEvents)
                self._routes.setdefault(route.dataset_arn, []).append(route)
        self._datasets: dict[str, Dataset] = {
            ds.target.dataset_arn: ds for ds in pipeline.datasets if ds.target.dataset_arn in self._routes
        }
        self._unchecked: set[str] = set(self._datasets)
        self._foreign: set[str] = set()  # datasets held for a running job (any member's)
        self._switching: dict[str, asyncio.Task[None]] = {}
        self._switch_state: dict[str, tuple[set[TopicPartition], ImportResult]] = {}
        self._backoff_until: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        for ds in self._datasets.values():
            ds.open.clear()  # held until the control plane says no import job of it runs
        source.on_assigned_hooks.append(self.on_assigned)
        source.on_revoked_hooks.append(self.on_revoked)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="bulk catch-up")

    async def aclose(self) -> None:
        tasks = [t for t in (self._task, *self._switching.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """After a rebalance nothing is dispatched until the control plane was asked again (synchronous hold)."""
        for arn, ds in self._datasets.items():
            if arn not in self._switching:
                ds.open.clear()
                self._unchecked.add(arn)

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """A switch whose job is not created yet is abandoned before its partitions move to another member:
        that member may stream them as soon as it sees no running job, so no job of their range may start later."""
        for arn, (tps, result) in list(self._switch_state.items()):
            task = self._switching.get(arn)
            if task is not None and tps & revoked and result.job_arn is None:
                log.info("%s: partitions revoked before the import job was created: abandoning the switch", arn)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            for arn in list(self._datasets):
                try:
                    await self._check(arn)
                except IngestorError as exc:
                    log.warning("catch-up check of %s failed (%s); streaming stays held if it was", arn, exc)
            self.metrics.held.set(sum(1 for ds in self._datasets.values() if not ds.open.is_set()))
            await asyncio.sleep(CHECK_INTERVAL_S if not self._unchecked else 0.5)

    async def _check(self, arn: str) -> None:
        if arn in self._switching:
            return
        ds = self._datasets[arn]
        jobs = await self.jobs.list_import_jobs(arn)
        running = [j for j in jobs if not j.status.finished]
        if running:
            if arn not in self._foreign:
                log.info(
                    "%s: import job %s is %s: holding its streaming until it finishes",
                    arn,
                    running[0].name,
                    running[0].status.value,
                )
            self._foreign.add(arn)
            ds.open.clear()
            self._unchecked.discard(arn)
            return
        if arn in self._foreign:
            log.info("%s: no import job runs any more: streaming resumes", arn)
        self._foreign.discard(arn)
        self._unchecked.discard(arn)
        ds.open.set()
        if ds.deletions is not None:
            return  # on_delete: delete: an import job would skip (and commit) the deletes: this dataset streams
        backlog = self.backlog(arn)
        limit = self.settings.bulk.catch_up_after_s
        if backlog.seconds > limit and backlog.records > 0 and self._clock() >= self._backoff_until.get(arn, 0.0):
            task = asyncio.create_task(self._switch(arn, backlog), name=f"catch-up {arn}")
            self._switching[arn] = task
            task.add_done_callback(lambda _t: self._switching.pop(arn, None))

    # ------------------------------------------------------------------ the estimate

    def partitions(self, arn: str) -> set[TopicPartition]:
        topics = {r.topic for r in self._routes[arn]}
        return {tp for tp in self.source.assignment() if tp.topic in topics}

    def backlog(self, arn: str) -> Backlog:
        records = 0
        for tp in self.partitions(arn):
            try:
                high = self.source.consumer.highwater(KafkaTP(tp.topic, tp.partition))
            except (AssertionError, KafkaError):
                continue
            position = self.pipeline.tracker.position(tp)
            if position is None:
                position = self.pipeline.tracker.last_committed(tp)
            if high is not None and position is not None:
                records += max(0, high - position)
        ds = self._datasets[arn]
        rate = ds.limiter.rate * self.settings.batching.max_records
        return Backlog(records, rate, superseded_discount(ds.buffer))

    # ------------------------------------------------------------------ the switch

    async def _switch(self, arn: str, backlog: Backlog) -> None:
        ds = self._datasets[arn]
        tps = self.partitions(arn)
        started = self._clock()
        self.source.hold(tps)
        ds.open.clear()
        self.metrics.in_bulk.inc()
        start: dict[TopicPartition, int] = {}
        result = ImportResult(arn, "imported")
        self._switch_state[arn] = (tps, result)
        try:
            deadline = self._clock() + self.settings.shutdown.drain_budget_s
            while ds.buffer.in_flight and self._clock() < deadline:  # noqa: ASYNC110 - a count, no event to wait on
                await asyncio.sleep(0.05)
            await self.pipeline.dlq.flush(self.settings.kafka.dlq_timeout_s)  # settle what intake dead-lettered
            cut, start = await self._cut(tps)
            already_done = self.pipeline.tracker.done_checker(tps)
            ds.buffer.drop_partitions(tps)
            self.pipeline.forget(tps)
            base = job_base_name(arn, start)
            earlier = await self.jobs.list_import_jobs(arn)
            in_range = Backlog(sum(cut[tp] - start[tp] for tp in cut), backlog.records_per_s, backlog.distinct_share)
            log.info(
                "%s: backlog ≈ %s records%s ≈ %s at %.0f records/s > %.0f s: importing offsets %s..%s as job %s",
                arn,
                describe_count(in_range.records),
                f" ({in_range.distinct_share:.0%} distinct ids)" if in_range.distinct_share < 1 else "",
                describe_duration(in_range.seconds),
                in_range.records_per_s,
                self.settings.bulk.catch_up_after_s,
                offsets_to_json(start),
                offsets_to_json(cut),
                base,
            )
            routes = self._routes[arn]
            rng = DatasetRange(arn, routes, self.pipeline.schema_of(routes[0].topic), dict(start), dict(cut))
            reader = self._reader_factory()
            await reader.start()
            try:
                importer = Importer(
                    self.settings,
                    reader,
                    self.jobs,
                    self.s3,
                    self.dlq_producer,
                    progress=Progress(every_s=30.0, tty=False),  # log lines only inside the service
                    metrics=self.pipeline.metrics,
                    commit=self._commit_cut,
                    schemas={r.topic: self.pipeline.schema_of(r.topic) for r in routes},
                    writer_schemas=self.pipeline.schemas,
                )
                result = await importer.import_range(rng, base, "auto", earlier, result, already_done=already_done)
            finally:
                await reader.stop()
            if result.outcome == "failed":
                self._failed(arn, result.failure_reason or "(no reason given)")
                self.source.release(tps, seek_to=start)
            else:
                self.metrics.jobs.labels(JobStatus.ACTIVE.value).inc()
                self.metrics.rows.inc(result.rows)
                log.info(
                    "%s: import job %s ACTIVE (%d rows); committed %s; streaming resumes from the cut",
                    arn,
                    result.job_name,
                    result.rows,
                    offsets_to_json(result.committed),
                )
                self.source.release(tps, seek_to=cut)
        except asyncio.CancelledError:
            # Shutdown or revocation: nothing committed past the range; whoever reads these partitions next holds
            # the dataset while a job of it runs, then streams from the committed offset.
            self.source.held -= tps
            raise
        except Exception as exc:
            log.error(
                "%s: catch-up failed (%s: %s); the range goes back to the streaming path", arn, type(exc).__name__, exc
            )
            self._failed(arn, f"{type(exc).__name__}: {exc}")
            if start:
                self.source.release(tps, seek_to=start)
            else:
                self.source.release(tps)
        finally:
            self._switch_state.pop(arn, None)
            self.metrics.in_bulk.dec()
            self.metrics.bulk_seconds.inc(self._clock() - started)
            # Dispatching reopens only after the control plane says no job of the dataset runs (another replica's
            # may have started meanwhile): the next check, within half a second.
            self._unchecked.add(arn)

    def _failed(self, arn: str, reason: str) -> None:
        self.metrics.jobs.labels(JobStatus.FAILED.value).inc()
        self._backoff_until[arn] = self._clock() + max(FAILED_BACKOFF_S, self.settings.bulk.catch_up_after_s)
        log.error(
            "%s: import CREATE FAILED: %s; nothing committed, the records go back to the streaming path "
            "(no new switch for %.0f s)",
            arn,
            reason,
            max(FAILED_BACKOFF_S, self.settings.bulk.catch_up_after_s),
        )

    async def _cut(self, tps: set[TopicPartition]) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        """(cut, start) per partition: the fetch high watermark, and the committed offset (or the earliest)."""
        consumer = self.source.consumer
        cut, start = {}, {}
        for tp in tps:
            ktp = KafkaTP(tp.topic, tp.partition)
            committed = self.pipeline.tracker.last_committed(tp)
            if committed is None:
                committed = await consumer.committed(ktp)
            if committed is None:
                committed = (await consumer.beginning_offsets([ktp]))[ktp]
            high = consumer.highwater(ktp)
            start[tp] = int(committed)
            cut[tp] = max(int(high if high is not None else committed), int(committed))
        return cut, start

    async def _commit_cut(self, offsets: dict[TopicPartition, int]) -> None:
        owned = {tp: o for tp, o in offsets.items() if tp in self.source.assignment()}
        if not owned:
            return  # revoked meanwhile: the next owner reads the range again (after the job, being held)
        try:
            async with asyncio.timeout(self.settings.kafka.commit_timeout_s):
                await self.source.consumer.commit({KafkaTP(tp.topic, tp.partition): o for tp, o in owned.items()})
        except (KafkaError, TimeoutError) as exc:
            log.warning("committing the cut %s failed (%s); the range may be read again", offsets_to_json(owned), exc)
            return
        self.pipeline.tracker.committed(owned)


def _reader(settings: Settings) -> AIOKafkaConsumer:
    k = settings.kafka
    return AIOKafkaConsumer(
        bootstrap_servers=k.bootstrap_servers,
        group_id=None,
        client_id=f"{k.client_id}-catch-up",
        enable_auto_commit=False,
        max_partition_fetch_bytes=k.max_partition_fetch_bytes,
        fetch_max_bytes=min(k.fetch_max_bytes, READER_FETCH_MAX_BYTES),  # it runs next to the service's consumer
        request_timeout_ms=k.request_timeout_ms,
        **kafka_security_kwargs(settings),
    )


@contextlib.asynccontextmanager
async def catch_up(
    settings: Settings,
    pipeline: Pipeline,
    source: KafkaSource,
    dlq_producer: Producer,
    metrics: BulkMetrics,
) -> Any:
    """The catch-up with its clients; start-up checks raise ConfigError naming the key (bucket, control plane)."""
    settings.bulk.require()
    async with contextlib.AsyncExitStack() as stack:
        s3 = await stack.enter_async_context(s3_client(settings))
        await check_bucket(s3, settings)
        control = await stack.enter_async_context(control_plane(settings))
        await control.probe(settings.routes[0].dataset_arn)
        helper = CatchUp(settings, pipeline, source, control, s3, dlq_producer, metrics)
        try:
            yield helper
        finally:
            await helper.aclose()


__all__ = ["Backlog", "BulkMetrics", "CatchUp", "catch_up", "jobs_of"]
