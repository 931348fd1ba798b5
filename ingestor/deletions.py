"""User deletions: deletes of a users route with ``on_delete: delete`` become data deletion jobs.

Personalize cannot delete through PutUsers; CreateDataDeletionJob takes a CSV of USER_IDs in S3 and removes those
users from the dataset group **when the job completes**. Per users dataset, :class:`DeletionPath`:

1. **collects** deletes (tombstones, Debezium ``op: d``) until ``deletions.max_ids`` ids or ``deletions.max_wait_s``
   since the oldest one (or a drain);
2. waits until no older update of those ids is buffered or in flight (they are sent first: the job removes them);
3. **stages** the ids as a CSV (header ``USER_ID``) under ``bulk.s3_uri``/deletions/ and **creates the job**, named
   deterministically from the dataset and the deletes' offsets (a re-run after a crash finds the job it created:
   ResourceAlreadyExistsException → that job); once created, the deletes' offsets are done (committed);
4. **holds newer updates** of those ids — from the first delete until the job is COMPLETED (or given up) — and then
   hands them to the buffer in order, so the job cannot wipe a user created again after its delete (invariant 8).
   An update followed by another delete of the same id while held is superseded: done with that delete's job.
5. polls the job; FAILED → submitted again (``-2``, ``-3``... up to ``deletions.max_attempts``), then given up loudly
   (error log naming the CSV, ``ingestor_deletion_jobs_total{status="FAILED"}``) and the held updates go on.

What survives a crash: offsets of deletes are committed only after their job exists in Personalize; a crash before
that re-reads them and creates the same job name (found if it exists). Held updates are not committed, so they are
re-read. The job itself is the durable record: at start and after every rebalance the dataset is held wholesale
while any deletion job of its dataset group that this member did not create is PENDING or IN_PROGRESS (its ids are
not known here), so no re-read update can land before it completes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client import Counter as PromCounter

from ingestor.batcher import DatasetBuffer, Pending
from ingestor.bulk.staging import CsvRenderer, stage_to_s3
from ingestor.config import Settings
from ingestor.control import DeletionJob, DeletionJobs, DeletionStatus, ImportBusy, JobNameTaken, dataset_group_arn
from ingestor.errors import IngestorError
from ingestor.model import SourceRecord, TopicPartition
from ingestor.offsets import OffsetTracker
from ingestor.pipeline import Dataset
from ingestor.schema import DatasetKind, DatasetSchema

log = logging.getLogger(__name__)

_NAME_CHARS = re.compile(r"[^a-zA-Z0-9\-_]")
SETTLE_POLL_S = 0.05  # how often the buffer is checked for older updates of ids about to be deleted


class DeletionMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.jobs = PromCounter(
            "ingestor_deletion_jobs_total",
            "Data deletion jobs finished, by final status.",
            ["status"],
            registry=registry,
        )
        self.ids = PromCounter(
            "ingestor_deletion_ids_total", "User ids submitted in data deletion jobs.", registry=registry
        )
        self.held = Gauge(
            "ingestor_deletion_held_records",
            "Updates held until a deletion job of their id completes.",
            registry=registry,
        )


@dataclass(frozen=True, slots=True)
class _Mark:
    tp: TopicPartition
    offset: int
    epoch: int
    record_id: str | None  # the deleted id; None: an update superseded by a later delete


@dataclass(eq=False)
class _Batch:
    ids: list[str]
    marks: list[_Mark]
    name: str
    job_arn: str | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)


def job_name(dataset_arn: str, marks: list[_Mark]) -> str:
    """``ingestor-del-<group-name>-<digest of the deletes' offsets>``: at most 58 of the 63 characters allowed."""
    _, _, rest = dataset_arn.partition(":dataset/")
    label = _NAME_CHARS.sub("-", rest.replace("/", "-"))[:28].strip("-_") or "users"
    spec = dataset_arn + "|" + ",".join(f"{m.tp.topic}/{m.tp.partition}@{m.offset}" for m in marks)
    return f"ingestor-del-{label}-{hashlib.sha256(spec.encode()).hexdigest()[:16]}"


class DeletionPath:
    """The deletes of one users dataset: collect, submit as data deletion jobs, hold newer updates meanwhile."""

    def __init__(
        self,
        settings: Settings,
        dataset: Dataset,
        tracker: OffsetTracker,
        jobs: DeletionJobs,
        s3: Any,
        metrics: DeletionMetrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        s3_uri, role_arn = settings.bulk.require()
        self.settings = settings
        self.ds = dataset
        self.arn = dataset.target.dataset_arn
        self.group_arn = dataset_group_arn(self.arn)
        self._prefix = s3_uri.rstrip("/") + "/deletions/"
        self._role_arn = role_arn
        self._tracker = tracker
        self._jobs = jobs
        self._s3 = s3
        self.metrics = metrics
        self._clock = clock
        self._marks: list[_Mark] = []  # collected, not yet submitted
        self._collecting: dict[str, None] = {}  # the ids of the collected deletes, in order
        self._first_at: float | None = None
        self._submitted: Counter[str] = Counter()  # ids in batches whose job has not completed
        self._batches: set[_Batch] = set()
        self._parked: dict[str, list[Pending]] = {}
        self._parked_count = 0
        self._flush = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._check: asyncio.Task[None] | None = None
        self.foreign_held = False
        self._stalled: str | None = None
        self.renderer = CsvRenderer(DatasetSchema(DatasetKind.USERS, ()))  # one column: USER_ID

    # ------------------------------------------------------------------ the pipeline's side (synchronous)

    def delete(self, rec: SourceRecord, record_id: str, epoch: int) -> None:
        """A delete of ``record_id``: collected; updates of it held since an earlier delete are superseded by it."""
        for p in self._parked.pop(record_id, []):
            self._parked_count -= 1
            self._marks.append(_Mark(p.source.tp, p.source.offset, p.epoch, None))
        self._marks.append(_Mark(rec.tp, rec.offset, epoch, record_id))
        self._collecting.setdefault(record_id, None)
        if self._first_at is None:
            self._first_at = self._clock()
            self._wake.set()  # the loop starts timing max_wait_s
        elif len(self._collecting) >= self.settings.deletions.max_ids:
            self._wake.set()
        self.metrics.held.set(self._parked_count)

    def hold(self, pending: Pending) -> bool:
        """Park an update of an id being deleted (True), until the deletion job of that id completes."""
        record_id = pending.record_id
        if record_id not in self._collecting and not self._submitted[record_id]:
            return False
        self._parked.setdefault(record_id, []).append(pending)
        self._parked_count += 1
        self.metrics.held.set(self._parked_count)
        return True

    @property
    def held(self) -> int:
        """Updates parked until a deletion job completes (not done until then; re-read after a restart)."""
        return self._parked_count

    @property
    def waiting(self) -> bool:
        """Updates wait for a deletion job (the commit may not advance meanwhile, and that is expected)."""
        return self._parked_count > 0 or self.foreign_held

    def flush(self) -> None:
        """Submit what is collected now (drain)."""
        self._flush = True
        self._wake.set()

    # ------------------------------------------------------------------ rebalance

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Hold the dataset until the control plane says no deletion job of another member runs (synchronous)."""
        self.ds.deletions_open.clear()
        if self._check is not None:
            self._check.cancel()
        self._check = asyncio.create_task(self._wait_foreign(), name=f"deletion jobs of {self.group_arn}")

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Forget collected deletes and held updates of revoked partitions (the next owner reads them again);
        a batch touching them whose job is not created yet is abandoned (no job of theirs may start later)."""
        requeue: list[_Mark] = []
        for batch in list(self._batches):
            if batch.job_arn is None and batch.task is not None and any(m.tp in revoked for m in batch.marks):
                log.info("%s: partitions revoked before deletion job %s was created: abandoned", self.arn, batch.name)
                batch.task.cancel()
                await asyncio.gather(batch.task, return_exceptions=True)
                requeue += batch.marks  # the deletes of partitions still owned go into the next job
        self._marks = [m for m in requeue + self._marks if m.tp not in revoked]
        self._collecting = {m.record_id: None for m in self._marks if m.record_id is not None}
        if not self._marks:
            self._first_at = None
        elif self._first_at is None:
            self._first_at = self._clock()
            self._wake.set()
        for record_id in list(self._parked):
            keep = [p for p in self._parked[record_id] if p.source.tp not in revoked]
            self._parked_count -= len(self._parked[record_id]) - len(keep)
            if keep:
                self._parked[record_id] = keep
            else:
                del self._parked[record_id]
        self._release()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"deletions {self.arn}")

    async def aclose(self) -> None:
        tasks = [t for t in (self._task, self._check, *(b.task for b in self._batches)) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self) -> None:
        max_wait = self.settings.deletions.max_wait_s
        while True:
            if self._marks and self._first_at is not None:
                due = self._first_at + max_wait - self._clock()
                if self._flush or due <= 0 or len(self._collecting) >= self.settings.deletions.max_ids:
                    self._submit()
                    continue
                timeout: float | None = due
            else:
                timeout = None
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    def _submit(self) -> None:
        marks, ids = self._marks, list(self._collecting)
        self._marks, self._collecting, self._first_at, self._flush = [], {}, None, False
        if not ids:  # only superseded updates left (their delete was revoked): nothing to delete
            return
        batch = _Batch(ids, marks, job_name(self.arn, marks))
        self._submitted.update(ids)
        self._batches.add(batch)
        batch.task = asyncio.create_task(self._run(batch), name=f"deletion job {batch.name}")
        batch.task.add_done_callback(lambda t: self._finished(batch, t))

    def _finished(self, batch: _Batch, task: asyncio.Task[None]) -> None:
        self._batches.discard(batch)
        self._submitted.subtract(batch.ids)
        self._submitted = +self._submitted  # drop zero counts
        if task.cancelled() and batch.job_arn is None:
            pass  # abandoned on revocation: the new owner re-reads these deletes
        elif not task.cancelled() and task.exception() is not None:
            log.error("deletion job %s: %r", batch.name, task.exception(), exc_info=task.exception())
        self._release()

    def _release(self) -> None:
        """Hand held updates of ids no longer being deleted to the buffer, oldest first."""
        now = self._clock()
        released = False
        for record_id in list(self._parked):
            if record_id in self._collecting or self._submitted[record_id]:
                continue
            for p in self._parked.pop(record_id):
                self._parked_count -= 1
                self.ds.buffer.add(p, now)
                released = True
        self._submitted = +self._submitted
        self.metrics.held.set(self._parked_count)
        if released:
            self.ds.wake.set()

    # ------------------------------------------------------------------ one job

    async def _run(self, batch: _Batch) -> None:
        d = self.settings.deletions
        buffer = self.ds.buffer
        assert isinstance(buffer, DatasetBuffer)  # deletions are for users routes, which coalesce by id
        while any(buffer.versions_of(i) for i in batch.ids):  # noqa: ASYNC110 - buffer state, no event
            await asyncio.sleep(SETTLE_POLL_S)
        location = f"{self._prefix}{batch.name}.csv"
        await self._retrying(lambda: self._stage(batch, location), f"staging {location}")
        attempt = 1
        while True:
            name = batch.name if attempt == 1 else f"{batch.name}-{attempt}"
            arn: str = await self._retrying(functools.partial(self._create, name, location), f"creating job {name}")
            if batch.job_arn is None:
                batch.job_arn = arn
                for m in batch.marks:  # the job exists in Personalize: the deletes are durable
                    self._tracker.done(m.tp, m.offset, m.epoch)
                self.metrics.ids.inc(len(batch.ids))
                log.info("%s: %d user(s) to delete: job %s (%s)", self.arn, len(batch.ids), name, location)
            describe = functools.partial(self._jobs.describe_deletion_job, arn)
            job: DeletionJob = await self._retrying(describe, f"describing {name}")
            while not job.status.finished:
                await asyncio.sleep(d.poll_interval_s)
                job = await self._retrying(describe, f"describing {name}")
            self.metrics.jobs.labels(job.status.value).inc()
            if job.status is DeletionStatus.COMPLETED:
                log.info("%s: deletion job %s COMPLETED (%s users removed)", self.arn, name, job.num_deleted)
                return
            if attempt >= d.max_attempts:
                log.error(
                    "%s: deletion job %s FAILED (%s) after %d attempts: these users are NOT deleted; submit %s "
                    "again by hand (CreateDataDeletionJob). Held updates of them go on now",
                    self.arn,
                    name,
                    job.failure_reason,
                    attempt,
                    location,
                )
                return
            log.warning("%s: deletion job %s FAILED (%s): submitting it again", self.arn, name, job.failure_reason)
            attempt += 1

    async def _stage(self, batch: _Batch, location: str) -> None:
        await stage_to_s3(self._s3, location, self.renderer, iter([(i, None) for i in batch.ids]))

    async def _create(self, name: str, location: str) -> str:
        try:
            return await self._jobs.create_deletion_job(name, self.group_arn, location, self._role_arn)
        except JobNameTaken:  # created before a crash or a revocation: that job is ours
            for job in await self._jobs.list_deletion_jobs(self.group_arn):
                if job.name == name:
                    return job.arn
            raise

    async def _retrying(self, call: Callable[[], Any], what: str) -> Any:
        """Control-plane and S3 calls are retried until they succeed (the records stay uncommitted meanwhile)."""
        delay = 1.0
        while True:
            try:
                result = await call()
            except ImportBusy as exc:  # LimitExceeded / ResourceInUse: too many jobs at once; wait, still healthy
                log.info("%s: %s must wait (%s); retrying in %.0fs", self.arn, what, exc, delay)
            except IngestorError as exc:
                log.warning("%s: %s failed (%s); retrying in %.0fs", self.arn, what, exc, delay)
                self.ds.stalled = self._stalled = f"{what}: {exc}"  # not ready while it fails
            else:
                if self._stalled is not None and self.ds.stalled == self._stalled:
                    self.ds.stalled = None
                self._stalled = None
                return result
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.deletions.poll_interval_s * 3)

    # ------------------------------------------------------------------ jobs of other members (or a crashed run)

    async def _wait_foreign(self) -> None:
        announced = False
        while True:
            try:
                jobs = await self._jobs.list_deletion_jobs(self.group_arn)
            except IngestorError as exc:
                log.warning("%s: cannot list deletion jobs (%s); streaming stays held", self.group_arn, exc)
                await asyncio.sleep(self.settings.deletions.poll_interval_s)
                continue
            ours = {b.job_arn for b in self._batches}
            running = [j for j in jobs if not j.status.finished and j.arn not in ours]
            if not running:
                break
            if not announced:
                log.info(
                    "%s: deletion job %s is %s: holding the dataset's updates until it completes",
                    self.arn,
                    running[0].name,
                    running[0].status.value,
                )
                announced = True
            self.foreign_held = True
            await asyncio.sleep(self.settings.deletions.poll_interval_s)
        if announced:
            log.info("%s: no other deletion job runs any more: updates go on", self.arn)
        self.foreign_held = False
        self.ds.deletions_open.set()
