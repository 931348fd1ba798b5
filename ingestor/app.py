"""``ingestor run``: builds the service from its settings, starts and stops it in order, maps outcomes to exit codes.

Start: health server → Personalize client → DLQ producer → pipeline dispatchers → consumer (joins the group).
Stop (SIGTERM/SIGINT, a fatal route with ``personalize.on_fatal: stop``, or a bug): stop fetching → drain buffered
and in-flight work within ``shutdown.drain_budget_s`` → flush the DLQ producer → final commit → leave the group → close
clients. With ``on_fatal: hold`` (the default) a fatal route holds only its dataset and the service runs on, not ready.
Exit codes: 0 after a signal, 3 after a fatal route error (on_fatal: stop) or after a signal while a dataset is still
held by one (on_fatal: hold), 1 after an unexpected failure, 2 for bad configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import aioboto3
from aiobotocore.config import AioConfig
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from ingestor.broker_health import BrokerHealth
from ingestor.bulk.catchup import BulkMetrics, catch_up
from ingestor.config import Settings
from ingestor.control import ControlPlane, control_plane
from ingestor.errors import ConfigError
from ingestor.health import HealthServer
from ingestor.kafka_auth import kafka_security_kwargs
from ingestor.logs import configure_logging
from ingestor.metrics import Metrics
from ingestor.personalize_http import DirectPersonalizeClient
from ingestor.pipeline import Pipeline
from ingestor.quota_bus import KafkaHeartbeatBus, quota_topic
from ingestor.quota_share import Load, QuotaShare, member_id
from ingestor.schema_source import ResolvedSchema, SchemaWatch, report, resolve_schemas
from ingestor.sender import Sender
from ingestor.source import KafkaSource

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_FATAL = 0, 1, 2, 3
SCHEMA_FETCH_TIMEOUT_S = 30.0  # start-up: the datasets' schemas from the control plane
CHECK_TIMEOUT_S = 10.0  # --check-config: the same, for a quick answer
BROKER_PROBE_S = 10.0  # how often the broker is asked for metadata (readiness)
BROKER_STALE_S = 30.0  # /readyz fails when the broker has not answered for this long
COMMIT_STALL_S = 300.0  # /healthz fails when records are pending and no commit advanced for this long
PROGRESS_LOG_S = 60  # one progress line a minute


def personalize_session(settings: Settings) -> Any:
    p = settings.personalize
    return aioboto3.Session(
        region_name=p.region,
        aws_access_key_id=p.aws_access_key_id.get_secret_value() if p.aws_access_key_id else None,
        aws_secret_access_key=p.aws_secret_access_key.get_secret_value() if p.aws_secret_access_key else None,
    )


def personalize_client(settings: Settings, session: Any = None) -> Any:
    """One client for the service's lifetime; botocore does not retry (our retries pass the rate limiter)."""
    p = settings.personalize
    session = session or personalize_session(settings)
    config = AioConfig(
        max_pool_connections=p.max_in_flight,
        retries={"total_max_attempts": 1, "mode": "standard"},  # one attempt: we retry ourselves
        connect_timeout=p.connect_timeout_s,
        read_timeout=p.read_timeout_s,
        # Every record was checked against the dataset's schema already; botocore's own check costs ~4 % of the CPU
        # per call, and a record it refused would be retried as a client error until the budget is spent, where the
        # endpoint's InvalidInputException is bisected down to the bad record and dead-lettered.
        parameter_validation=False,
    )
    return session.client("personalize-events", endpoint_url=p.endpoint_url, config=config)


def reuse_user_agent(client: Any) -> None:
    """Build botocore's User-Agent header once instead of twice per call.

    botocore rebuilds the header from its components (sanitising each one) before and after signing every request:
    ~7 % of the service's CPU at high call rates. For one long-lived client the string never changes, so the first
    one built (inside the first call, with its feature ids) is kept. Private botocore attribute: if it is not there
    (another botocore version), nothing changes.
    """
    creator = getattr(client, "_user_agent_creator", None)
    build = getattr(creator, "to_string", None)
    if not callable(build):
        return
    built: list[str] = []

    def to_string() -> str:
        if not built:
            built.append(build())
        return built[0]

    creator.to_string = to_string  # type: ignore[union-attr]


async def direct_client(settings: Settings, session: Any, client: Any) -> DirectPersonalizeClient:
    """``personalize.http: direct``: the SDK client resolves the endpoint, signing name and credentials chain once."""
    p = settings.personalize
    return DirectPersonalizeClient(
        client.meta.endpoint_url,
        client.meta.region_name,
        await session.get_credentials(),
        signing_name=client.meta.service_model.signing_name,
        max_connections=p.max_in_flight,
        connect_timeout_s=p.connect_timeout_s,
        read_timeout_s=p.read_timeout_s,
        ca_bundle=_ca_bundle(session),
    )


def _ca_bundle(session: Any) -> str | None:
    """botocore's ``ca_bundle`` setting (AWS_CA_BUNDLE, or ca_bundle in the AWS config file), as the SDK client uses."""
    inner = getattr(session, "_session", None)  # aioboto3.Session → its aiobotocore session
    get = getattr(inner, "get_config_variable", None)
    value = get("ca_bundle") if callable(get) else None
    return value if isinstance(value, str) and value else None


class Service:
    def __init__(self, settings: Settings, *, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics(registry)
        self.broker_health = BrokerHealth(self.metrics)
        self.bulk_metrics = BulkMetrics(self.metrics.registry)  # exported (zeros) with catch-up off too
        self.stop_requested = asyncio.Event()
        self.pipeline: Pipeline | None = None
        self.source: KafkaSource | None = None
        self.quota: QuotaShare | None = None
        self.health: HealthServer | None = None
        self._progress_at = time.monotonic()
        self._bulk = contextlib.AsyncExitStack()  # the bulk catch-up's clients, when bulk.catch_up_after_s > 0
        self.catch_up: Any = None
        self._control = contextlib.AsyncExitStack()  # the control plane (schemas, deletion jobs): closed last
        self.schemas: dict[str, ResolvedSchema] = {}
        self.schema_watch: SchemaWatch | None = None
        self._compared: dict[str, ResolvedSchema] | None = None  # schema files vs datasets, once compared at start
        self.deletions: list[Any] = []  # ingestor.deletions.DeletionPath per users dataset with on_delete: delete
        self._background: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ health

    def ready(self) -> str | None:
        if self.pipeline is None or self.source is None:
            return "starting"
        if held := self.pipeline.held_datasets:
            more = f" (and {len(held) - 1} more dataset(s) held)" if len(held) > 1 else ""
            return f"fatal: {held[0].fatal}{more}"
        if self.pipeline.failure is not None:
            return f"failed: {self.pipeline.failure!r}"
        if self.stop_requested.is_set():
            return "stopping"
        if not self.source.joined:
            return "not yet joined the consumer group"
        last = self.source.broker_ok_at
        if last is None or time.monotonic() - last > BROKER_STALE_S:
            return f"the Kafka broker did not answer a metadata request in the last {BROKER_STALE_S:.0f}s"
        if self.pipeline.stalled:
            return f"retry budget spent: {self.pipeline.stalled}"
        if self.pipeline.registry_problem:
            return f"records wait for the schema registry: {self.pipeline.registry_problem}"
        return None

    def live(self) -> str | None:
        if self.pipeline is None:
            return None
        if (
            self.pipeline.buffered <= self.pipeline.waiting_on_fatal  # nothing pending, or only for held datasets
            or any(path.waiting for path in self.deletions)
        ):
            # Updates held for a deletion job, or records of a dataset held by a fatal error: the commit waits, as it
            # should (a held dataset makes the service not ready; a restart would not fix it).
            self._progress_at = time.monotonic()
            return None
        stalled_for = time.monotonic() - self._progress_at
        if stalled_for > COMMIT_STALL_S:
            return f"{self.pipeline.buffered} records pending and no commit advanced for {stalled_for:.0f}s"
        return None

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        log_filter = self.broker_health.install()  # aiokafka's transient connection errors → one summary line
        try:
            return await self._run()
        finally:
            log_filter.uninstall()

    async def _run(self) -> int:
        s = self.settings
        self.health = HealthServer(
            self.metrics.registry, s.metrics.host, s.metrics.port, live=self.live, ready=self.ready
        )
        try:
            await self.health.start()
        except OSError as exc:
            log.error(
                "cannot serve metrics on %s:%d (%s); set metrics.port (INGESTOR_METRICS__PORT) to a free port",
                s.metrics.host,
                s.metrics.port,
                exc.strerror or exc,
            )
            await self.health.stop()
            return EXIT_CONFIG
        self.metrics.ready.set_function(lambda: 1.0 if self.ready() is None else 0.0)
        try:
            session = personalize_session(s)
            async with personalize_client(s, session) as client:
                reuse_user_agent(client)
                try:
                    direct = await direct_client(s, session, client) if s.personalize.http == "direct" else None
                except ConfigError as exc:
                    log.error("%s", exc)
                    return EXIT_CONFIG
                control = await self._control.enter_async_context(control_plane(s))
                if not await self._resolve_schemas(control):  # before Kafka: a bad route fails start-up at once
                    if direct is not None:
                        await direct.aclose()
                    return EXIT_CONFIG
                producer = AIOKafkaProducer(
                    bootstrap_servers=s.kafka.bootstrap_servers,
                    client_id=f"{s.kafka.client_id}-dlq",
                    acks="all",
                    request_timeout_ms=s.kafka.request_timeout_ms,
                    **kafka_security_kwargs(s),
                )
                try:
                    if not await self._start_with_retry(producer.start, "the dead-letter producer"):
                        return EXIT_OK
                    return await self._serve(direct or client, producer, control)
                finally:
                    if direct is not None:
                        await direct.aclose()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(10):
                            await producer.stop()
        finally:
            for task in self._background:
                task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)
            await self._control.aclose()
            await self.health.stop()

    async def _serve(self, client: Any, producer: AIOKafkaProducer, control: ControlPlane) -> int:
        try:
            return await self._serve_with_control(client, producer, control)
        finally:
            for path in self.deletions:
                await path.aclose()
            if self.schema_watch is not None:
                await self.schema_watch.aclose()

    async def _resolve_schemas(self, control: ControlPlane) -> bool:
        """Each route's schema before the pipeline is built (ingestor.schema_source). Routes without a schema file
        wait for the control plane; schema files are compared with the datasets' schemas in the background."""
        s = self.settings
        try:
            if any(r.schema_path is None for r in s.routes):
                self.schemas = await resolve_schemas(s, control, timeout_s=SCHEMA_FETCH_TIMEOUT_S)
                report(self.schemas, s)
                return True
            self.schemas = await resolve_schemas(s, None)
        except ConfigError as exc:
            log.error("%s", exc)
            return False

        async def compare() -> None:
            compared = await resolve_schemas(s, control, timeout_s=SCHEMA_FETCH_TIMEOUT_S)
            report(compared, s)
            self._compared = compared  # the watch may not exist yet: it picks this up when it is built
            if self.schema_watch is not None:
                self.schema_watch.started(compared)

        task = asyncio.create_task(compare(), name="compare schemas")
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return True

    async def _start_deletions(self, control: ControlPlane, pipeline: Pipeline, source: KafkaSource) -> None:
        """A DeletionPath per users dataset with on_delete: delete (ConfigError: the staging bucket is missing)."""
        from ingestor.bulk.importer import check_bucket, s3_client
        from ingestor.deletions import DeletionMetrics, DeletionPath

        s = self.settings
        arns = {r.dataset_arn for r in s.routes if r.on_delete == "delete"}
        if not arns:
            return
        s3 = await self._control.enter_async_context(s3_client(s))
        await check_bucket(s3, s)
        metrics = DeletionMetrics(self.metrics.registry)
        for ds in pipeline.datasets:
            if ds.target.dataset_arn in arns:
                path = DeletionPath(s, ds, pipeline.tracker, control, s3, metrics)
                ds.deletions = path
                ds.deletions_open.clear()  # until the control plane says no other deletion job of the group runs
                source.on_assigned_hooks.append(path.on_assigned)
                source.on_revoked_hooks.append(path.on_revoked)
                self.deletions.append(path)

    async def _serve_with_control(self, client: Any, producer: AIOKafkaProducer, control: ControlPlane) -> int:
        s = self.settings
        pipeline = self.pipeline = Pipeline(
            s,
            Sender(client, self.metrics, s.personalize.retry),
            producer,
            self.metrics,
            schemas={topic: r.schema for topic, r in self.schemas.items()},
            events={topic: r.events for topic, r in self.schemas.items() if r.events is not None},
        )
        pipeline.on_failure = self.stop_requested.set
        self.schema_watch = SchemaWatch(control, self.schemas, s)
        if self._compared is not None:  # the comparison at start finished before the pipeline was built
            self.schema_watch.started(self._compared)
        pipeline.on_rejected = self.schema_watch.rejected
        source = self.source = KafkaSource(s, pipeline, self.metrics, broker_health=self.broker_health)
        try:
            await self._start_deletions(control, pipeline, source)
        except ConfigError as exc:
            log.error("%s", exc)
            return EXIT_CONFIG
        if s.bulk.catch_up_after_s > 0:
            try:  # before the consumer joins: datasets are held until the control plane was asked
                self.catch_up = await self._bulk.enter_async_context(
                    catch_up(s, pipeline, source, producer, self.bulk_metrics)
                )
            except ConfigError as exc:
                log.error("%s", exc)
                await self._bulk.aclose()
                return EXIT_CONFIG
        quota = self.quota = quota_share(s, pipeline, source, self.metrics)
        quota_task = asyncio.create_task(quota.run(), name="quota share") if quota is not None else None
        if quota_task is not None:
            quota_task.add_done_callback(_report_quota_end)
        if not await self._start_with_retry(source.start, "the consumer"):
            await self._stop_quota(quota, quota_task)
            await source.stop()
            return EXIT_OK
        await source.check_broker()
        pipeline.start()
        for path in self.deletions:
            path.start()
        if self.catch_up is not None:
            self.catch_up.start()
        fetch = asyncio.create_task(source.run(), name="fetch")
        commits = asyncio.create_task(self._commit_loop(source), name="commit")
        stop = asyncio.create_task(self.stop_requested.wait(), name="stop")
        log.info("ingestor started: topics %s, group %s", pipeline.topics, s.kafka.group_id)
        try:
            await asyncio.wait({fetch, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            await self._bulk.aclose()  # a running import job stays; a restart holds its dataset until it ends
            source.stop_fetching()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await asyncio.gather(fetch, return_exceptions=True)
            fetch_error = fetch.exception() if fetch.done() and not fetch.cancelled() else None
            if fetch_error is not None:
                log.error("the fetch loop failed: %r", fetch_error, exc_info=fetch_error)
            budget = s.shutdown.drain_budget_s
            started = time.monotonic()
            drained = await pipeline.drain(budget)
            flushed = await pipeline.dlq.flush(max(0.1, budget - (time.monotonic() - started)))
            commits.cancel()
            await asyncio.gather(commits, return_exceptions=True)
            final = await source.commit()
            log.info(
                "stopping: drained=%s dlq_flushed=%s, left pending=%d, final commit %s",
                drained,
                flushed,
                pipeline.buffered,
                {str(tp): off for tp, off in final.items()},
            )
            pipeline.dlq.report()
            self.broker_health.report()
            await pipeline.stop()
            await self._stop_quota(quota, quota_task)
            await source.stop()
        if pipeline.fatal is not None:
            log.error("exiting after a fatal error: %s", pipeline.fatal)
            return EXIT_FATAL
        if pipeline.failure is not None or fetch_error is not None:
            return EXIT_FAILURE
        return EXIT_OK

    @staticmethod
    async def _stop_quota(quota: QuotaShare | None, task: asyncio.Task[None] | None) -> None:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if quota is not None:
            await quota.stop()

    async def _start_with_retry(self, start: Callable[[], Awaitable[None]], what: str) -> bool:
        """Start a Kafka client, retrying while the broker is unreachable (not ready meanwhile).

        Returns False when a stop was requested before it could start.
        """
        delay = 1.0
        while not self.stop_requested.is_set():
            try:
                await start()
                return True
            except (KafkaError, OSError) as exc:
                log.warning("%s cannot reach Kafka (%s: %s); retrying in %.0fs", what, type(exc).__name__, exc, delay)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self.stop_requested.wait()
            delay = min(delay * 2, 30.0)
        return False

    async def _commit_loop(self, source: KafkaSource) -> None:
        next_probe = 0.0
        next_report, last = time.monotonic() + PROGRESS_LOG_S, self.metrics.totals()
        while True:
            await asyncio.sleep(self.settings.kafka.commit_interval_s)
            if await source.commit():
                self._progress_at = time.monotonic()
            source.update_lag()
            now = time.monotonic()
            if now >= next_probe or not self.broker_health.up:  # while unreachable: learn soon when it answers
                next_probe = now + BROKER_PROBE_S
                await source.check_broker()
            if now >= next_report:
                next_report, last = now + PROGRESS_LOG_S, self._report_progress(last)

    def _report_progress(self, last: dict[str, float]) -> dict[str, float]:
        """One INFO line a minute: what happened since the last one (never a line per record)."""
        if self.pipeline is not None:
            self.pipeline.dlq.report()
        self.broker_health.report()
        totals = self.metrics.totals()
        delta = {k: int(v - last.get(k, 0)) for k, v in totals.items()}
        buffered = self.pipeline.buffered if self.pipeline else 0
        log.info(
            "last %ds: consumed %d, sent %d, superseded %d, dead-lettered %d, skipped (deletes) %d, %d calls; "
            "%d records buffered",
            PROGRESS_LOG_S,
            *(delta[k] for k in ("consumed", "sent", "superseded", "dead_lettered", "skipped", "calls")),
            buffered,
            extra={"progress": delta, "buffered": buffered},
        )
        return totals

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("received %s: draining (budget %.0fs)", sig.name, self.settings.shutdown.drain_budget_s)
        self.stop_requested.set()


def _report_quota_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("quota sharing stopped (shares stay as they are): %r", exc, exc_info=exc)


def quota_share(settings: Settings, pipeline: Pipeline, source: KafkaSource, metrics: Metrics) -> QuotaShare | None:
    """Quota sharing by demand (``personalize.quota_sharing.mode: demand``), hooked to the source's rebalances."""
    qs = settings.personalize.quota_sharing
    if qs.mode != "demand":
        return None
    member = member_id(settings.kafka.client_id)
    share = QuotaShare(
        qs,
        pipeline.limiters,
        KafkaHeartbeatBus(settings, client_id=f"{settings.kafka.client_id}-quota"),
        demand_probe(pipeline, source, metrics),
        member=member,
        max_records=settings.batching.max_records,
        metrics=metrics,
    )
    source.quota_listener = share.assigned
    return share


class _Backlog(Protocol):
    def backlog(self, topics: list[str]) -> int | None: ...


def demand_probe(pipeline: Pipeline, source: _Backlog, metrics: Metrics) -> Callable[[], dict[tuple[str, str], Load]]:
    """Each quota's load on this member (its backlog and intake), for quota sharing. A dataset held by a fatal error
    can use no quota (one probe call every fatal_retry_s): its backlog asks for none, so the others get its share."""
    topics = pipeline.limiter_topics

    def probe() -> dict[tuple[str, str], Load]:
        consumed = {
            s.labels["topic"]: s.value
            for m in metrics.records_consumed.collect()
            for s in m.samples
            if s.name.endswith("_total")
        }
        held = pipeline.fatal_topics()
        return {
            key: Load(source.backlog([t for t in ts if t not in held]), sum(consumed.get(t, 0.0) for t in ts))
            for key, ts in topics.items()
        }

    return probe


async def serve(settings: Settings) -> int:
    service = Service(settings)
    service.install_signal_handlers()
    return await service.run()


def run_async(coro: Any) -> Any:
    """Run on uvloop where available."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        return asyncio.run(coro)
    return uvloop.run(coro)


# ---------------------------------------------------------------------- CLI


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=os.environ.get("INGESTOR_CONFIG"),
        help="YAML config file (default: $INGESTOR_CONFIG); every key can be overridden by INGESTOR_<SECTION>__<KEY>",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the configuration (file, environment, schemas), print the effective routes and exit",
    )


def main(args: argparse.Namespace) -> int:
    try:
        settings = Settings.load(args.config)
    except ConfigError as exc:
        print(f"ingestor: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        try:
            resolved = run_async(check_schemas(settings))
        except ConfigError as exc:
            print(f"ingestor: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        print(describe(settings, resolved))
        return EXIT_OK
    configure_logging(settings.logging.level, settings.logging.format)
    return int(run_async(serve(settings)))


async def check_schemas(settings: Settings) -> dict[str, ResolvedSchema]:
    """``--check-config``: each route's schema and where it came from (files compared with the datasets')."""
    async with control_plane(settings) as control:
        return await resolve_schemas(settings, control, timeout_s=CHECK_TIMEOUT_S)


def describe(settings: Settings, resolved: dict[str, ResolvedSchema] | None = None) -> str:
    """The effective configuration in a few lines (no secrets)."""
    k, p = settings.kafka, settings.personalize
    lines = [
        f"configuration OK: Kafka {k.bootstrap_servers} ({k.security.protocol}), group {k.group_id}, "
        f"DLQ {k.dead_letter_topic}",
        f"Personalize {p.endpoint_url or 'AWS ' + p.region}, {p.max_in_flight} calls in flight, "
        f"rate limits {p.rate_limits} calls/s per dataset group, shared by replicas "
        + (
            f"by demand (heartbeats on {quota_topic(settings)})"
            if p.quota_sharing.mode == "demand"
            else "by partition count"
        ),
    ]
    if (reg := settings.schema_registry) is not None:
        auth = (
            "basic auth"
            if reg.basic_auth_user
            else "bearer token"
            if reg.bearer_token or reg.bearer_token_file
            else "no auth"
        )
        lines.append(f"Schema Registry {reg.url} ({auth}, timeout {reg.request_timeout_s:g}s, cache {reg.cache_size})")
    b = settings.bulk
    if b.s3_uri or b.catch_up_after_s:
        catch = f"catch-up above {b.catch_up_after_s:g}s of backlog" if b.catch_up_after_s else "catch-up off"
        lines.append(f"bulk path: staging {b.s3_uri}, role {b.role_arn}, {catch}")
    for r in settings.routes:
        schema = resolved[r.topic].schema if resolved else r.load_schema()
        fields = ", ".join(f.name for f in schema.fields)
        if r.kind == "interactions":
            events = resolved[r.topic].events if resolved else None
            events = events or r.event_builder()
            attributes = ", ".join(events.attributes)
            fields = f"event attributes: {attributes}; properties: {fields or '-'}"
            fields += f"; tracking_id {r.tracking_id}, sessionId else {r.session_id}, TIMESTAMP in {r.timestamp_unit}"
        else:
            fields = f"fields: {fields}"
        deletes = "; deletes → data deletion jobs" if r.on_delete == "delete" else ""
        lines.append(f"  {r.topic} → {r.api} {r.dataset_arn} ({r.format}; {fields}{deletes})")
        if resolved:
            lines.append(f"      schema: {resolved[r.topic].origin}")
    return "\n".join(lines)
