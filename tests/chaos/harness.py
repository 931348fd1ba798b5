"""Shared machinery of the chaos tests: topics and configs per test, the ingestor as a subprocess, committed offsets
read from the outside, catch-up detection, the dead-letter topic read back and classified, the final-state check.

Tests wait on conditions with deadlines (``tests.conftest.wait_until``), never on a bare sleep; the only sleeps here
pace the feed, the commit watcher's polling and a read's back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from ingestor.deadletter import H_OFFSET, H_PARTITION, H_REASON, H_STAGE, H_TOPIC
from ingestor.kafka_tools import create_topics, read_topic
from ingestor.sample import ITEMS_TOPIC, USERS_TOPIC, Event, Expectation
from tests.conftest import wait_until

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config"
ITEMS_ARN = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/ITEMS"
USERS_ARN = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/USERS"
GHOST_ITEMS_ARN = "arn:aws:personalize:us-east-1:123456789012:dataset/ghost/ITEMS"  # unknown to the endpoint


# ---------------------------------------------------------------------- names and configuration


@dataclass(frozen=True)
class Scenario:
    """One test's topics, DLQ and consumer group (unique per test: the session broker is shared)."""

    suffix: str
    items_partitions: int = 3
    users_partitions: int = 2

    @property
    def items(self) -> str:
        return f"{ITEMS_TOPIC}-{self.suffix}"

    @property
    def users(self) -> str:
        return f"{USERS_TOPIC}-{self.suffix}"

    @property
    def dlq(self) -> str:
        return f"dlq-{self.suffix}"

    @property
    def group(self) -> str:
        return f"ingestor-{self.suffix}"

    @property
    def rename(self) -> dict[str, str]:
        """The sample's topic names → this scenario's."""
        return {ITEMS_TOPIC: self.items, USERS_TOPIC: self.users}

    @property
    def partitions(self) -> list[TopicPartition]:
        return [TopicPartition(self.items, p) for p in range(self.items_partitions)] + [
            TopicPartition(self.users, p) for p in range(self.users_partitions)
        ]

    async def create_topics(self, bootstrap: str) -> None:
        await create_topics(
            bootstrap, {self.items: self.items_partitions, self.users: self.users_partitions, self.dlq: 1}
        )

    def routes(self, *, items_arn: str = ITEMS_ARN, users_arn: str = USERS_ARN) -> list[dict[str, Any]]:
        return [
            {
                "topic": self.items,
                "kind": "items",
                "dataset_arn": items_arn,
                "schema": str(CONFIG / "schemas/items.avsc"),
            },
            {
                "topic": self.users,
                "kind": "users",
                "dataset_arn": users_arn,
                "schema": str(CONFIG / "schemas/users.avsc"),
            },
        ]


def _merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def write_config(
    path: Path, scenario: Scenario, bootstrap: str, endpoint: str, **sections: Mapping[str, Any] | list[Any]
) -> Path:
    """An ingestor YAML for the chaos tests: fast group joins and commits, fast retries, no local rate limit to
    speak of (the emulator's quotas are off), metrics on a free loopback port. ``sections`` merge in."""
    config: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": scenario.group,
            "dead_letter_topic": scenario.dlq,
            # 3 s rather than 6 s: a restart after SIGKILL waits for the dead member's session to expire, and each
            # group join waits session_timeout/2 on the embedded broker (Tansu). Heartbeats every 0.5 s.
            "session_timeout_ms": 3000,
            "heartbeat_interval_ms": 500,
            "rebalance_timeout_ms": 20000,
            "commit_interval_s": 0.2,
            "request_timeout_ms": 10000,
            "dlq_timeout_s": 10,
        },
        "personalize": {
            "endpoint_url": endpoint,
            "aws_access_key_id": "test",
            "aws_secret_access_key": "test",
            "max_in_flight": 8,
            "connect_timeout_s": 2,
            "read_timeout_s": 10,
            "rate_limits": {"PutItems": 2000.0, "PutUsers": 2000.0},
            "retry": {"max_attempts": 20, "base_delay_s": 0.01, "max_delay_s": 0.5, "max_time_s": 120},
        },
        "routes": scenario.routes(),
        "batching": {"linger_ms": 10},
        "metrics": {"host": "127.0.0.1", "port": 0},
        "logging": {"level": "INFO", "format": "console"},
        "shutdown": {"drain_budget_s": 5},
    }
    config = _merge(config, sections)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


# ---------------------------------------------------------------------- the stream, with the offsets it landed at


@dataclass(frozen=True, slots=True)
class Placed:
    """An event of the sample stream and where the broker put it."""

    event: Event
    topic: str
    partition: int
    offset: int

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


@dataclass
class Produced:
    placed: list[Placed]
    expect: Expectation = field(default_factory=Expectation)

    def __post_init__(self) -> None:
        for p in self.placed:
            self.expect.add(p.event)

    @property
    def ends(self) -> dict[TopicPartition, int]:
        """The last offset written per partition (Tansu's end offsets are unreliable: use the producer's)."""
        out: dict[TopicPartition, int] = {}
        for p in self.placed:
            out[p.tp] = max(out.get(p.tp, -1), p.offset)
        return out

    @property
    def total(self) -> int:
        return len(self.placed)

    @property
    def invalid(self) -> list[Placed]:
        return [p for p in self.placed if not p.event.valid]


async def produce_stream(bootstrap: str, events: Iterable[Event], rename: Mapping[str, str]) -> Produced:
    """Produce every event at once; returns them with their offsets."""
    feed = Feed(bootstrap, events, rename, rate=None)
    feed.start()
    return await feed.wait(120)


class Feed:
    """Produces a stream in the background, in chunks at a steady ``rate`` (events/s; None: as fast as possible),
    as a live change stream arrives. ``placed`` grows as the broker acknowledges each chunk."""

    def __init__(
        self,
        bootstrap: str,
        events: Iterable[Event],
        rename: Mapping[str, str],
        *,
        rate: float | None,
        chunk: int = 200,
    ) -> None:
        self.bootstrap = bootstrap
        self.events = list(events)
        self.rename = rename
        self.rate = rate
        self.chunk = chunk
        self.placed: list[Placed] = []
        self._task: asyncio.Task[None] | None = None
        self._ending = False

    @property
    def total(self) -> int:
        return len(self.events)

    @property
    def finished(self) -> bool:
        return self._task is not None and self._task.done()

    def start(self) -> Feed:
        self._task = asyncio.create_task(self._run(), name="feed")
        return self

    async def wait(self, timeout: float) -> Produced:
        assert self._task is not None
        async with asyncio.timeout(timeout):
            await self._task
        return Produced(list(self.placed))

    async def end_early(self, timeout: float = 30.0) -> Produced:
        """Stop producing after the chunk in progress (every record sent is then in ``placed``)."""
        self._ending = True
        return await self.wait(timeout)

    async def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5, acks="all")
        await producer.start()
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            for first in range(0, len(self.events), self.chunk):
                if self._ending:
                    break
                chunk = self.events[first : first + self.chunk]
                futures = [await producer.send(self.rename[e.topic], value=e.value, key=e.key) for e in chunk]
                metas = await asyncio.gather(*futures)
                self.placed += [Placed(e, m.topic, m.partition, m.offset) for e, m in zip(chunk, metas, strict=True)]
                if self.rate is not None:  # pacing, not waiting for a condition
                    await asyncio.sleep(max(0.0, started + len(self.placed) / self.rate - loop.time()))
        finally:
            await producer.stop()


class IngestorProcess:
    """``ingestor run --config FILE`` in a subprocess; its stdout and stderr go to ``log_path``."""

    def __init__(self, config: Path, log_path: Path, *, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.log_path = log_path
        self.env = {**os.environ, "AWS_EC2_METADATA_DISABLED": "true", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.signalled_at: float | None = None

    def start(self) -> IngestorProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ingestor.cli", "run", "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=REPO,
            )
        return self

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.signalled_at = time.monotonic()
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: no drain, no final commit, no leaving the group."""
        if self.running:
            self.send(signal.SIGKILL)

    async def wait(self, timeout: float) -> int:
        await wait_until(lambda: not self.running, timeout=timeout, interval=0.02, what=f"{self} to exit")
        code = self.returncode
        assert code is not None
        return code

    async def wait_for_log(self, text: str, timeout: float = 30.0, *, count: int = 1) -> None:
        """Until the log holds ``text`` (``count`` times); fails at once if the process exits."""

        def logged() -> bool:
            if self.log().count(text) >= count:
                return True
            assert self.running, f"{self} exited while waiting for {text!r} in its log\n{self.log_tail()}"
            return False

        await wait_until(logged, timeout=timeout, interval=0.05, what=f"{text!r} in the log of {self}")

    async def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for the exit code."""
        if self.running:
            self.send(signal.SIGTERM)
        return await self.wait(timeout)

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def health_url(self) -> str:
        """``http://host:port`` of /metrics, /healthz and /readyz, from the log line saying where (port 0: the OS
        picked it)."""
        match = re.search(r"metrics and health on (http://[\w.\-]+:\d+)", self.log())
        assert match, f"{self} has not said where it serves metrics\n{self.log_tail()}"
        return match.group(1)

    async def get(self, path: str) -> tuple[int, str]:
        """GET ``path`` (``/readyz``, ``/metrics``...) from the health server: (status, body)."""
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
            session.get(self.health_url() + path) as response,
        ):
            return response.status, await response.text()

    def __repr__(self) -> str:
        pid = self.proc.pid if self.proc else None
        return f"<ingestor pid={pid} rc={self.returncode} log={self.log_path}>"


@contextlib.asynccontextmanager
async def ingestors(tmp_path: Path) -> AsyncIterator[Spawner]:
    """Starts ingestor subprocesses and makes sure none outlives the test; prints their log tails on failure."""
    spawner = Spawner(tmp_path)
    try:
        yield spawner
    except BaseException:
        for p in spawner.started:
            print(f"----- {p}\n{p.log_tail(60)}")
        raise
    finally:
        for p in spawner.started:
            if p.running:
                p.kill()
                with contextlib.suppress(AssertionError):
                    await p.wait(10)


class Spawner:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[IngestorProcess] = []

    def start(self, config: Path, *, env: Mapping[str, str] | None = None) -> IngestorProcess:
        log = self.tmp_path / f"ingestor-{len(self.started) + 1}.log"
        proc = IngestorProcess(config, log, env=env).start()
        self.started.append(proc)
        return proc


# ---------------------------------------------------------------------- committed offsets, from the outside


class GroupOffsets:
    """Reads a group's committed offsets (OffsetFetch) without joining the group."""

    def __init__(self, bootstrap: str, group: str) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False, request_timeout_ms=10000
        )

    async def __aenter__(self) -> GroupOffsets:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def read(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int | None]:
        partitions = list(partitions)
        for attempt in range(5):  # the broker connection may be cut under our feet (test_broker_disconnects)
            try:
                async with asyncio.timeout(10):
                    return {tp: await self._consumer.committed(tp) for tp in partitions}
            except (KafkaError, TimeoutError):
                if attempt == 4:
                    raise
                await asyncio.sleep(0.2)  # back-off before asking again
        raise AssertionError("unreachable")


class CommitWatcher:
    """Polls a group's committed offsets in the background and records any that went backwards: a member that
    committed a partition it no longer owns (invariant 7) or a commit past undelivered records being corrected."""

    def __init__(self, bootstrap: str, group: str, partitions: Iterable[TopicPartition]) -> None:
        self._offsets = GroupOffsets(bootstrap, group)
        self._partitions = list(partitions)
        self.latest: dict[TopicPartition, int] = {}
        self.regressions: list[str] = []
        self.polls = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> CommitWatcher:
        await self._offsets.__aenter__()
        self._task = asyncio.create_task(self._watch(), name="commit watcher")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._offsets.__aexit__()

    async def _watch(self) -> None:
        while True:
            with contextlib.suppress(KafkaError, TimeoutError):
                for tp, off in (await self._offsets.read(self._partitions)).items():
                    if off is None:
                        continue
                    before = self.latest.get(tp)
                    if before is not None and off < before:
                        self.regressions.append(f"{tp.topic}[{tp.partition}]: committed {off} after {before}")
                    self.latest[tp] = off if before is None else max(before, off)
                self.polls += 1
            await asyncio.sleep(0.05)  # polling interval


def committed_count(committed: Mapping[TopicPartition, int | None]) -> int:
    """Records below the committed offsets (every test topic is new: offsets start at 0)."""
    return sum(off or 0 for off in committed.values())


def caught_up(committed: Mapping[TopicPartition, int | None], ends: Mapping[TopicPartition, int]) -> bool:
    return all(committed.get(tp) == last + 1 for tp, last in ends.items())


async def wait_caught_up(
    offsets: GroupOffsets,
    ends: Mapping[TopicPartition, int],
    *,
    timeout: float,
    processes: Sequence[IngestorProcess] = (),
) -> dict[TopicPartition, int | None]:
    """Until the group committed past the last produced record of every partition; fails early if a process died."""
    last: dict[TopicPartition, int | None] = {}

    async def done() -> bool:
        for p in processes:
            if not p.running:
                raise AssertionError(f"{p} exited before catching up; committed {last}\n{p.log_tail()}")
        last.update(await offsets.read(ends))
        return caught_up(last, ends)

    try:
        await wait_until(done, timeout=timeout, interval=0.2, what="the group to commit every produced record")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; committed {last}, want {dict(ends)} + 1") from None
    return last


# ---------------------------------------------------------------------- the dead-letter topic


@dataclass(frozen=True, slots=True)
class DeadLetter:
    topic: str
    partition: int
    offset: int
    stage: str
    reason: str
    value: bytes | None
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def where(self) -> tuple[str, int, int]:
        return (self.topic, self.partition, self.offset)


async def read_dlq(bootstrap: str, topic: str, *, idle_s: float = 1.5) -> list[DeadLetter]:
    out = []
    for r in await read_topic(bootstrap, topic, idle_s=idle_s):
        h = {k: (v or b"").decode("utf-8", "replace") for k, v in r.headers}
        out.append(
            DeadLetter(h[H_TOPIC], int(h[H_PARTITION]), int(h[H_OFFSET]), h[H_STAGE], h.get(H_REASON, ""), r.value, h)
        )
    return out


def dlq_problems(
    dead: Sequence[DeadLetter], produced: Produced, *, below: Mapping[TopicPartition, int | None] | None = None
) -> list[str]:
    """Every invalid record (optionally: only those below ``below``'s offsets) is in the DLQ, bytes unchanged —
    duplicates allowed — and no valid record is."""
    by_where = {(p.topic, p.partition, p.offset): p for p in produced.placed}
    seen = {d.where for d in dead}
    problems = []
    for p in produced.invalid:
        if below is not None and p.offset >= (below.get(p.tp) or 0):
            continue
        if (p.topic, p.partition, p.offset) not in seen:
            problems.append(f"invalid record {p.topic}/{p.partition}@{p.offset} ({p.event.problem}) not in the DLQ")
    for d in dead:
        src = by_where.get(d.where)
        if src is None:
            problems.append(f"DLQ record {d.where} names no produced record")
        elif src.event.valid:
            problems.append(f"valid record {d.where} dead-lettered ({d.stage}): {d.reason[:200]}")
        elif d.value != src.event.value:
            problems.append(f"DLQ record {d.where} does not hold the original bytes")
    return problems


# ---------------------------------------------------------------------- the endpoint's final state


async def state_mismatches(client: Any, expect: Expectation) -> list[str]:
    """The endpoint's items and users versus the last valid event per id (empty when the run is correct)."""
    items = expect.mismatches(ITEMS_TOPIC, await client.records(ITEMS_ARN))
    users = expect.mismatches(USERS_TOPIC, await client.records(USERS_ARN))
    return [f"items {m}" for m in items] + [f"users {m}" for m in users]


async def assert_exact(
    client: Any, bootstrap: str, scenario: Scenario, produced: Produced, watcher: CommitWatcher
) -> None:
    """The promise, end to end: committed offsets never went backwards, the endpoint holds the last valid event per
    id, and the DLQ holds every invalid record (bytes unchanged) and no valid one."""
    assert watcher.polls > 0 and watcher.regressions == [], watcher.regressions
    problems = await state_mismatches(client, produced.expect)
    assert problems == [], summary(problems)
    problems = dlq_problems(await read_dlq(bootstrap, scenario.dlq), produced)
    assert problems == [], summary(problems)


async def delivered_problems(
    client: Any, produced: Produced, committed: Mapping[TopicPartition, int | None]
) -> list[str]:
    """Everything below the committed offsets is reflected in the endpoint: for each id, the endpoint holds a version
    not older than its last valid event below the committed offset (a newer one is fine: at-least-once)."""
    stored = {ITEMS_TOPIC: await client.records(ITEMS_ARN), USERS_TOPIC: await client.records(USERS_ARN)}
    versions: dict[tuple[str, str], list[Placed]] = {}  # (sample topic, id) → valid events, in stream order
    for p in produced.placed:
        if p.event.valid:
            versions.setdefault((p.event.topic, p.event.record_id), []).append(p)
    problems = []
    for (topic, rid), placed in versions.items():
        below = [i for i, p in enumerate(placed) if p.offset < (committed.get(p.tp) or 0)]
        have = stored[topic].get(rid)
        if have is None:
            if below:
                p = placed[below[-1]]
                problems.append(f"{rid}: missing, but {p.topic}/{p.partition}@{p.offset} is committed")
            continue
        matches = [i for i, p in enumerate(placed) if same_properties(have, p.event.expected or {})]
        if not matches:
            problems.append(f"{rid}: holds {have}, which no event of this id carries")
        elif below and matches[-1] < below[-1]:
            p = placed[below[-1]]
            problems.append(f"{rid}: holds version {matches[-1]}, older than committed {below[-1]} ({p.offset})")
    return problems


def same_properties(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return a.keys() == b.keys() and all(
        a[k] == b[k] or (isinstance(a[k], int | float) and abs(float(a[k]) - float(b[k])) < 1e-6) for k in a
    )


def summary(problems: Sequence[str], limit: int = 15) -> str:
    more = f"\n... and {len(problems) - limit} more" if len(problems) > limit else ""
    return f"{len(problems)} problems:\n" + "\n".join(problems[:limit]) + more
