"""``ingestor import``: a one-shot backfill of an offset range through a dataset import job.

For each dataset of the configured routes (or of ``--topic``):

1. the range: from the group's committed offsets (or the earliest) to the fetch high watermark seen at start
   (not ``end_offsets()``, which some brokers answer wrongly);
2. a deterministic job name from the dataset and the range's start: if a job of that name is running or ACTIVE
   (a re-run after a crash), the range staged then (``manifest.json`` next to the CSV) is the one waited for and
   committed — nothing is imported twice;
3. read the range; decode + validate with the streaming path's own rules (``intake.prepare``); invalid records go to
   the dead-letter topic with the same headers; the newest record per id goes to the on-disk store;
4. stage the CSV to ``bulk.s3_uri`` (multipart upload) and the manifest, create the job (``--mode auto``:
   INCREMENTAL when the dataset already had an ACTIVE import, else FULL), wait for it;
5. ACTIVE → commit the range's end offsets; CREATE FAILED → show the reason, commit nothing, exit 4.

Stop ``ingestor run`` for the group first: the import commits the group's offsets itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aioboto3
from aiobotocore.config import AioConfig
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import TopicPartition as KafkaTP
from aiokafka.errors import KafkaError

from ingestor.avro import AvroDecoder
from ingestor.bulk.staging import CsvRenderer, StagingProgress, split_s3_uri, stage_to_file, stage_to_s3
from ingestor.bulk.store import LatestStore
from ingestor.config import Route, Settings
from ingestor.control import ImportBusy, ImportJob, ImportJobs, ImportMode, JobNameTaken, JobStatus, control_plane
from ingestor.deadletter import DeadLetterQueue, Producer
from ingestor.errors import ConfigError, FatalRouteError, IngestorError
from ingestor.intake import Delete, Rejected, Upsert, prepare
from ingestor.kafka_auth import kafka_security_kwargs
from ingestor.metrics import Metrics
from ingestor.model import SourceRecord, TopicPartition
from ingestor.schema import DatasetSchema
from ingestor.schema_cache import SchemaPending, WriterSchemas
from ingestor.schema_source import resolve_schemas

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_FATAL, EXIT_JOB_FAILED = 0, 1, 2, 3, 4
MANIFEST = "manifest.json"
_NAME_CHARS = re.compile(r"[^a-zA-Z0-9\-_]")


class ImportFailed(IngestorError):
    """The import job ended CREATE FAILED (or never finished); nothing was committed."""


# ---------------------------------------------------------------------- the plan of one dataset


@dataclass
class DatasetRange:
    """One dataset's routes and offset range: [start, end) per partition."""

    dataset_arn: str
    routes: list[Route]
    schema: DatasetSchema
    start: dict[TopicPartition, int] = field(default_factory=dict)
    end: dict[TopicPartition, int] = field(default_factory=dict)

    @property
    def records(self) -> int:
        return sum(max(0, self.end[tp] - self.start[tp]) for tp in self.end)


def job_base_name(dataset_arn: str, start: dict[TopicPartition, int]) -> str:
    """A job name derived from the dataset and where the range starts: at most 58 of the 63 characters allowed,
    leaving room for an attempt suffix (``-2``... after failed attempts)."""
    _, _, rest = dataset_arn.partition(":dataset/")
    label = _NAME_CHARS.sub("-", rest.replace("/", "-"))[:32].strip("-_") or "dataset"
    spec = dataset_arn + "|" + ",".join(f"{tp.topic}/{tp.partition}@{o}" for tp, o in sorted(start.items(), key=_k))
    digest = hashlib.sha256(spec.encode()).hexdigest()[:16]
    return f"ingestor-{label}-{digest}"


def _k(item: tuple[TopicPartition, int]) -> tuple[str, int]:
    return (item[0].topic, item[0].partition)


def job_attempt_name(base: str, attempt: int) -> str:
    return base if attempt <= 1 else f"{base}-{attempt}"


def jobs_of(base: str, jobs: list[ImportJob]) -> list[ImportJob]:
    """The jobs created for this range (base name, or base-N after failed attempts)."""
    return [j for j in jobs if j.name == base or re.fullmatch(re.escape(base) + r"-\d+", j.name)]


def offsets_to_json(offsets: dict[TopicPartition, int]) -> dict[str, int]:
    return {f"{tp.topic}/{tp.partition}": o for tp, o in sorted(offsets.items(), key=_k)}


def offsets_from_json(data: dict[str, int]) -> dict[TopicPartition, int]:
    out = {}
    for key, offset in data.items():
        topic, _, partition = key.rpartition("/")
        out[TopicPartition(topic, int(partition))] = int(offset)
    return out


# ---------------------------------------------------------------------- progress on a terminal or in the log


class Progress:
    """One refreshing line with a bar on a terminal; a log line every ``every_s`` otherwise."""

    def __init__(self, out: TextIO | None = None, every_s: float = 5.0, *, tty: bool | None = None) -> None:
        self.out = out or sys.stderr
        self.tty = self.out.isatty() if tty is None else tty
        self.every_s = every_s
        self._last = 0.0
        self._started = time.monotonic()
        self._open_line = False

    def update(self, text: str, fraction: float | None = None, *, force: bool = False) -> None:
        elapsed = time.monotonic() - self._started
        line = f"[{elapsed:7.1f}s] {text}"
        if self.tty:
            if fraction is not None:
                filled = int(max(0.0, min(1.0, fraction)) * 24)
                line = f"{line} [{'#' * filled}{'.' * (24 - filled)}] {fraction:4.0%}"
            self.out.write("\r\x1b[2K" + line)
            self.out.flush()
            self._open_line = True
            return
        now = time.monotonic()
        if force or now - self._last >= self.every_s:
            self._last = now
            log.info("%s", line)

    def done(self, text: str) -> None:
        if self.tty and self._open_line:
            self.out.write("\n")
            self._open_line = False
        self.update(text, force=True)
        if self.tty:
            self.out.write("\n")
            self.out.flush()
            self._open_line = False


# ---------------------------------------------------------------------- the import of one dataset


@dataclass
class ImportResult:
    dataset_arn: str
    outcome: str  # imported | already-imported | nothing-to-import | dry-run | failed
    records: int = 0  # read from Kafka
    rows: int = 0  # distinct ids staged
    dead_lettered: int = 0
    deletes: int = 0
    bytes: int = 0
    job_name: str | None = None
    job_arn: str | None = None
    mode: ImportMode | None = None
    failure_reason: str | None = None
    committed: dict[TopicPartition, int] = field(default_factory=dict)
    csv_path: Path | None = None


class Importer:
    """Imports the ranges of a set of routes. Every I/O edge is injected: the consumer (group), the DLQ producer,
    the control plane and the S3 client."""

    def __init__(
        self,
        settings: Settings,
        consumer: Any,
        jobs: ImportJobs | None,
        s3: Any,
        dlq_producer: Producer | None,
        *,
        progress: Progress | None = None,
        metrics: Metrics | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
        commit: Callable[[dict[TopicPartition, int]], Awaitable[None]] | None = None,
        schemas: Mapping[str, DatasetSchema] | None = None,
        writer_schemas: WriterSchemas | None = None,
    ) -> None:
        self.settings = settings
        self._schemas = schemas  # by topic, as resolved at start (ingestor.schema_source); default: the files
        # Avro values decode with writer schemas from the registry, exactly as in streaming; without a registry a
        # WriterSchemas with no source still tells Avro records apart (and dead-letters them with that reason).
        self._writer_schemas = writer_schemas if writer_schemas is not None else WriterSchemas(None)
        self._decoder = AvroDecoder(self._writer_schemas).decode
        self._commit_to = commit  # where the range's end is committed (default: this consumer's group)
        self.consumer = consumer
        self.jobs = jobs
        self.s3 = s3
        self.progress = progress or Progress()
        self._sleep = sleep
        self._dlq = (
            DeadLetterQueue(dlq_producer, settings.kafka.dead_letter_topic, metrics or Metrics())
            if dlq_producer is not None
            else None
        )

    def _schema(self, route: Route) -> DatasetSchema:
        return self._schemas[route.topic] if self._schemas is not None else route.load_schema()

    async def run(
        self, routes: list[Route], mode: str = "auto", *, dry_run: bool = False, output: Path | None = None
    ) -> list[ImportResult]:
        by_dataset: dict[str, list[Route]] = {}
        for route in routes:
            by_dataset.setdefault(route.dataset_arn, []).append(route)
        results = []
        for arn, dataset_routes in by_dataset.items():
            rng = DatasetRange(arn, dataset_routes, self._schema(dataset_routes[0]))
            results.append(await self.import_dataset(rng, mode, dry_run=dry_run, output=output))
        return results

    async def import_dataset(
        self, rng: DatasetRange, mode: str, *, dry_run: bool = False, output: Path | None = None
    ) -> ImportResult:
        tps = await self._partitions(rng.routes)
        rng.start = await self._start_offsets(tps)
        base = job_base_name(rng.dataset_arn, rng.start)
        result = ImportResult(rng.dataset_arn, "imported")
        earlier: list[ImportJob] = []
        if not dry_run:
            assert self.jobs is not None
            earlier = await self.jobs.list_import_jobs(rng.dataset_arn)
            ours = jobs_of(base, earlier)
            found = next((j for j in ours if j.status is JobStatus.ACTIVE), None) or next(
                (j for j in ours if not j.status.finished), None
            )
            if found is not None:  # a re-run after a crash: finish what was started, never import twice
                return await self._resume(rng, base, found, result)
        rng.end = await self._end_offsets(tps, rng.start)
        return await self.import_range(rng, base, mode, earlier, result, dry_run=dry_run, output=output)

    async def import_range(
        self,
        rng: DatasetRange,
        base: str,
        mode: str,
        earlier: list[ImportJob],
        result: ImportResult,
        *,
        dry_run: bool = False,
        output: Path | None = None,
        already_done: Callable[[TopicPartition, int], bool] | None = None,
    ) -> ImportResult:
        """Read [start, end) of ``rng``, stage it, run the job named after ``base`` and commit ``end`` at ACTIVE.

        ``already_done(tp, offset)``: records the streaming path settled before a catch-up switch; an invalid one
        among them is in the dead-letter topic already and is not written there twice."""
        result.records = rng.records
        if rng.records == 0:
            self.progress.done(f"{rng.dataset_arn}: nothing to import (offsets {offsets_to_json(rng.start)})")
            result.outcome = "nothing-to-import"
            return result
        self.consumer.assign([KafkaTP(tp.topic, tp.partition) for tp in rng.end])
        for tp, offset in rng.start.items():
            self.consumer.seek(KafkaTP(tp.topic, tp.partition), offset)
        with LatestStore(self.settings.bulk.work_dir) as store:
            await self._read(rng, store, result, dry_run, already_done)
            result.rows = len(store)
            if dry_run:
                out_dir = output or Path.cwd()
                result.csv_path = out_dir / f"{base}.csv"
                staged = await stage_to_file(result.csv_path, CsvRenderer(rng.schema), store.rows())
                result.bytes, result.outcome = staged.bytes, "dry-run"
                self.progress.done(
                    f"{rng.dataset_arn}: dry run: {result.records} records → {result.rows} rows, "
                    f"{result.dead_lettered} invalid, {result.deletes} deletes skipped; CSV {result.csv_path} "
                    f"({result.bytes} bytes)"
                )
                return result
            if result.rows == 0:  # every record was invalid or a delete: all done without a job
                await self._commit(rng.end)
                result.committed, result.outcome = dict(rng.end), "nothing-to-import"
                self.progress.done(f"{rng.dataset_arn}: no valid upsert in the range; offsets committed")
                return result
            attempt = len(jobs_of(base, earlier)) + 1
            name = job_attempt_name(base, attempt)
            location = await self._stage(rng, base, name, store, result)
        result.job_name = name
        job = await self._create(rng.dataset_arn, name, location, mode)
        result.job_arn = job.arn  # from here on the job exists: its rows land when it finishes
        return await self._finish(rng, job, result)

    # ------------------------------------------------------------------ Kafka side

    async def _partitions(self, routes: list[Route]) -> list[TopicPartition]:
        cluster = await self.consumer._client.fetch_all_metadata()  # every topic, not only the assigned ones
        tps = []
        for route in routes:
            parts = cluster.partitions_for_topic(route.topic)
            if not parts:
                raise ConfigError(f"routes: the topic {route.topic} does not exist on the broker")
            tps += [TopicPartition(route.topic, p) for p in sorted(parts)]
        self.consumer.assign([KafkaTP(tp.topic, tp.partition) for tp in tps])
        return tps

    async def _start_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        start = {}
        for tp in tps:
            ktp = KafkaTP(tp.topic, tp.partition)
            committed = await self.consumer.committed(ktp)
            if committed is None:
                committed = (await self.consumer.beginning_offsets([ktp]))[ktp]
            start[tp] = int(committed)
        return start

    async def _end_offsets(
        self, tps: list[TopicPartition], start: dict[TopicPartition, int]
    ) -> dict[TopicPartition, int]:
        """The fetch high watermark of each partition, seen by one fetch from the range's start."""
        for tp in tps:
            self.consumer.seek(KafkaTP(tp.topic, tp.partition), start[tp])
        end: dict[TopicPartition, int] = {}
        deadline = time.monotonic() + self.settings.kafka.request_timeout_ms / 1000
        while len(end) < len(tps):
            await self.consumer.getmany(timeout_ms=200, max_records=1)  # a fetch; records are re-read later
            for tp in tps:
                hw = self.consumer.highwater(KafkaTP(tp.topic, tp.partition))
                if hw is not None and tp not in end:
                    end[tp] = max(int(hw), start[tp])
            if time.monotonic() > deadline:
                missing = [str(tp) for tp in tps if tp not in end]
                raise IngestorError(f"no fetch answer for {missing}: cannot tell where the range ends")
        for tp in tps:
            self.consumer.seek(KafkaTP(tp.topic, tp.partition), start[tp])
        return end

    async def _prepare(self, rec: SourceRecord, schema: DatasetSchema, fmt: str) -> Upsert | Delete | Rejected:
        """The streaming path's decode → validate; a record whose writer schema is being fetched waits for it."""
        while True:
            try:
                return prepare(rec, schema, fmt, self._decoder)
            except SchemaPending as pending:
                await self._writer_schemas.wait(pending.schema_id)

    async def _read(
        self,
        rng: DatasetRange,
        store: LatestStore,
        result: ImportResult,
        dry_run: bool,
        already_done: Callable[[TopicPartition, int], bool] | None = None,
    ) -> None:
        schema_by_topic = {r.topic: (self._schema(r), r.format) for r in rng.routes}
        todo = {tp for tp in rng.end if rng.end[tp] > rng.start[tp]}
        for tp in rng.end:
            if tp not in todo:
                self.consumer.pause(KafkaTP(tp.topic, tp.partition))
        total, read = rng.records, 0
        dlq_done = 0

        def acked() -> None:
            nonlocal dlq_done
            dlq_done += 1

        while todo:
            batch = await self.consumer.getmany(timeout_ms=500, max_records=self.settings.kafka.fetch_max_records)
            upserts: list[tuple[str, str | None]] = []
            for ktp, records in batch.items():
                tp = TopicPartition(ktp.topic, ktp.partition)
                end = rng.end.get(tp)
                if end is None:
                    continue
                schema, fmt = schema_by_topic[tp.topic]
                for r in records:
                    if r.offset >= end:
                        break
                    read += 1
                    rec = SourceRecord(
                        r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers or ()), r.timestamp
                    )
                    outcome = await self._prepare(rec, schema, fmt)
                    if isinstance(outcome, Upsert):
                        upserts.append((outcome.record_id, outcome.request.get("properties")))
                    elif isinstance(outcome, Delete):
                        result.deletes += 1
                    elif isinstance(outcome, Rejected):
                        result.dead_lettered += 1
                        if already_done is not None and already_done(tp, r.offset):
                            dlq_done += 1  # dead-lettered by the streaming path before the switch
                        elif not dry_run and self._dlq is not None:
                            self._dlq.add(
                                rec, outcome.stage, outcome.reason, outcome.error_class, rng.dataset_arn, acked
                            )
            if upserts:
                await asyncio.to_thread(store.put_many, upserts)
            for tp in list(todo):
                ktp = KafkaTP(tp.topic, tp.partition)
                if await self.consumer.position(ktp) >= rng.end[tp]:
                    todo.discard(tp)
                    self.consumer.pause(ktp)
            self.progress.update(
                f"{rng.dataset_arn}: read {read}/{total} records, {result.dead_lettered} invalid",
                read / total if total else 1.0,
            )
        if self._dlq is not None and not dry_run:
            while dlq_done < result.dead_lettered:  # invariant 2: DLQ acknowledged before any commit
                await self._dlq.flush(self.settings.kafka.dlq_timeout_s)
                await asyncio.sleep(0.01)
        self.progress.done(
            f"{rng.dataset_arn}: read {read} records → {len(store)} ids, {result.dead_lettered} dead-lettered, "
            f"{result.deletes} deletes skipped"
        )

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self._commit_to is not None:
            await self._commit_to(offsets)
            return
        commit = {KafkaTP(tp.topic, tp.partition): o for tp, o in offsets.items()}
        try:
            async with asyncio.timeout(self.settings.kafka.commit_timeout_s):
                await self.consumer.commit(commit)
        except (KafkaError, TimeoutError) as exc:
            raise IngestorError(
                f"the import is ACTIVE but committing {offsets_to_json(offsets)} failed ({exc!r}); "
                "run the import again: it finds the job and commits"
            ) from exc

    # ------------------------------------------------------------------ S3 and the control plane

    async def _stage(self, rng: DatasetRange, base: str, name: str, store: LatestStore, result: ImportResult) -> str:
        bucket, prefix = split_s3_uri(self.settings.bulk.s3_uri or "")
        folder = f"{prefix.rstrip('/')}/{base}" if prefix.strip("/") else base
        dataset_name = rng.dataset_arn.rsplit("/", 1)[-1].lower()
        location = f"s3://{bucket}/{folder}/{dataset_name}.csv"
        progress = StagingProgress()

        def on_part(p: StagingProgress) -> None:
            self.progress.update(
                f"{rng.dataset_arn}: staging {p.rows}/{result.rows} rows, {p.uploaded / 1e6:.1f} MB uploaded",
                p.rows / result.rows if result.rows else 1.0,
            )

        await stage_to_s3(
            self.s3,
            location,
            CsvRenderer(rng.schema),
            store.rows(),
            part_size=self.settings.bulk.part_size_mb * 1024 * 1024,
            progress=progress,
            on_part=on_part,
        )
        result.bytes = progress.uploaded
        manifest = {
            "dataset_arn": rng.dataset_arn,
            "job_name": name,
            "data_location": location,
            "start": offsets_to_json(rng.start),
            "end": offsets_to_json(rng.end),
            "rows": result.rows,
            "records": result.records,
        }
        await self.s3.put_object(
            Bucket=bucket, Key=f"{folder}/{MANIFEST}", Body=json.dumps(manifest, indent=1).encode()
        )
        self.progress.done(f"{rng.dataset_arn}: staged {result.rows} rows ({result.bytes} bytes) at {location}")
        return location

    async def _manifest(self, base: str) -> dict[str, Any]:
        bucket, prefix = split_s3_uri(self.settings.bulk.s3_uri or "")
        folder = f"{prefix.rstrip('/')}/{base}" if prefix.strip("/") else base
        response = await self.s3.get_object(Bucket=bucket, Key=f"{folder}/{MANIFEST}")
        async with response["Body"] as body:
            data: dict[str, Any] = json.loads(await body.read())
        return data

    def _mode(self, mode: str, earlier: list[ImportJob]) -> ImportMode:
        if mode == "full":
            return ImportMode.FULL
        if mode == "incremental":
            return ImportMode.INCREMENTAL
        had_import = any(j.status is JobStatus.ACTIVE for j in earlier)
        return ImportMode.INCREMENTAL if had_import else ImportMode.FULL

    async def _create(self, dataset_arn: str, name: str, location: str, mode: str) -> ImportJob:
        """Create the job, waiting while another import of the dataset runs (ResourceInUse / LimitExceeded).

        In auto mode the job history is read again right before each attempt: an import that became ACTIVE
        meanwhile (another replica's) must make this one INCREMENTAL, or a FULL import would replace its rows. While
        another job of the dataset is still running, no attempt is made: it could turn ACTIVE between the listing and
        the creation, and a FULL decided before it would then replace its rows."""
        assert self.jobs is not None
        role_arn = self.settings.bulk.role_arn or ""
        deadline = time.monotonic() + self.settings.bulk.job_timeout_s

        async def wait_busy(why: str, cause: Exception | None = None) -> None:
            if time.monotonic() > deadline:
                raise ImportFailed(f"{dataset_arn}: could not start an import job: {why}") from cause
            self.progress.update(f"{dataset_arn}: {why}; waiting to start {name}")
            await self._sleep(self.settings.bulk.poll_interval_s)

        while True:
            earlier = await self.jobs.list_import_jobs(dataset_arn) if mode == "auto" else []
            running = next((j for j in earlier if not j.status.finished and j.name != name), None)
            if running is not None:
                await wait_busy(f"import job {running.name} still runs")
                continue
            import_mode = self._mode(mode, earlier)
            try:
                arn = await self.jobs.create_import_job(name, dataset_arn, location, role_arn, import_mode)
                log.info("created import job %s (%s) for %s from %s", name, import_mode.value, dataset_arn, location)
                return ImportJob(arn, name, JobStatus.PENDING, import_mode)
            except JobNameTaken:  # another importer created it in the meantime: wait for that one
                jobs = await self.jobs.list_import_jobs(dataset_arn)
                job = next((j for j in jobs if j.name == name), None)
                if job is None:
                    raise
                return job
            except ImportBusy as exc:
                await wait_busy(f"another import runs ({exc})", exc)

    async def _wait(self, dataset_arn: str, job: ImportJob) -> ImportJob:
        assert self.jobs is not None
        deadline = time.monotonic() + self.settings.bulk.job_timeout_s
        started = time.monotonic()
        while not job.status.finished:
            if time.monotonic() > deadline:
                raise ImportFailed(
                    f"{dataset_arn}: import job {job.name} still {job.status.value} after "
                    f"{self.settings.bulk.job_timeout_s:.0f} s (bulk.job_timeout_s); nothing committed"
                )
            self.progress.update(
                f"{dataset_arn}: import job {job.name} {job.status.value}, waited {time.monotonic() - started:.0f} s"
            )
            await self._sleep(self.settings.bulk.poll_interval_s)
            job = await self.jobs.describe_import_job(job.arn)
        return job

    async def _finish(self, rng: DatasetRange, job: ImportJob, result: ImportResult) -> ImportResult:
        job = await self._wait(rng.dataset_arn, job)
        result.job_name, result.job_arn, result.mode = job.name, job.arn, job.mode
        if job.status is JobStatus.FAILED:
            result.outcome, result.failure_reason = "failed", job.failure_reason or "(no reason given)"
            self.progress.done(
                f"{rng.dataset_arn}: import job {job.name} CREATE FAILED: {result.failure_reason}; nothing committed"
            )
            return result
        await self._commit(rng.end)
        result.committed = dict(rng.end)
        self.progress.done(
            f"{rng.dataset_arn}: import job {job.name} ACTIVE ({job.mode.value}); committed {offsets_to_json(rng.end)}"
        )
        return result

    async def _resume(self, rng: DatasetRange, base: str, job: ImportJob, result: ImportResult) -> ImportResult:
        manifest = await self._manifest(base)
        rng.end = offsets_from_json(manifest["end"])
        result.records, result.rows = int(manifest.get("records", 0)), int(manifest.get("rows", 0))
        result.outcome = "already-imported" if job.status is JobStatus.ACTIVE else "imported"
        self.progress.done(
            f"{rng.dataset_arn}: import job {job.name} for this range is {job.status.value} "
            "(an earlier run); waiting for it instead of importing again"
        )
        return await self._finish(rng, job, result)


# ---------------------------------------------------------------------- wiring and the command


def s3_client(settings: Settings) -> Any:
    p = settings.personalize
    session = aioboto3.Session(
        region_name=p.region,
        aws_access_key_id=p.aws_access_key_id.get_secret_value() if p.aws_access_key_id else None,
        aws_secret_access_key=p.aws_secret_access_key.get_secret_value() if p.aws_secret_access_key else None,
    )
    config = AioConfig(
        s3={"addressing_style": "path"} if settings.bulk.s3_endpoint_url else {},
        retries={"max_attempts": 5, "mode": "standard"},
    )
    return session.client("s3", endpoint_url=settings.bulk.s3_endpoint_url, config=config)


async def check_bucket(s3: Any, settings: Settings) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _ = split_s3_uri(settings.bulk.s3_uri or "")
    try:
        await s3.head_bucket(Bucket=bucket)
    except (BotoCoreError, ClientError) as exc:
        raise ConfigError(
            f"bulk.s3_uri: the bucket {bucket} does not exist or is not accessible ({exc}); "
            "create it or fix INGESTOR_BULK__S3_URI"
        ) from exc


@contextlib.asynccontextmanager
async def _consumer(settings: Settings) -> AsyncIterator[Any]:
    k = settings.kafka
    consumer = AIOKafkaConsumer(
        bootstrap_servers=k.bootstrap_servers,
        group_id=k.group_id,
        client_id=f"{k.client_id}-import",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=k.max_partition_fetch_bytes,
        fetch_max_bytes=k.fetch_max_bytes,
        request_timeout_ms=k.request_timeout_ms,
        **kafka_security_kwargs(settings),
    )
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


@contextlib.asynccontextmanager
async def _producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    k = settings.kafka
    producer = AIOKafkaProducer(
        bootstrap_servers=k.bootstrap_servers,
        client_id=f"{k.client_id}-import-dlq",
        acks="all",
        request_timeout_ms=k.request_timeout_ms,
        **kafka_security_kwargs(settings),
    )
    await producer.start()
    try:
        yield producer
    finally:
        async with asyncio.timeout(k.dlq_timeout_s):
            await producer.stop()


async def run_import(
    settings: Settings,
    routes: list[Route],
    mode: str = "auto",
    *,
    dry_run: bool = False,
    output: Path | None = None,
    progress: Progress | None = None,
) -> list[ImportResult]:
    """The whole command against real Kafka, S3 and control plane (tests call it too)."""
    async with contextlib.AsyncExitStack() as stack:
        consumer = await stack.enter_async_context(_consumer(settings))
        jobs = s3 = producer = None
        control = await stack.enter_async_context(control_plane(settings))
        schemas = None
        if any(r.schema_path is None for r in routes):  # the dataset's live schema (ingestor.schema_source)
            resolved = await resolve_schemas(settings, control, routes=routes)
            schemas = {topic: r.schema for topic, r in resolved.items()}
        if not dry_run:
            settings.bulk.require()
            s3 = await stack.enter_async_context(s3_client(settings))
            await check_bucket(s3, settings)
            await control.probe(routes[0].dataset_arn)
            jobs = control
            producer = await stack.enter_async_context(_producer(settings))
        writer_schemas = WriterSchemas(None)
        if settings.schema_registry is not None:
            from ingestor.registry import RegistryClient

            registry = RegistryClient(settings.schema_registry)
            stack.push_async_callback(registry.close)
            writer_schemas = WriterSchemas(registry, max_size=settings.schema_registry.cache_size)
            stack.push_async_callback(writer_schemas.aclose)
        importer = Importer(
            settings, consumer, jobs, s3, producer, progress=progress, schemas=schemas, writer_schemas=writer_schemas
        )
        return await importer.run(routes, mode, dry_run=dry_run, output=output)
    raise AssertionError("unreachable")  # pragma: no cover - mypy: the exit stack may swallow exceptions


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Backfill through Personalize's bulk path: read each dataset's topics from the group's committed offsets "
        "(or the earliest) to the end, keep the newest valid record per id, stage the CSV in S3 (bulk.s3_uri), run "
        "a dataset import job and commit the offsets once it is ACTIVE. Stop `ingestor run` for the group first. "
        "A re-run after a crash finds the running or finished job instead of importing twice."
    )
    parser.add_argument("--config", default=os.environ.get("INGESTOR_CONFIG"), help="the service's YAML config")
    parser.add_argument(
        "--mode",
        choices=["auto", "incremental", "full"],
        default="auto",
        help="import mode; auto (default): INCREMENTAL if the dataset had an ACTIVE import, else FULL. "
        "FULL replaces every record imported in bulk before",
    )
    parser.add_argument("--topic", action="append", help="only this route's topic (repeat); default: every route")
    parser.add_argument(
        "--dry-run", action="store_true", help="write the CSV locally and report counts; no DLQ, job or commit"
    )
    parser.add_argument("--output", type=Path, help="with --dry-run: the folder for the CSV (default: here)")


def main(args: argparse.Namespace) -> int:
    from ingestor.logs import configure_logging

    try:
        settings = Settings.load(args.config)
        routes = [r for r in settings.routes if r.kind != "interactions"]  # events: PutEvents only, never coalesced
        if args.topic:
            unknown = set(args.topic) - {r.topic for r in routes}
            if unknown:
                raise ConfigError(
                    f"--topic {sorted(unknown)}: no items or users route reads this topic "
                    "(interactions routes stream only)"
                )
            routes = [r for r in routes if r.topic in args.topic]
        deleting = [r.topic for r in routes if r.on_delete == "delete"]
        if deleting and not args.dry_run:  # an import skips deletes: committing them here would lose them
            raise ConfigError(
                f"routes {deleting} have on_delete: delete, and an import job cannot delete users: stream them "
                "with `ingestor run`, or leave them out with --topic"
            )
        if not args.dry_run:
            settings.bulk.require()
    except ConfigError as exc:
        print(f"ingestor import: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.logging.level, settings.logging.format)
    try:
        results = asyncio.run(run_import(settings, routes, args.mode, dry_run=args.dry_run, output=args.output))
    except ConfigError as exc:
        print(f"ingestor import: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except FatalRouteError as exc:
        print(f"ingestor import: {exc}", file=sys.stderr)
        return EXIT_FATAL
    except ImportFailed as exc:
        print(f"ingestor import: {exc}", file=sys.stderr)
        return EXIT_JOB_FAILED
    except IngestorError as exc:
        print(f"ingestor import: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    failed = [r for r in results if r.outcome == "failed"]
    for r in failed:
        print(f"ingestor import: {r.dataset_arn}: job {r.job_name} CREATE FAILED: {r.failure_reason}", file=sys.stderr)
    return EXIT_JOB_FAILED if failed else EXIT_OK
