"""The record's journey after the fetch: decode → validate → buffer → send → done (or dead-lettered).

``Pipeline.ingest`` is the synchronous hot path for one fetched record. One dispatcher task per dataset forms calls
from its buffer, paced by the dataset group's rate limiter and the global in-flight semaphore. Every outcome ends as
a done mark in the offset tracker, which is all the commit loop looks at.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from ingestor.avro import AvroDecoder
from ingestor.batcher import DatasetBuffer, Pending
from ingestor.config import DEFAULT_RATE_LIMITS, Route, Settings
from ingestor.deadletter import DeadLetterQueue, Producer
from ingestor.errors import DeliveryError, FatalRouteError, RecordError
from ingestor.event_buffer import EventBuffer
from ingestor.events import EventBuilder, decode_event
from ingestor.hold import HeldRecords
from ingestor.intake import Delete, Rejected, prepare
from ingestor.metrics import Metrics
from ingestor.model import Op, SourceRecord, TopicPartition
from ingestor.offsets import OffsetTracker
from ingestor.ratelimit import RateLimiter
from ingestor.schema import DatasetSchema
from ingestor.schema_cache import SchemaPending, SchemaSource, WriterSchemas
from ingestor.sender import FatalBatchError, Outcome, RetriesExhausted, Sender, Slot, Target

log = logging.getLogger(__name__)

FATAL_REMINDER_S = 600.0  # a held dataset whose probe calls keep failing: one WARNING at most this often


@dataclass(eq=False)
class Dataset:
    """Everything one dataset ARN needs; routes (topics) feeding the same dataset share it."""

    target: Target
    buffer: DatasetBuffer | EventBuffer
    limiter: RateLimiter
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    fatal: FatalRouteError | None = None  # held (on_fatal: hold) or stopped (stop) by this error: not ready
    resume_at: float = 0.0  # after a spent retry budget (block mode), or held: no call before this time
    probing: bool = False  # held: its one probe call is in flight
    held_since: float = 0.0  # held: when the fatal error came
    probes_failed: int = 0  # held: probe calls that failed since then
    remind_at: float = 0.0  # held: the next "still held" WARNING, at the earliest
    stalled: str | None = None  # why the retry budget ran out (block mode) until a call succeeds again: not ready
    open: asyncio.Event = field(default_factory=lambda: _opened())  # cleared: bulk catch-up holds this dataset
    deletions: DeletionSink | None = None  # on_delete: delete (ingestor.deletions.DeletionPath)
    deletions_open: asyncio.Event = field(default_factory=lambda: _opened())  # cleared: another deletion job runs


class DeletionSink(Protocol):
    """Where deletes of a users dataset go (on_delete: delete), and which updates wait for a deletion job."""

    def delete(self, rec: SourceRecord, record_id: str, epoch: int) -> None: ...

    def hold(self, pending: Pending) -> bool: ...

    def flush(self) -> None: ...

    @property
    def held(self) -> int: ...


def _opened() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


@dataclass(frozen=True, eq=False)
class _Topic:
    route: Route
    schema: DatasetSchema
    dataset: Dataset
    events: EventBuilder | None = None  # interactions routes: record → PutEvents event


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        sender: Sender,
        dlq_producer: Producer,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        registry: SchemaSource | None = None,
        wall_clock: Callable[[], float] = time.time,
        schemas: Mapping[str, DatasetSchema] | None = None,
        events: Mapping[str, EventBuilder] | None = None,
    ) -> None:
        """``clock`` paces and times out; ``wall_clock`` (Unix time) is compared with Kafka timestamps; ``schemas``:
        each topic's schema as resolved at start (ingestor.schema_source), ``events`` the interactions topics' event
        builders; default: the files."""
        self.settings = settings
        self.metrics = metrics
        self.tracker = OffsetTracker()
        self._sender = sender
        self._clock = clock
        self._wall_clock = wall_clock
        self.dlq = DeadLetterQueue(
            dlq_producer,
            settings.kafka.dead_letter_topic,
            metrics,
            on_task_done=self._check_task,
            timeout_s=settings.kafka.dlq_timeout_s,
        )
        limiters: dict[tuple[str, str], RateLimiter] = {}
        self.limiter_topics: dict[tuple[str, str], list[str]] = {}
        datasets: dict[str, Dataset] = {}
        self._topics: dict[str, _Topic] = {}
        for route in settings.routes:
            key = (route.dataset_group, route.api)
            if key not in limiters:
                limiters[key] = RateLimiter(
                    settings.personalize.rate_limits.get(route.api, DEFAULT_RATE_LIMITS[route.api])
                )
            self.limiter_topics.setdefault(key, []).append(route.topic)
            ds = datasets.get(route.dataset_arn)
            if ds is None:
                ds = datasets[route.dataset_arn] = Dataset(
                    Target(route.api, route.dataset_arn, route.tracking_id),
                    _buffer(route, settings),
                    limiters[key],
                )
            builder = None
            if route.kind == "interactions":
                builder = events[route.topic] if events is not None else route.event_builder()
            schema = schemas[route.topic] if schemas is not None else route.load_schema()
            self._topics[route.topic] = _Topic(route, schema, ds, builder)
        self.limiters = limiters
        self.datasets = list(datasets.values())
        self._hold = settings.personalize.on_fatal == "hold"
        for api in {ds.target.api for ds in self.datasets}:
            metrics.datasets_held.labels(api).set(0)
        self._slots = asyncio.Semaphore(settings.personalize.max_in_flight)
        self._calls: set[asyncio.Task[None]] = set()
        self._dispatchers: list[asyncio.Task[None]] = []
        self._open = asyncio.Event()  # cleared while a revocation holds dispatching
        self._open.set()
        self._flushing = False  # draining: send what is ready without waiting for linger
        self.failure: BaseException | None = None  # a bug: the service must stop loudly
        self.on_failure: Callable[[], None] = lambda: None
        self._registry_owned = None
        reg = settings.schema_registry
        if registry is None and reg is not None:
            from ingestor.registry import RegistryClient

            registry = self._registry_owned = RegistryClient(reg)
        self.schemas = WriterSchemas(
            registry,
            max_size=reg.cache_size if reg else 1000,
            base_delay_s=reg.retry_base_delay_s if reg else 0.5,
            max_delay_s=reg.retry_max_delay_s if reg else 30.0,
            metrics=metrics,
            clock=clock,
        )
        self.schemas.on_resolved = self._release_held
        self._decode = AvroDecoder(self.schemas).decode
        self.held = HeldRecords()  # records waiting for a writer schema, in order per partition
        self.on_rejected: Callable[[str, int], None] = lambda arn, n: None  # InvalidInputException records

    @property
    def topics(self) -> list[str]:
        return list(self._topics)

    def schema_of(self, topic: str) -> DatasetSchema:
        return self._topics[topic].schema

    @property
    def stalled(self) -> str | None:
        return next((ds.stalled for ds in self.datasets if ds.stalled is not None), None)

    @property
    def registry_problem(self) -> str | None:
        """Why records wait for the schema registry (None when none wait, or it answers)."""
        return self.schemas.failing if self.held.count else None

    @property
    def fatal(self) -> FatalRouteError | None:
        return next((ds.fatal for ds in self.datasets if ds.fatal is not None), None)

    @property
    def held_datasets(self) -> list[Dataset]:
        """Datasets held (or stopped) by a fatal error."""
        return [ds for ds in self.datasets if ds.fatal is not None]

    @property
    def waiting_on_fatal(self) -> int:
        """Records buffered (or in flight) for datasets held by a fatal error: never done while the error lasts."""
        return sum(ds.buffer.buffered for ds in self.datasets if ds.fatal is not None)

    def fatal_topics(self) -> set[str]:
        """Topics whose dataset is held by a fatal error: what they fetch can only wait behind the failing records."""
        return {topic for topic, t in self._topics.items() if t.dataset.fatal is not None}

    # ------------------------------------------------------------------ intake (hot path)

    def ingest(self, rec: SourceRecord) -> None:
        epoch = self.tracker.track(rec.tp, rec.offset)
        if self.held.holds(rec.tp) or not self._process(rec, epoch):  # behind, or waiting for, a writer schema
            self.held.hold(rec, epoch)
            self.metrics.waiting_for_schema.set(self.held.count)

    def _release_held(self) -> None:
        try:
            if self.held.count and self.held.release(self._process):
                self.metrics.waiting_for_schema.set(self.held.count)
        except Exception as exc:  # a bug: stop loudly, as for the pipeline's own tasks
            log.error("releasing records held for a schema failed: %r", exc, exc_info=exc)
            if self.failure is None:
                self.failure = exc
                self.on_failure()

    def _process(self, rec: SourceRecord, epoch: int) -> bool:
        """Decode → validate → buffer (or DLQ). False when the record must wait for its writer schema."""
        topic = self._topics[rec.topic]
        if topic.events is not None:
            self._ingest_event(rec, topic, topic.events, epoch)
            return True
        arn = topic.dataset.target.dataset_arn
        try:
            result = prepare(rec, topic.schema, topic.route.format, self._decode)  # the same rules as the bulk path
        except SchemaPending:
            return False
        if isinstance(result, Rejected):
            self._dead_letter(rec, epoch, result.stage, result.reason, result.error_class, arn)
            return True
        ds = topic.dataset
        if isinstance(result, Delete):
            if ds.deletions is not None and result.record_id is not None:
                ds.deletions.delete(rec, result.record_id, epoch)  # done once its deletion job is created
                return True
            # on_delete: skip (or no id): counted, logged at debug, done at once (never holds a commit).
            self.metrics.records_skipped.labels("delete").inc()
            log.debug("skipping delete/tombstone %s (id %s)", rec.where, result.record_id)
            self.tracker.done(rec.tp, rec.offset, epoch)
            return True
        pending = Pending(rec, result.record_id, result.request, epoch=epoch)
        if ds.deletions is not None and ds.deletions.hold(pending):
            return True  # a deletion job of this id has not completed yet (invariant 8)
        if ds.buffer.add(pending, self._clock()):
            self.metrics.records_superseded.labels(ds.target.api).inc()
        ds.wake.set()
        return True

    def _ingest_event(self, rec: SourceRecord, topic: _Topic, builder: EventBuilder, epoch: int) -> None:
        """Interactions: decode → build the PutEvents event → buffer. Every event counts (nothing coalesces)."""
        arn = topic.dataset.target.dataset_arn
        try:
            change = decode_event(rec, topic.route.format)
            if change.op is Op.DELETE:
                self.metrics.records_skipped.labels("delete").inc()  # PutEvents cannot remove an event
                self.tracker.done(rec.tp, rec.offset, epoch)
                return
            pending = builder.build(rec, change, epoch)
        except RecordError as exc:
            reason = str(exc) if str(exc).startswith(rec.where) else f"{rec.where}: {exc}"
            self._dead_letter(rec, epoch, exc.stage, reason, type(exc).__name__, arn)
            return
        except Exception as exc:  # a poison record must never block: DLQ it, loudly
            log.exception("unexpected error decoding or validating event %s", rec.where)
            reason = f"{rec.where}: {type(exc).__name__}: {exc}"
            self._dead_letter(rec, epoch, "validate", reason, type(exc).__name__, arn)
            return
        topic.dataset.buffer.add(pending, self._clock())
        topic.dataset.wake.set()

    def _dead_letter(
        self, rec: SourceRecord, epoch: int, stage: str, reason: str, error_class: str, arn: str | None
    ) -> None:
        self.dlq.add(rec, stage, reason, error_class, arn, lambda: self.tracker.done(rec.tp, rec.offset, epoch))

    @property
    def buffered(self) -> int:
        return self.tracker.pending_total

    # ------------------------------------------------------------------ dispatch

    def start(self) -> None:
        for ds in self.datasets:
            task = asyncio.create_task(self._dispatch(ds), name=f"dispatch {ds.target.dataset_arn}")
            task.add_done_callback(self._check_task)
            self._dispatchers.append(task)

    async def _dispatch(self, ds: Dataset) -> None:
        buf = ds.buffer
        while ds.fatal is None or self._hold:  # on_fatal: stop ends here; hold keeps sending one probe at a time
            await self._open.wait()
            await ds.open.wait()  # held while an import job of this dataset runs (invariant 8)
            await ds.deletions_open.wait()  # ... or a deletion job of another member (ingestor.deletions)
            now = self._clock()
            held = ds.fatal is not None
            due = None if held and ds.probing else buf.due_in(now)  # held: never two probe calls in flight
            if due is not None and ds.resume_at > now:
                due = max(due, ds.resume_at - now)
            # A held dataset keeps to its probe schedule even while draining (no burst of probes at shutdown).
            if due is None or (due > 0 and (held or not self._flushing)):
                ds.wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(due):
                        await ds.wake.wait()
                continue
            # Pace first, then take a slot: a dispatcher waiting for its turn must not hold one of the shared slots
            # (with 40 routes and 16 slots, slots held through 100 ms pacing waits capped the process at ~80 calls/s).
            await ds.limiter.acquire()
            await self._slots.acquire()
            probe = False
            try:
                batch: list[Pending] = []
                if not self._open.is_set():
                    pass
                elif ds.fatal is None:
                    batch = buf.take()
                elif self._hold and not ds.probing and ds.resume_at <= self._clock():  # (held while we waited?)
                    batch, probe = buf.take(), True
            except BaseException:
                self._slots.release()
                raise
            if not batch:
                self._slots.release()
                continue
            if probe:  # the dataset's one probe call: the next one only after it ends and fatal_retry_s more
                ds.probing = True
                ds.resume_at = self._clock() + self.settings.personalize.fatal_retry_s
            task = asyncio.create_task(
                self._call(ds, batch, Slot(self._slots), probe=probe), name=f"call {ds.target.api}"
            )
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)
            task.add_done_callback(self._check_task)

    async def _call(self, ds: Dataset, batch: list[Pending], slot: Slot, *, probe: bool = False) -> None:
        """Send one batch and settle its records. ``probe``: the one call of a held dataset, every fatal_retry_s."""
        buf, api = ds.buffer, ds.target.api
        exhausted: tuple[list[Pending], DeliveryError] | None = None
        fatal: tuple[list[Pending], FatalRouteError] | None = None
        try:
            outcome = await self._sender.send(ds.target, batch, ds.limiter, prepaid=True, slot=slot)
        except FatalRouteError as exc:
            if not self._hold:  # on_fatal: stop
                if ds.fatal is None:
                    ds.fatal = exc
                    self.metrics.fatal_errors.labels(api).inc()
                    self._count_held(api)
                    log.error("fatal: %s; nothing more is sent or committed on this dataset", exc)
                self.on_failure()
                return  # the batch stays in flight: nothing past it is ever committed
            # on_fatal: hold. What a bisected batch settled before the fatal call is recorded as usual; the rest
            # goes back into the buffer (never dead-lettered: the records are fine, the route is not).
            if isinstance(exc, FatalBatchError):
                outcome, fatal = exc.outcome, (exc.failed, exc)
            else:
                outcome, fatal = Outcome(), (list(batch), exc)
        except RetriesExhausted as exc:
            # Part of a bisected batch may be settled already: record that first (an accepted record must never
            # be dead-lettered, nor its older version sent after it), then handle the rest.
            outcome, exhausted = exc.outcome, (exc.failed, exc)
        except asyncio.CancelledError:
            now = self._clock()
            for p in batch:
                buf.released(p, now)
            raise
        finally:
            slot.release()
            if probe:
                ds.probing = False
            ds.wake.set()
        now = self._clock()
        if fatal is not None:
            self._held(ds, fatal[1], now, probe=probe)
        elif probe and ds.fatal is not None and (outcome.accepted or outcome.rejected):
            self._unheld(ds, now)  # an answer from the dataset (even a rejection): the route works again
        if ds.stalled and outcome.accepted:
            log.info("%s calls to %s succeed again", api, ds.target.dataset_arn)
            ds.stalled = None
        self.metrics.records_sent.labels(api).inc(len(outcome.accepted))
        accepted_at, end_to_end = self._wall_clock(), self.metrics.end_to_end.labels(api)
        for p in outcome.accepted:
            if (ts := p.source.timestamp_ms) is not None and ts > 0:  # Kafka says -1 when a record has none
                end_to_end.observe(max(0.0, accepted_at - ts / 1000))
            done = buf.accepted(p, now)
            for d in done:
                self.tracker.done(d.source.tp, d.source.offset, d.epoch)
        if outcome.rejected:
            self.on_rejected(ds.target.dataset_arn, len(outcome.rejected))
        for p, reason in outcome.rejected:
            buf.rejected(p, now)
            reason = f"{p.source.where}: {reason}"
            self._dead_letter(p.source, p.epoch, "api", reason, "InvalidInputException", ds.target.dataset_arn)
        if fatal is not None:
            self._release(ds, fatal[0], now)
        elif exhausted is not None and ds.fatal is not None:
            # Held, and this call (a probe, or one sent before the hold) got transient errors only: nothing is
            # dead-lettered while the dataset is held; the records wait for the next probe.
            if probe:
                self._probe_failed(ds, exhausted[1], now)
            self._release(ds, exhausted[0], now)
        elif exhausted is not None:
            self._exhausted(ds, *exhausted)

    def _held(self, ds: Dataset, exc: FatalRouteError, now: float, *, probe: bool) -> None:
        """on_fatal: hold. The dataset stops sending and committing; the others go on; one probe every
        fatal_retry_s. The error is logged once at ERROR (it names the ARN and what to fix); failed probes are not."""
        retry_s = self.settings.personalize.fatal_retry_s
        if ds.fatal is None:
            ds.fatal = exc
            ds.held_since, ds.probes_failed = now, 0
            ds.remind_at = now + FATAL_REMINDER_S
            ds.resume_at = now + retry_s
            self.metrics.fatal_errors.labels(ds.target.api).inc()
            self._count_held(ds.target.api)
            log.error(
                "fatal: %s; this dataset is held: nothing is sent or committed on it (the other datasets go on) and "
                "the service is not ready; a probe call every %gs resumes it once that is fixed (no restart needed)",
                exc,
                retry_s,
            )
        elif probe:
            if str(exc) != str(ds.fatal):  # another cause now (the dataset was created, access is still denied)
                log.error("fatal: %s; %s stays held", exc, ds.target.dataset_arn)
            ds.fatal = exc
            self._probe_failed(ds, exc, now)
        # else: another call of the batch of calls that met the same error: reported already

    def _probe_failed(self, ds: Dataset, exc: Exception, now: float) -> None:
        ds.probes_failed += 1
        ds.resume_at = now + self.settings.personalize.fatal_retry_s
        if now >= ds.remind_at:
            ds.remind_at = now + FATAL_REMINDER_S
            log.warning(
                "%s still held after a fatal error, %d probe call(s) failed in %.0fs: %s",
                ds.target.dataset_arn,
                ds.probes_failed,
                now - ds.held_since,
                exc,
            )
        else:
            log.debug("probe call to held dataset %s failed: %s", ds.target.dataset_arn, exc)

    def _unheld(self, ds: Dataset, now: float) -> None:
        log.info(
            "calls to %s succeed again after a fatal error (%s); streaming resumes (held %.0fs, %d failed probes)",
            ds.target.dataset_arn,
            ds.fatal,
            now - ds.held_since,
            ds.probes_failed,
        )
        ds.fatal = None
        ds.resume_at = 0.0
        self._count_held(ds.target.api)

    def _count_held(self, api: str) -> None:
        held = sum(1 for ds in self.datasets if ds.fatal is not None and ds.target.api == api)
        self.metrics.datasets_held.labels(api).set(held)

    @staticmethod
    def _release(ds: Dataset, batch: list[Pending], now: float) -> None:
        """Back into the buffer, sent again later (newest version per id first, as ever); the time held does not
        count against the records' retry budget."""
        for p in batch:
            p.first_attempt = None
            ds.buffer.released(p, now)

    def _exhausted(self, ds: Dataset, batch: list[Pending], exc: DeliveryError) -> None:
        now = self._clock()
        if self.settings.personalize.retry.on_exhausted == "dead_letter":
            for p in batch:
                ds.buffer.rejected(p, now)
                reason = f"{p.source.where}: retries exhausted: {exc}"
                error_class = type(exc.__cause__ or exc).__name__
                self._dead_letter(p.source, p.epoch, "api", reason, error_class, ds.target.dataset_arn)
            return
        if ds.stalled is None:
            log.error(
                "retry budget spent on %s (%s): not committing past these records, still retrying", ds.target.api, exc
            )
        ds.stalled = str(exc)
        ds.resume_at = now + self.settings.personalize.retry.max_delay_s
        for p in batch:  # keep them: they are sent again, paced by the limiter
            ds.buffer.released(p, now)

    def _check_task(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self.failure is None:
            log.error("pipeline task %s failed: %r", task.get_name(), exc, exc_info=exc)
            self.failure = exc
            self.on_failure()

    # ------------------------------------------------------------------ drain, revocation, stop

    async def drain(self, timeout_s: float) -> bool:
        """Send everything buffered now (no linger) and wait until every fetched record is done, within a budget."""
        self._flushing = True
        for ds in self.datasets:
            ds.wake.set()
            if ds.deletions is not None:
                ds.deletions.flush()
        deadline = self._clock() + timeout_s
        while self.tracker.pending_total > 0 and self._clock() < deadline and self.failure is None:
            healthy_idle = all(ds.buffer.buffered == 0 for ds in self.datasets if ds.fatal is None)
            if self.fatal is not None and healthy_idle and self.dlq.pending == 0:
                break  # only the fatal route's records are left: they will never be done
            if self.held.count == self.tracker.pending_total and self.schemas.failing is not None:
                break  # only records waiting for an unavailable schema registry are left
            held = sum(ds.deletions.held for ds in self.datasets if ds.deletions is not None)
            if held and healthy_idle and self.dlq.pending == 0 and self.tracker.pending_total <= held:
                break  # what is left waits for deletion jobs to complete: re-read after the restart
            await asyncio.sleep(0.02)
        self._flushing = False
        return self.tracker.pending_total == 0

    async def revoke(self, partitions: Iterable[TopicPartition], timeout_s: float) -> None:
        """Stop dispatching, drop buffered records of these partitions, wait for in-flight calls and DLQ writes."""
        gone = set(partitions)
        deadline = self._clock() + timeout_s  # one budget for all of it: the group's rebalance timeout is waiting
        self._open.clear()
        try:
            for ds in self.datasets:
                ds.buffer.drop_partitions(gone)
            if self.held.drop(gone):
                self.metrics.waiting_for_schema.set(self.held.count)
            if self._calls:
                _, late = await asyncio.wait(set(self._calls), timeout=max(0.0, deadline - self._clock()))
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
                for ds in self.datasets:
                    ds.buffer.drop_partitions(gone)
            for ds in self.datasets:
                if ds.fatal is not None and self._hold and ds.buffer.buffered == 0:
                    # Nothing of it is left here to probe with: this member holds nothing of it any more. Its next
                    # record here (if any) is sent as usual, and held again if the error is still there.
                    log.info(
                        "%s: no records of this held dataset left after the revocation; not held here any more",
                        ds.target.dataset_arn,
                    )
                    ds.fatal = None
                    ds.resume_at = 0.0
                    self._count_held(ds.target.api)
            await self.dlq.flush(max(0.0, deadline - self._clock()))
        finally:
            self._open.set()

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        self.tracker.drop(set(partitions))

    async def stop(self) -> None:
        tasks = [*self._dispatchers, *self._calls]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._dispatchers.clear()
        await self.dlq.aclose()
        await self.schemas.aclose()
        if self._registry_owned is not None:
            await self._registry_owned.close()


def _buffer(route: Route, settings: Settings) -> DatasetBuffer | EventBuffer:
    """Items and users coalesce by id (latest wins); interactions keep every event."""
    linger_s = settings.batching.linger_ms / 1000
    if route.kind == "interactions":
        return EventBuffer(settings.batching.max_records, linger_s)
    return DatasetBuffer(settings.batching.max_records, linger_s)
