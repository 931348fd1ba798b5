"""``ingestor demo``: the whole system on one machine, with live progress and a proof at the end.

It starts the embedded Kafka broker (Tansu) and the local Personalize Events endpoint, creates the topics, produces a
realistic stream of item and user changes and interaction events (some of them bad) at a steady rate, and runs the
ingestor service on it, all in one event loop; config/ingestor.yaml's routes plus an interactions route (PutEvents).
Personalize's quotas are on by default (PutItems and PutUsers: 10 calls/s per dataset group, so at most 100 records/s
each; PutEvents 1000 calls/s): the backlog drains as fast as the real service allows, helped by coalescing updates
of hot ids. Once every partition's committed offset reached the end of what was produced, the service is stopped as
SIGTERM would, and the run is checked from the outside (see ``prove``): exit 0 when every check passes, 1 otherwise.
Ctrl-C stops everything cleanly at any moment (exit 130).

``--catch-up`` shows the bulk path: a backlog produced at once, large enough that the service switches its datasets to
import jobs (moto's S3 server, the endpoint's control plane), then a live stream of newer versions of the same ids at
a rate the quota absorbs, which goes on while the jobs run (held: nothing newer may overtake a job) and for
``CATCH_UP_LIVE_AFTER_S`` after the backlog is committed: once a job is ACTIVE those records visibly stream through
PutItems/PutUsers, and the proof covers them too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import itertools
import logging
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from ingestor.app import EXIT_FAILURE, EXIT_OK, Service, run_async
from ingestor.broker import EmbeddedBroker
from ingestor.config import Settings
from ingestor.deadletter import H_REASON, H_STAGE
from ingestor.emulator.app import RunningEmulator, running_emulator
from ingestor.emulator.config import EmulatorConfig
from ingestor.emulator.imports import JobStatus
from ingestor.errors import IngestorError
from ingestor.examples import EXAMPLES_DIR
from ingestor.kafka_tools import create_topics, read_topic
from ingestor.logs import configure_logging
from ingestor.model import TopicPartition
from ingestor.progress import Display, Snapshot, gauge_value, metric_sum
from ingestor.sample import (
    EVENTS_TOPIC,
    ITEMS_TOPIC,
    USERS_TOPIC,
    Event,
    Expectation,
    StreamSpec,
    generate,
    register_avro_schemas,
)

ITEM_IDS, USER_IDS = 500, 200
EVENTS_SHARE = 0.2  # of the records: interaction events
CATCH_UP_ITEM_IDS, CATCH_UP_USER_IDS = 8000, 3000  # --catch-up: enough ids that streaming them takes a while
PARTITIONS = {ITEMS_TOPIC: 3, USERS_TOPIC: 2, EVENTS_TOPIC: 2}
INTERACTIONS_ROUTE = {  # added to config/ingestor.yaml's routes (where it is commented out)
    "topic": EVENTS_TOPIC,
    "kind": "interactions",
    "dataset_arn": "arn:aws:personalize:us-east-1:123456789012:dataset/shop/INTERACTIONS",
    "tracking_id": "shop-tracking-id",  # config/emulator.yaml's event tracker
    "schema": "schemas/interactions.avsc",
}
MAX_RECORDS_PER_CALL = 10  # PutItems / PutUsers / PutEvents
UNLIMITED_CALLS_PER_S = 1000.0  # the ingestor's pacing with --no-quotas
STALL_S = 60.0  # give up when nothing moved for this long (e.g. --fault-rate 1)
DRAIN_BUDGET_S = 3.0  # on Ctrl-C: finish in-flight work for at most this long
EXIT_INTERRUPTED = 128 + signal.SIGINT
CATCH_UP_RECORDS = 20_000  # --catch-up: the backlog produced at once (unless --records says otherwise)
CATCH_UP_RATE = 40.0  # --catch-up: the live stream's records/s (unless --rate says otherwise), well under the quota
CATCH_UP_LIVE_AFTER_S = 5.0  # --catch-up: the live stream goes on this long after the backlog is committed
CATCH_UP_AFTER_S = 10.0  # --catch-up: switch a dataset whose backlog would take longer than this
CATCH_UP_JOB_S = 5.0  # --catch-up: how long the local endpoint's import jobs take
_N = TypeVar("_N", int, float)


@dataclass(frozen=True)
class Options:
    records: int = 3000
    rate: float = 500.0  # records/s; 0 = as fast as possible. --catch-up: the live stream's (0 = none)
    bad_share: float = 0.03
    seed: int = 7
    quotas: bool = True
    fault_rate: float = 0.0
    throttle_rate: float = 0.0
    keep_running: bool = False
    metrics_port: int = 9108
    verbose: bool = False
    format: str = "json"  # json | avro (Confluent wire format, schemas in the local endpoint's registry)
    catch_up: bool = False  # a large backlog caught up through an import job (bulk path)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        catch_up = bool(getattr(args, "catch_up", False))
        defaults = cls()
        return cls(
            records=CATCH_UP_RECORDS if catch_up and args.records == defaults.records else args.records,
            rate=CATCH_UP_RATE if catch_up and args.rate == defaults.rate else args.rate,
            bad_share=args.bad_share,
            seed=args.seed,
            quotas=not args.no_quotas,
            fault_rate=args.fault_rate,
            throttle_rate=args.throttle_rate,
            keep_running=args.keep_running,
            metrics_port=args.metrics_port,
            verbose=args.verbose,
            format=args.format,
            catch_up=catch_up,
        )


# ---------------------------------------------------------------------- CLI


def configure_parser(parser: argparse.ArgumentParser) -> None:
    d = Options()
    parser.description = (
        "Runs the ingestor end to end on this machine: an embedded Kafka broker, a local Personalize endpoint with "
        "Personalize's quotas, and a sample stream of item and user changes and interaction events (some of them bad). "
        "Shows live progress, then proves the outcome: the endpoint holds the latest valid event of every id and every "
        "valid interaction event, and the dead-letter topic exactly the bad records."
    )
    parser.epilog = (
        "Exit status: 0 every check passed, 1 a check failed or the demo could not run, 130 interrupted by Ctrl-C "
        "(with --keep-running, Ctrl-C after the summary exits with the checks' status)."
    )
    count, rate, share, port = _ranged(int, 1), _ranged(float, 0.0), _ranged(float, 0.0, 1.0), _ranged(int, 0, 65535)
    stream = parser.add_argument_group("the stream")
    add = stream.add_argument
    add("--records", type=count, default=d.records, metavar="N", help="records to produce (default: %(default)s)")
    add("--rate", type=rate, default=d.rate, metavar="N",
        help=f"records/s, 0 = at once (default: %(default)g; --catch-up: the live stream's, "
             f"{CATCH_UP_RATE:g})")  # fmt: skip
    add("--bad-share", type=share, default=d.bad_share, metavar="P", help="share of bad records (default: %(default)g)")
    add("--seed", type=int, default=d.seed, help="seed of the stream and the faults (default: %(default)s)")
    add("--format", choices=("json", "avro"), default=d.format,
        help="json: JSON values in mixed shapes; avro: Avro in the Confluent wire format (plain rows of two schema "
             "versions and Debezium envelopes), writer schemas in the local endpoint's Schema Registry "
             "(default: %(default)s)")  # fmt: skip
    endpoint = parser.add_argument_group("the local Personalize endpoint")
    add = endpoint.add_argument
    add("--no-quotas", action="store_true", help="a fast run: no quotas, the ingestor paces at 1000 calls/s")
    add("--fault-rate", "--fail-rate", type=share, default=0.0, metavar="P", help="chaos: share of 500/503 answers")
    add("--throttle-rate", type=share, default=0.0, metavar="P", help="chaos: share of ThrottlingException answers")
    add = parser.add_argument
    add("--keep-running", action="store_true", help="then keep broker, endpoint and ingestor up until Ctrl-C")
    add("--metrics-port", type=port, default=d.metrics_port, metavar="PORT",
        help="the ingestor's /metrics /healthz /readyz on 127.0.0.1, 0 = any (default: %(default)s)")  # fmt: skip
    add("--verbose", "-v", action="store_true", help="the service's INFO logs (default: warnings only)")
    add(
        "--catch-up",
        action="store_true",
        help=f"the bulk path: a backlog ({CATCH_UP_RECORDS} records at once unless --records says otherwise) "
        f"that would take over {CATCH_UP_AFTER_S:.0f}s through the API is caught up by dataset import jobs "
        f"(local S3 server: moto's), while a live stream of newer versions of the same ids (--rate, default "
        f"{CATCH_UP_RATE:g} records/s) goes on: held while a job runs, streamed once it is ACTIVE, and for "
        f"{CATCH_UP_LIVE_AFTER_S:.0f}s after the backlog is committed",
    )


def main(args: argparse.Namespace) -> int:
    options = Options.from_args(args)
    configure_logging("INFO" if options.verbose else "WARNING", "console")
    if not options.verbose:  # one warning per bad record would drown the progress; the summary reports the DLQ
        logging.getLogger("ingestor.deadletter").setLevel(logging.ERROR)
    if options.catch_up:  # the switch's one-sentence decisions are the point of this run
        logging.getLogger("ingestor.bulk.catchup").setLevel(logging.INFO)
    try:
        return int(run_async(run_demo(options)))
    except KeyboardInterrupt:  # Ctrl-C before the demo's own handler was in place: nothing was started yet
        return EXIT_INTERRUPTED


def _ranged(kind: Callable[[str], _N], low: _N, high: _N | None = None) -> Callable[[str], _N]:
    """An argparse type: ``kind(text)`` within [low, high]."""

    def parse(text: str) -> _N:
        value = kind(text)
        if not (low <= value and (high is None or value <= high)):
            raise argparse.ArgumentTypeError(f"{text} is not in [{low}, {'∞' if high is None else high}]")
        return value

    return parse


# ---------------------------------------------------------------------- the run


@dataclass
class Produced:
    """What the demo's producer wrote, as the broker acknowledged it."""

    planned: int
    acked: int = 0
    ends: dict[TopicPartition, int] = field(default_factory=dict)  # next offset per partition
    started_at: float | None = None
    finished_at: float | None = None
    backlog_ends: dict[TopicPartition, int] | None = None  # --catch-up: the backlog's ends, once it is produced
    live: int = 0  # --catch-up: records of the live stream sent
    backlog_committed_at: float | None = None  # --catch-up: time.monotonic() when the backlog was all committed

    def ack(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            return  # the producer task raises it
        meta = future.result()
        tp = TopicPartition(meta.topic, meta.partition)
        self.ends[tp] = max(self.ends.get(tp, 0), meta.offset + 1)
        self.acked += 1


@dataclass
class BulkWatch:
    """--catch-up: the local endpoint's import jobs as the demo saw them change, and what streamed after them."""

    statuses: dict[str, JobStatus] = field(default_factory=dict)  # job name → last status seen
    sent_at_active: dict[str, float] = field(default_factory=dict)  # API → records sent when its first job was ACTIVE
    backlog_ids: dict[str, set[str]] = field(default_factory=dict)  # topic → ids with a valid record in the backlog


@dataclass
class Parts:
    """Everything a started demo is made of."""

    options: Options
    started: float  # time.monotonic()
    broker: EmbeddedBroker
    emulator: RunningEmulator
    settings: Settings
    service: Service
    service_task: asyncio.Task[int]
    produced: Produced
    caught_up_at: float | None = None  # time.monotonic()
    bulk: BulkWatch = field(default_factory=BulkWatch)


@dataclass
class Run:
    result: int | None = None  # the checks' exit code, once the summary is printed
    stopping: bool = False  # cleaning up: a signal no longer interrupts


@dataclass(frozen=True)
class Check:
    ok: bool
    text: str
    details: tuple[str, ...] = ()


@dataclass
class Proof:
    checks: list[Check]
    dead_letters: list[Any]  # the DLQ's records (aiokafka ConsumerRecord)
    endpoint_stats: dict[str, Any]

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.checks)


async def run_demo(options: Options) -> int:
    """The demo; returns its exit status. SIGINT/SIGTERM cancel it once and everything stops in order."""
    run = Run()
    task = asyncio.current_task()
    assert task is not None
    with _cancel_on_signals(task, lambda: not run.stopping) as received:
        try:
            return await _demo(options, run)
        except asyncio.CancelledError:
            if not received:
                raise
            task.uncancel()
        except (IngestorError, KafkaError, OSError) as exc:
            print(f"ingestor demo: {exc}", file=sys.stderr)
            if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
                print("ingestor demo: is another ingestor running? --metrics-port 0 picks a free port", file=sys.stderr)
            return EXIT_FAILURE
    if run.result is not None:  # --keep-running, ended by Ctrl-C after the summary
        return run.result
    print("interrupted: the ingestor, the local endpoint and the broker are stopped")
    return 128 + received[0]


@contextlib.contextmanager
def _cancel_on_signals(task: asyncio.Task[Any], interruptible: Callable[[], bool]) -> Iterator[list[int]]:
    """The first SIGINT/SIGTERM cancels ``task`` (its cleanup stops everything in order); later ones are noted."""
    loop = asyncio.get_running_loop()
    received: list[int] = []

    def on_signal(sig: signal.Signals) -> None:
        if not received and interruptible():
            print(f"\n{sig.name}: stopping the ingestor, then the endpoint and the broker", file=sys.stderr)
            task.cancel()
        received.append(int(sig))

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)
        try:
            loop.add_signal_handler(sig, on_signal, sig)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no signals on this platform
            continue
        installed.append((sig, previous))
    try:
        yield received
    finally:
        for sig, previous in installed:
            loop.remove_signal_handler(sig)
            if previous is not None:
                signal.signal(sig, previous)  # e.g. asyncio.Runner's own SIGINT handler


async def _demo(options: Options, run: Run) -> int:
    async with contextlib.AsyncExitStack() as stack:
        try:
            parts = await _start(options, stack)
            events, expect, rest = await _stream(parts)
            live = None
            if options.catch_up and options.rate > 0:  # newer versions of the same ids, after the backlog
                parts.bulk.backlog_ids = {topic: set(ids) for topic, ids in expect.latest.items()}
                live = _expected(rest, expect)
            _print_intro(parts, expect)
            producer = asyncio.create_task(_produce(parts, events, live), name="demo producer")
            stack.push_async_callback(_cancel, producer)
            problem = await _follow(parts, producer)
            await _cancel(producer)  # done unless the run went wrong: the proof reads what it produced
            service_exit = None if options.keep_running else await _stop_service(parts)
            proof = await prove(parts, expect, _ingestor_check(parts, problem, service_exit))
            run.result = EXIT_OK if proof.passed else EXIT_FAILURE
            _print_summary(parts, expect, proof)
            if options.keep_running:
                await _keep_running(parts)
            return run.result
        finally:
            run.stopping = True


def _stream_spec(options: Options) -> StreamSpec:
    items, users = (CATCH_UP_ITEM_IDS, CATCH_UP_USER_IDS) if options.catch_up else (ITEM_IDS, USER_IDS)
    return StreamSpec(
        items=items,
        users=users,
        bad_share=options.bad_share,
        seed=options.seed,
        events_share=0.0 if options.format == "avro" or options.catch_up else EVENTS_SHARE,
    )


async def _stream(parts: Parts) -> tuple[list[Event], Expectation, Iterator[Event]]:
    """The events to produce (Avro: their writer schemas registered first), what they must lead to, and (--catch-up)
    the rest of the same stream, for the live part."""
    spec = _stream_spec(parts.options)
    if parts.options.format == "avro":
        spec.avro = await register_avro_schemas(parts.emulator.url)
    records = parts.options.records
    stream = generate(records + (LIVE_MAX if parts.options.catch_up else 0), spec)
    events = list(itertools.islice(stream, records))
    expect = Expectation()
    for event in events:
        expect.add(event)
    return events, expect, stream


LIVE_MAX = 10**9  # the live stream ends on a condition, not a count


def _expected(events: Iterator[Event], expect: Expectation) -> Iterator[Event]:
    """``events``, each added to ``expect`` as it is taken (to be produced)."""
    for event in events:
        expect.add(event)
        yield event


async def _start(options: Options, stack: contextlib.AsyncExitStack) -> Parts:
    """Broker, endpoint, topics, then the service; each is stopped by ``stack`` in the reverse order."""
    started = time.monotonic()
    config_dir = EXAMPLES_DIR  # the package's example (= config/), wherever it runs and whatever ./config holds
    broker = _start_broker()
    stack.callback(broker.stop)
    s3_url = await _start_s3(stack) if options.catch_up else None
    emulator = await stack.enter_async_context(running_emulator(_emulator_config(options, config_dir, s3_url)))
    settings = _settings(options, config_dir, broker.bootstrap_servers, emulator.url, s3_url)
    await create_topics(broker.bootstrap_servers, {**PARTITIONS, settings.kafka.dead_letter_topic: 1})
    service = Service(settings)
    service_task = asyncio.create_task(service.run(), name="ingestor")
    parts = Parts(options, started, broker, emulator, settings, service, service_task, Produced(options.records))
    stack.push_async_callback(_stop_service, parts)
    return parts


def _start_broker() -> EmbeddedBroker:
    """Ctrl-C in a terminal signals the whole process group: the broker must not die before the ingestor drained.

    So it starts with SIGINT blocked (a child inherits the signal mask); we stop it last, with SIGTERM.
    """
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        return EmbeddedBroker().start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


async def _start_s3(stack: contextlib.AsyncExitStack) -> str:
    """moto's S3 server with the staging bucket (stopped by ``stack``); SIGINT blocked like the broker's."""
    import aioboto3

    from ingestor.emulator.s3server import LocalS3

    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        s3 = LocalS3().start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    stack.callback(s3.stop)
    session = aioboto3.Session(  # the local S3 server accepts any credentials
        aws_access_key_id="demo",
        aws_secret_access_key="demo",  # noqa: S106
        region_name="us-east-1",
    )
    async with session.client("s3", endpoint_url=s3.url) as client:
        await client.create_bucket(Bucket=DEMO_BUCKET)
    return s3.url


DEMO_BUCKET = "demo-staging"


def _emulator_config(options: Options, config_dir: Path, s3_url: str | None = None) -> EmulatorConfig:
    return EmulatorConfig.load(
        config_dir / "emulator.yaml",
        quotas={"enabled": options.quotas},
        faults={"fail_rate": options.fault_rate, "throttle_rate": options.throttle_rate},
        imports={"s3_endpoint_url": s3_url, "duration_s": CATCH_UP_JOB_S},
        seed=options.seed,
        max_events_kept=max(10_000, options.records),  # the proof reads every event back
    )


class _FileOnlySettings(Settings):
    """The demo is hermetic: INGESTOR_* variables meant for a real deployment must not point it elsewhere."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def _settings(options: Options, config_dir: Path, bootstrap: str, endpoint: str, s3_url: str | None = None) -> Settings:
    """The example ingestor.yaml, pointed at the demo's broker and endpoint; quick group joins and commits."""
    path = config_dir / "ingestor.yaml"
    base = _FileOnlySettings.load(path)
    calls_per_s = (
        base.personalize.rate_limits
        if options.quotas
        else dict.fromkeys(("PutItems", "PutUsers", "PutEvents"), UNLIMITED_CALLS_PER_S)
    )
    return _FileOnlySettings.load(
        path,
        kafka={
            **base.kafka.model_dump(),
            "bootstrap_servers": bootstrap,
            "session_timeout_ms": 6000,  # Tansu holds each join for half of it
            "heartbeat_interval_ms": 500,
            "commit_interval_s": 0.2,
        },
        personalize={
            **base.personalize.model_dump(),
            "endpoint_url": endpoint,
            "aws_access_key_id": "demo",
            "aws_secret_access_key": "demo",
            "rate_limits": calls_per_s,
        },
        metrics={"host": "127.0.0.1", "port": options.metrics_port},
        shutdown={"drain_budget_s": DRAIN_BUDGET_S},
        **_route_settings(options, base, config_dir, endpoint),
        **_bulk(s3_url),
    )


def _route_settings(options: Options, base: Settings, config_dir: Path, endpoint: str) -> dict[str, Any]:
    """The example's item and user routes plus an interactions route; with --format avro every route reads Avro,
    writer schemas from the local endpoint's Schema Registry (the Avro sample has no interaction events)."""
    routes = [r.model_dump(by_alias=True) for r in base.routes]
    if options.format == "avro":
        return {"routes": [{**r, "format": "avro"} for r in routes], "schema_registry": {"url": endpoint}}
    interactions = {**INTERACTIONS_ROUTE, "schema": str(config_dir / INTERACTIONS_ROUTE["schema"])}
    return {"routes": [*routes, interactions]}


def _bulk(s3_url: str | None) -> dict[str, Any]:
    if s3_url is None:
        return {}
    return {
        "bulk": {
            "s3_uri": f"s3://{DEMO_BUCKET}/catch-up/",
            "s3_endpoint_url": s3_url,
            "role_arn": "arn:aws:iam::123456789012:role/PersonalizeS3Access",
            "catch_up_after_s": CATCH_UP_AFTER_S,
            "poll_interval_s": 0.5,
        }
    }


async def _produce(parts: Parts, events: Sequence[Event], live: Iterator[Event] | None = None) -> None:
    """Send the events at ``options.rate`` records/s (0: at once); ``parts.produced`` follows the acknowledgements.

    With ``live`` (--catch-up): ``events`` (the backlog) at once, then ``live`` at ``options.rate`` until
    ``CATCH_UP_LIVE_AFTER_S`` after every partition is committed past the backlog (through import jobs or not)."""
    produced, rate = parts.produced, parts.options.rate
    producer = AIOKafkaProducer(bootstrap_servers=parts.broker.bootstrap_servers, linger_ms=5, acks="all")
    await producer.start()
    acks: list[asyncio.Future[Any]] = []

    async def send(event: Event) -> None:
        ack = await producer.send(event.topic, value=event.value, key=event.key)
        ack.add_done_callback(produced.ack)
        acks.append(ack)

    try:
        loop = asyncio.get_running_loop()
        produced.started_at = time.monotonic()
        if live is None:
            await _paced(send, iter(events), rate)
        else:
            for event in events:
                await send(event)
            await asyncio.gather(*acks)
            produced.backlog_ends = dict(produced.ends)
            until: float | None = None

            def more() -> bool:
                nonlocal until
                if until is None and _backlog_committed(parts):
                    until = loop.time() + CATCH_UP_LIVE_AFTER_S
                    produced.backlog_committed_at = time.monotonic()
                left = CATCH_UP_LIVE_AFTER_S if until is None else max(0.0, until - loop.time())
                produced.planned = len(events) + produced.live + int(left * rate)  # at least
                return until is None or loop.time() < until

            await _paced(send, _counted(live, produced), rate, more)
        await asyncio.gather(*acks)
    finally:
        await producer.stop()
    produced.finished_at = time.monotonic()


async def _paced(
    send: Callable[[Event], Awaitable[None]],
    events: Iterator[Event],
    rate: float,
    more: Callable[[], bool] = lambda: True,
) -> None:
    """``send`` each event at ``rate`` records/s (0: at once) while ``more()`` says so (asked before an event is
    taken from ``events``: one taken is one sent)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in itertools.count():
        if rate > 0 and (delay := start + i / rate - loop.time()) > 0:
            await asyncio.sleep(delay)
        if not more() or (event := next(events, None)) is None:
            return
        await send(event)


def _counted(events: Iterator[Event], produced: Produced) -> Iterator[Event]:
    for event in events:
        produced.live += 1
        yield event


def _backlog_committed(parts: Parts) -> bool:
    ends = parts.produced.backlog_ends
    return ends is not None and all(_committed(parts, tp) >= end for tp, end in ends.items())


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


# ---------------------------------------------------------------------- following the run


async def _follow(parts: Parts, producer: asyncio.Task[None]) -> str | None:
    """Show progress once a second until every partition is committed to its end (None) or why that cannot be."""
    display = Display()
    next_show = time.monotonic()
    moved_at, last_mark = time.monotonic(), _progress_mark(parts)
    try:
        while True:
            if producer.done() and (error := producer.exception()) is not None:
                raise error
            if _caught_up(parts):
                parts.caught_up_at = time.monotonic()
                return None
            if parts.service_task.done():
                if not parts.service_task.cancelled() and (error := parts.service_task.exception()) is not None:
                    raise error  # e.g. the metrics port is taken: nothing to prove
                return f"the ingestor stopped before it caught up: {_service_outcome(parts.service_task)}"
            now = time.monotonic()
            if (mark := _progress_mark(parts)) != last_mark:
                moved_at, last_mark = now, mark
            elif now - moved_at > STALL_S:
                return f"no progress for {STALL_S:.0f}s ({parts.service.ready() or 'ready'})"
            if parts.options.catch_up:
                _watch_jobs(parts, display)
            if now >= next_show:
                display.show(_snapshot(parts))
                next_show += 1.0
            await asyncio.sleep(0.05)
    finally:
        display.show(_snapshot(parts))
        display.close()


def _committed(parts: Parts, tp: TopicPartition) -> int:
    pipeline = parts.service.pipeline
    committed = pipeline.tracker.last_committed(tp) if pipeline is not None else None
    return committed or 0


def _caught_up(parts: Parts) -> bool:
    produced = parts.produced
    return produced.finished_at is not None and all(_committed(parts, tp) == end for tp, end in produced.ends.items())


def _lag(parts: Parts) -> int:
    return sum(max(0, end - _committed(parts, tp)) for tp, end in parts.produced.ends.items())


def _progress_mark(parts: Parts) -> tuple[int, ...]:
    m = parts.service.metrics
    return (
        parts.produced.acked,
        int(metric_sum(m.records_consumed)),
        int(metric_sum(m.api_calls)),
        int(metric_sum(m.records_dead_lettered)),
        _lag(parts),
    )


def _snapshot(parts: Parts) -> Snapshot:
    m, pipeline = parts.service.metrics, parts.service.pipeline
    return Snapshot(
        at=time.monotonic() - parts.started,
        planned=parts.produced.planned,
        produced=parts.produced.acked,
        consumed=int(metric_sum(m.records_consumed)),
        sent=int(metric_sum(m.records_sent)),
        superseded=int(metric_sum(m.records_superseded)),
        dead_lettered=int(metric_sum(m.records_dead_lettered)),
        calls=int(metric_sum(m.records_per_call, "_count")),
        call_records=int(metric_sum(m.records_per_call, "_sum")),
        in_flight=int(gauge_value(m.in_flight)),
        buffered=pipeline.buffered if pipeline is not None else 0,
        lag=_lag(parts),
        phase=_phase(parts) if parts.options.catch_up else "",
    )


def _dataset_label(arn: str) -> str:
    return arn.rsplit(":dataset/", 1)[-1]


def _sent(parts: Parts, api: str) -> float:
    """Records of ``api`` (PutItems, PutUsers) Personalize accepted so far, from the service's metric."""
    return sum(
        sample.value
        for family in parts.service.metrics.records_sent.collect()
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels.get("api") == api
    )


def _api_of(parts: Parts, dataset_arn: str) -> str | None:
    return next((r.api for r in parts.settings.routes if r.dataset_arn == dataset_arn), None)


def _watch_jobs(parts: Parts, display: Display) -> None:
    """--catch-up: a line when an import job is created or finishes; at a dataset's first ACTIVE job, what its API had
    sent so far (what it sends from then on streamed after the import)."""
    seen = parts.bulk.statuses
    for job in list(parts.emulator.service.imports.jobs.values()):
        status = job.status
        if seen.get(job.name) == status:
            continue
        at = time.monotonic() - parts.started
        label = _dataset_label(job.dataset_arn)
        if job.name not in seen:
            display.note(f"[{at:6.1f}s] {label}: import job {job.name} ({job.mode}) created; its streaming is held")
        seen[job.name] = status
        if status is JobStatus.ACTIVE:
            api = _api_of(parts, job.dataset_arn)
            if api is not None:
                parts.bulk.sent_at_active.setdefault(api, _sent(parts, api))
            display.note(
                f"[{at:6.1f}s] {label}: import job {job.name} ACTIVE: its rows are in; streaming resumes from the cut "
                f"through {api}"
            )
        elif status is JobStatus.FAILED:
            display.note(f"[{at:6.1f}s] {label}: import job {job.name} CREATE FAILED: {job.failure_reason}")


def _phase(parts: Parts) -> str:
    """--catch-up: where the bulk path is, in a few words."""
    jobs = list(parts.emulator.service.imports.jobs.values())
    running = [j for j in jobs if j.status.running]
    if running:
        return "bulk path: " + ", ".join(f"{_dataset_label(j.dataset_arn)} job {j.status.value}" for j in running)
    catch_up = parts.service.catch_up
    switching = int(gauge_value(catch_up.metrics.in_bulk)) if catch_up is not None else 0
    if switching:
        return f"bulk path: {switching} dataset(s) reading and staging their backlog"
    active = sum(1 for j in jobs if j.status is JobStatus.ACTIVE)
    if active:
        return f"streaming after {active} ACTIVE import job(s)"
    return "streaming; catch-up watches the backlog"


async def _stop_service(parts: Parts) -> int | None:
    """Stop the service as SIGTERM does (drain, final commit); its exit code, None if it did not stop in time."""
    parts.service.stop_requested.set()
    task = parts.service_task
    await asyncio.wait({task}, timeout=DRAIN_BUDGET_S + 30)
    if not task.done():
        await _cancel(task)
        return None
    if task.cancelled():
        return None
    return task.result() if task.exception() is None else EXIT_FAILURE


def _service_outcome(task: asyncio.Task[int]) -> str:
    if task.cancelled():
        return "cancelled"
    error = task.exception()
    return f"exit {task.result()}" if error is None else f"{type(error).__name__}: {error}"


def _ingestor_check(parts: Parts, problem: str | None, service_exit: int | None) -> Check:
    if problem is not None:
        return Check(False, "every partition was committed to its end", (problem,))
    if parts.options.keep_running:
        reason = parts.service.ready()
        return Check(reason is None, "the ingestor caught up and stays ready", (reason,) if reason else ())
    if service_exit == EXIT_OK:
        return Check(True, "the ingestor caught up, drained and stopped cleanly (exit 0)")
    outcome = _service_outcome(parts.service_task) if service_exit is not None else "did not stop in time"
    return Check(False, "the ingestor stopped cleanly", (outcome,))


async def _keep_running(parts: Parts) -> None:
    s = parts.settings
    health = parts.service.health
    metrics_port = health.port if health is not None else s.metrics.port
    topics = ", ".join(f"{t} ({n} partitions)" for t, n in PARTITIONS.items())
    print("\nStill running; Ctrl-C stops everything.")
    print(f"  Kafka bootstrap servers   {parts.broker.bootstrap_servers}   topics {topics}")
    print(f"                            dead-letter topic {s.kafka.dead_letter_topic}, group {s.kafka.group_id}")
    print(f"  Personalize endpoint      {parts.emulator.url}   (GET /_emulator/state, /_emulator/stats)")
    print(
        f"  ingestor metrics          http://{s.metrics.host}:{metrics_port}/metrics   (/healthz /readyz)", flush=True
    )
    await asyncio.wait({parts.service_task})
    print(f"the ingestor stopped: {_service_outcome(parts.service_task)}", file=sys.stderr)


# ---------------------------------------------------------------------- the proof


async def prove(parts: Parts, expect: Expectation, ingestor: Check) -> Proof:
    """Checks the run from the outside, against what the generated stream says must happen:

    * for items and users, the endpoint's final state equals the latest valid event of every id, and nothing else;
    * for interactions, the endpoint received every valid event exactly once, and nothing else;
    * the dead-letter topic holds exactly the bad records, byte for byte (no more, no fewer);
    * no call carried more than 10 records (the PutItems/PutUsers/PutEvents limit);
    * --catch-up: every import job is ACTIVE and (with a live stream) records went through PutItems/PutUsers after;
    * the ingestor caught up and stopped cleanly (``ingestor``, decided by the caller).
    """
    checks = []
    for route in parts.settings.routes:
        if route.kind == "interactions":
            wrong = expect.event_mismatches(route.topic, await parts.emulator.client.events(route.dataset_arn))
            text = f"{route.kind}: the endpoint received each of the {len(expect.events.get(route.topic, []))} valid "
            text += "events once"
        else:
            wrong = expect.mismatches(route.topic, await parts.emulator.client.records(route.dataset_arn))
            ids = len(expect.latest.get(route.topic, {}))
            text = f"{route.kind}: the endpoint holds the latest valid event of all {ids} ids"
        checks.append(Check(not wrong, text, (*wrong[:5], *([f"... {len(wrong) - 5} more"] if len(wrong) > 5 else []))))
    want = Counter(e.value for e in expect.invalid)
    dead = await _read_dead_letters(parts, len(expect.invalid))
    got = Counter(r.value for r in dead)
    missing, extra = want - got, got - want
    checks.append(
        Check(
            not missing and not extra,
            f"the dead-letter topic holds exactly the {len(expect.invalid)} bad records, byte for byte",
            tuple(
                f"{n} {what}"
                for n, what in ((missing.total(), "bad records missing"), (extra.total(), "unexpected records"))
                if n
            ),
        )
    )
    stats = await parts.emulator.client.stats()
    peak = stats["max_records_per_call"]
    checks.append(Check(peak <= MAX_RECORDS_PER_CALL, f"at most {MAX_RECORDS_PER_CALL} records per call (max {peak})"))
    if parts.options.catch_up:
        checks.append(_bulk_check(parts))
    checks.append(ingestor)
    return Proof(checks, dead, stats)


@dataclass(frozen=True)
class AfterImport:
    """--catch-up: what streamed once the import jobs were ACTIVE."""

    records: int  # sent through PutItems/PutUsers after their dataset's first job was ACTIVE
    ids: int  # ids whose final record is one of those
    backlog_ids: int  # of them, ids the backlog had a record of: newer versions of imported ids


def _after_import(parts: Parts) -> AfterImport:
    jobs = list(parts.emulator.service.imports.jobs.values())
    records = sum(max(0.0, _sent(parts, api) - at) for api, at in parts.bulk.sent_at_active.items())
    ids = backlog_ids = 0
    for route in parts.settings.routes:
        active = [j.updated for j in jobs if j.dataset_arn == route.dataset_arn and j.status is JobStatus.ACTIVE]
        dataset = parts.emulator.service.datasets.get(route.dataset_arn)
        if not active or dataset is None or route.kind == "interactions":
            continue
        after = [rid for rid, rec in dataset.records.items() if not rec.bulk and rec.accepted_at >= min(active)]
        ids += len(after)
        backlog = parts.bulk.backlog_ids.get(route.topic, set())
        backlog_ids += sum(1 for rid in after if rid in backlog)
    return AfterImport(int(records), ids, backlog_ids)


def _bulk_check(parts: Parts) -> Check:
    jobs = list(parts.emulator.service.imports.jobs.values())
    if not jobs:
        limit = parts.settings.bulk.catch_up_after_s
        reason = f"no import job ran: no backlog looked longer than {limit:g}s through the API"
        hint = " (--no-quotas: it never does)" if not parts.options.quotas else ""
        return Check(False, "the backlog went through import jobs", (reason + hint,))
    unfinished = [j for j in jobs if j.status is not JobStatus.ACTIVE]
    if unfinished:
        details = tuple(f"{j.name}: {j.status.value} {j.failure_reason or ''}".rstrip() for j in unfinished)
        return Check(False, f"all {len(jobs)} import jobs ACTIVE", details)
    if parts.options.rate <= 0:  # no live stream
        return Check(True, f"the backlog went through {len(jobs)} import job(s), all ACTIVE")
    after = _after_import(parts)
    return Check(
        after.records > 0 and after.ids > 0,
        f"{len(jobs)} import job(s) ACTIVE, then streaming resumed: {after.records} records sent through "
        f"PutItems/PutUsers after them; {after.ids} ids end with one of those ({after.backlog_ids} newer versions of "
        "ids in the backlog)",
    )


async def _read_dead_letters(parts: Parts, expected: int) -> list[Any]:
    """``read_topic`` stops after a quiet second; should a slow first fetch end it early, read again more patiently."""
    bootstrap, topic = parts.broker.bootstrap_servers, parts.settings.kafka.dead_letter_topic
    records = await read_topic(bootstrap, topic, idle_s=1.0)
    if len(records) < expected:
        records = await read_topic(bootstrap, topic, idle_s=3.0)
    return records


# ---------------------------------------------------------------------- printing


def _print_intro(parts: Parts, expect: Expectation) -> None:
    o = parts.options
    ids = sum(len(by_id) for by_id in expect.latest.values())
    interactions = sum(len(events) for events in expect.events.values())
    rate = f"{o.rate:g} records/s" if o.rate > 0 else "full speed"
    if o.quotas:
        quotas = (
            "Personalize quotas ON: PutItems and PutUsers 10 calls/s each (≤ 100 records/s per API), PutEvents 1000"
        )
    else:
        quotas = "quotas OFF (--no-quotas)"
    chaos = f"; chaos: {o.fault_rate:g} 5xx, {o.throttle_rate:g} throttled" if o.fault_rate or o.throttle_rate else ""
    fmt = "; Avro values (Confluent wire format)" if o.format == "avro" else ""
    if o.catch_up:
        live = (
            f"then a live stream of newer versions of the same ids at {o.rate:g} records/s, until "
            f"{CATCH_UP_LIVE_AFTER_S:g}s after the backlog is committed"
            if o.rate > 0
            else "no live stream after it (--rate 0)"
        )
        print(
            f"ingestor demo: a backlog of {o.records} records ({len(expect.invalid)} bad) on {ids} ids produced at "
            f"once, {live}; {quotas}{chaos}{fmt}"
        )
    else:
        print(
            f"ingestor demo: {o.records} records ({len(expect.invalid)} bad) on {ids} ids and {interactions} "
            f"interaction events at {rate}; {quotas}{chaos}{fmt}"
        )
    registry = f" (+ Schema Registry at {parts.emulator.url})" if o.format == "avro" else ""
    print(
        f"  broker {parts.broker.bootstrap_servers}   Personalize endpoint {parts.emulator.url}{registry}", flush=True
    )
    if o.catch_up:
        bulk = parts.settings.bulk
        print(
            f"  catch-up ON: a dataset whose backlog would take over {bulk.catch_up_after_s:g}s through the API is "
            f"imported via {bulk.s3_uri} (import jobs take {CATCH_UP_JOB_S:g}s); its streaming is held while the job "
            "runs and resumes from the cut once it is ACTIVE",
            flush=True,
        )


def _print_bulk(parts: Parts, took: float) -> None:
    """--catch-up: what went through import jobs, and the streaming time it saved."""
    jobs = list(parts.emulator.service.imports.jobs.values())
    rows = metric_sum(parts.service.catch_up.metrics.rows) if parts.service.catch_up is not None else 0
    ids = max((len(d.records) for d in parts.emulator.service.datasets.values()), default=0)
    by_status = ", ".join(f"{j.name} {j.mode} {j.status.value}" for j in jobs) or "none"
    print(f"  bulk path     {len(jobs)} import job(s): {by_status}; {rows:.0f} rows imported")
    if parts.options.rate > 0:
        after = _after_import(parts)
        print(
            f"  after import  {after.records} records streamed through PutItems/PutUsers ({parts.produced.live} "
            f"produced live); {after.ids} ids end with one of them, {after.backlog_ids} of those newer versions of "
            "ids in the backlog"
        )
    produced = parts.produced
    if produced.backlog_committed_at is not None and produced.started_at is not None:
        took = produced.backlog_committed_at - produced.started_at
    print(
        f"  vs streaming  the largest dataset's {ids} ids need ≥ {ids / 100:.0f}s at 100 records/s through the API; "
        f"the backlog was caught up in {took:.1f}s"
    )


def _print_summary(parts: Parts, expect: Expectation, proof: Proof) -> None:
    snap = _snapshot(parts)
    produced = parts.produced
    began = produced.started_at or parts.started
    ended = parts.caught_up_at or time.monotonic()
    took = max(1e-9, ended - began)
    print("\nSummary")
    print(
        f"  elapsed       {ended - parts.started:.1f}s: {snap.produced} records produced in "
        f"{(produced.finished_at or began) - began:.1f}s, all committed {took:.1f}s after the first one"
    )
    print(
        f"  throughput    {snap.consumed / took:.0f} records/s consumed end to end; "
        f"Personalize {snap.sent / took:.0f} records/s in {snap.calls / took:.1f} calls/s"
    )
    for api, calls in proof.endpoint_stats["calls"].items():
        if sum(calls.values()):
            outcomes = ", ".join(f"{n} {outcome}" for outcome, n in calls.items() if n)
            records = proof.endpoint_stats["records"][api]["ok"]
            print(f"  {api:<13} {sum(calls.values())} calls ({outcomes}), {records} records stored")
    print(f"  records/call  {snap.records_per_call:.1f} on average, max {proof.endpoint_stats['max_records_per_call']}")
    if parts.options.catch_up:
        _print_bulk(parts, took)
    else:
        same = "=" if snap.consumed == snap.sent + snap.superseded + snap.dead_lettered else "≠"
        print(
            f"  accounting    {snap.consumed} consumed {same} {snap.sent} sent + {snap.superseded} superseded "
            f"(coalesced by id) + {snap.dead_lettered} dead-lettered"
        )
    _print_dead_letters(proof.dead_letters)
    print("  checks")
    for check in proof.checks:
        print(f"    [{'PASS' if check.ok else 'FAIL'}] {check.text}")
        for detail in check.details:
            print(f"           {detail}")
    verdict = "ALL CHECKS PASSED" if proof.passed else "SOME CHECKS FAILED"
    print(f"{verdict} (exit {EXIT_OK if proof.passed else EXIT_FAILURE})", flush=True)


def _print_dead_letters(records: list[Any]) -> None:
    headers = [{k: (v or b"").decode("utf-8", "replace") for k, v in r.headers} for r in records]
    stages = Counter(h.get(H_STAGE, "?") for h in headers)
    print(
        f"  dead-letter   {len(records)} records by stage: " + (", ".join(f"{s} {n}" for s, n in stages.items()) or "-")
    )
    examples: dict[str, str] = {}  # one per kind of problem: the reason without its "topic/partition@offset: "
    for h in headers:
        reason = h.get(H_REASON, "?")
        examples.setdefault(reason.partition(": ")[2], reason)
    for reason in list(examples.values())[:3]:
        print(f"                e.g. {reason[:160]}")
