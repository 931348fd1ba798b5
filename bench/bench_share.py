"""Quota sharing benchmark: replicas share one dataset group's quota by demand (issue 12, part 1).

Against the embedded broker and the local endpoint with its quota ON (PutItems 10 calls/s for the dataset group),
with replicas as Service instances in this process:

* skew: two replicas, the backlog only on one replica's partitions — by demand, then by partition count (the old way)
  for comparison: the dataset's calls/s as a share of the quota from 15 s after the backlog appeared, and how soon a
  3-s window first reached 90 %;
* balanced: two replicas, the backlog on every partition;
* shift: ~8 s of backlog on one replica's partitions, then a long one on the other's (demand moves between them);
* churn: replicas join and leave during the run (1 → 2 → 3 → 2 → 1 → 2) with a backlog everywhere: the worst share of
  throttled calls in any 10-s window.

Targets: skew ≥ 90 % of the quota within 15 s, balanced ≥ 95 %, ≤ 1 % of calls throttled, churn no 10-s window above
5 % throttled. Prints one table and the figures as JSON.

    .venv/bin/python bench/bench_share.py [--quick] [--window 20] [--step 12]

``--quick`` (the CI smoke test, tests/integration/test_bench_share.py) skips the reference runs by partition count
and shortens the windows: it shows the benchmark works, not that the targets hold.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import itertools

from ingestor.app import Service
from ingestor.broker import EmbeddedBroker
from ingestor.config import Settings
from ingestor.emulator.app import RunningEmulator, running_emulator
from ingestor.emulator.config import EmulatorConfig
from ingestor.kafka_tools import create_topics

CONFIG = Path(__file__).resolve().parents[1] / "config"
ARN = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/ITEMS"
QUOTA = 10.0
API = "PutItems"


def settings(bootstrap: str, endpoint: str, tag: str, mode: str) -> Settings:
    return Settings(
        kafka={
            "bootstrap_servers": bootstrap,
            "group_id": f"share-{tag}",
            "dead_letter_topic": f"dlq-{tag}",
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 500,
        },
        personalize={
            "endpoint_url": endpoint,
            "aws_access_key_id": "x",
            "aws_secret_access_key": "x",
            "quota_sharing": {"mode": mode},
        },
        routes=[
            {"topic": f"items-{tag}", "kind": "items", "dataset_arn": ARN, "schema": CONFIG / "schemas/items.avsc"}
        ],
        metrics={"port": 0},
        shutdown={"drain_budget_s": 5},
    )


async def produce_to(bootstrap: str, topic: str, partitions: list[int], count: int, start: int = 0) -> None:
    """``count`` distinct item records spread over ``partitions`` (explicitly: the skew must land where we say)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks="all")
    await producer.start()
    try:
        futures = []
        for i in range(start, start + count):
            value = {"ITEM_ID": f"i{i}", "PRICE": 1.5, "CREATION_TIMESTAMP": 1_700_000_000}
            part = partitions[i % len(partitions)]
            futures.append(await producer.send(topic, json.dumps(value).encode(), key=f"i{i}".encode(), partition=part))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


@dataclass
class Sampler:
    """The endpoint's call counters every 0.5 s: (time, ok, throttled)."""

    emu: RunningEmulator
    samples: list[tuple[float, int, int]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            stats = await self.emu.client.stats()
            calls = stats["calls"][API]
            self.samples.append((time.monotonic(), int(calls["ok"]), int(calls["throttled"])))
            await asyncio.sleep(0.5)

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    def between(self, t0: float, t1: float) -> tuple[float, int, int]:
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2:
            return 0.0, 0, 0
        (a, ok0, th0), (b, ok1, th1) = inside[0], inside[-1]
        return b - a, ok1 - ok0, th1 - th0

    def quota_pct(self, t0: float, t1: float) -> float:
        elapsed, ok, _ = self.between(t0, t1)
        return 100 * ok / elapsed / QUOTA if elapsed else 0.0

    def throttled_pct(self, t0: float, t1: float) -> float:
        _, ok, th = self.between(t0, t1)
        return 100 * th / max(1, ok + th)

    def first_reaching(self, t0: float, pct: float, span: float = 3.0) -> float | None:
        for t, _, _ in self.samples:
            if t - span >= t0 and self.quota_pct(t - span, t) >= pct:
                return t - t0
        return None

    def worst_window(self, t0: float, t1: float, span: float = 10.0) -> float:
        worst = 0.0
        for t, _, _ in self.samples:
            if t0 <= t - span and t <= t1:
                worst = max(worst, self.throttled_pct(t - span, t))
        return worst


class Replicas:
    def __init__(self, make: Callable[[], Settings]) -> None:
        self._make = make
        self.services: list[Service] = []
        self.runs: dict[Service, asyncio.Task[int]] = {}

    def add(self) -> Service:
        service = Service(self._make(), registry=CollectorRegistry())
        self.services.append(service)
        self.runs[service] = asyncio.create_task(service.run())
        return service

    async def remove(self, service: Service) -> None:
        service.stop_requested.set()
        await self.runs.pop(service)
        self.services.remove(service)

    async def stop(self) -> None:
        for s in list(self.services):
            s.stop_requested.set()
        await asyncio.gather(*self.runs.values())


async def wait_for(predicate: Callable[[], bool | Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def settled(services: list[Service], partitions: int) -> bool:
    """Every replica joined and the partitions are spread over all of them."""
    if not all(s.source is not None and s.source.joined for s in services):
        return False
    owned = [len(s.source.assignment()) for s in services if s.source is not None]
    return sum(owned) == partitions and all(owned)


async def skew(broker: EmbeddedBroker, emu: RunningEmulator, mode: str, window: float) -> dict[str, Any]:
    tag = f"skew-{mode}-{int(time.time() * 1000)}"
    topic = f"items-{tag}"
    await create_topics(broker.bootstrap_servers, {topic: 4, f"dlq-{tag}": 1})
    replicas = Replicas(lambda: settings(broker.bootstrap_servers, emu.url, tag, mode))
    a, b = replicas.add(), replicas.add()
    sampler = Sampler(emu)
    try:
        await wait_for(lambda: settled([a, b], 4), 60, "two replicas sharing 4 partitions")
        await asyncio.sleep(2)  # a few heartbeats: each replica sees the other
        assert a.source is not None
        busy = sorted(tp.partition for tp in a.source.assignment())
        sampler.start()
        t0 = time.monotonic()
        await produce_to(broker.bootstrap_servers, topic, busy, int(QUOTA * 10 * (15 + window + 10)))
        await asyncio.sleep(15 + window)
        t_end = time.monotonic()
    finally:
        await sampler.stop()
        await replicas.stop()
    reached = sampler.first_reaching(t0, 90.0)
    return {
        "quota %": sampler.quota_pct(t0 + 15, t_end),
        "throttled %": sampler.throttled_pct(t0, t_end),
        "s to 90 %": reached,
        "busy partitions": len(busy),
    }


async def shift(broker: EmbeddedBroker, emu: RunningEmulator, window: float) -> dict[str, Any]:
    """The backlog moves: ~8 s of work on one replica's partitions, then a long backlog on the other's."""
    tag = f"shift-{int(time.time() * 1000)}"
    topic = f"items-{tag}"
    await create_topics(broker.bootstrap_servers, {topic: 4, f"dlq-{tag}": 1})
    replicas = Replicas(lambda: settings(broker.bootstrap_servers, emu.url, tag, "demand"))
    a, b = replicas.add(), replicas.add()
    sampler = Sampler(emu)
    try:
        await wait_for(lambda: settled([a, b], 4), 60, "two replicas sharing 4 partitions")
        await asyncio.sleep(2)
        assert a.source is not None and b.source is not None
        first = sorted(tp.partition for tp in a.source.assignment())
        second = sorted(tp.partition for tp in b.source.assignment())
        sampler.start()
        t0 = time.monotonic()
        await produce_to(broker.bootstrap_servers, topic, first, int(QUOTA * 10 * 8))
        await asyncio.sleep(6)
        await produce_to(broker.bootstrap_servers, topic, second, int(QUOTA * 10 * (window + 20)), start=10**6)
        await asyncio.sleep(window + 6)
        t_end = time.monotonic()
    finally:
        await sampler.stop()
        await replicas.stop()
    return {
        "quota %": sampler.quota_pct(t0 + 3, t_end),
        "throttled %": sampler.throttled_pct(t0, t_end),
        "worst 10 s throttled %": sampler.worst_window(t0, t_end),
    }


async def balanced(broker: EmbeddedBroker, emu: RunningEmulator, window: float) -> dict[str, Any]:
    tag = f"bal-{int(time.time() * 1000)}"
    topic = f"items-{tag}"
    await create_topics(broker.bootstrap_servers, {topic: 4, f"dlq-{tag}": 1})
    replicas = Replicas(lambda: settings(broker.bootstrap_servers, emu.url, tag, "demand"))
    a, b = replicas.add(), replicas.add()
    sampler = Sampler(emu)
    try:
        await wait_for(lambda: settled([a, b], 4), 60, "two replicas sharing 4 partitions")
        sampler.start()
        t0 = time.monotonic()
        await produce_to(broker.bootstrap_servers, topic, [0, 1, 2, 3], int(QUOTA * 10 * (5 + window + 10)))
        await asyncio.sleep(5 + window)
        t_end = time.monotonic()
    finally:
        await sampler.stop()
        await replicas.stop()
    return {
        "quota %": sampler.quota_pct(t0 + 5, t_end),
        "throttled %": sampler.throttled_pct(t0, t_end),
        "s to 90 %": sampler.first_reaching(t0, 90.0),
    }


async def churn(broker: EmbeddedBroker, emu: RunningEmulator, step: float, mode: str = "demand") -> dict[str, Any]:
    """1 → 2 → 3 → 2 → 1 → 2 replicas, one change every ``step`` seconds, a backlog on all 6 partitions."""
    tag = f"churn-{mode}-{int(time.time() * 1000)}"
    topic = f"items-{tag}"
    await create_topics(broker.bootstrap_servers, {topic: 6, f"dlq-{tag}": 1})
    steps = 6
    await produce_to(broker.bootstrap_servers, topic, list(range(6)), int(QUOTA * 10 * (steps * step + 20)))
    replicas = Replicas(lambda: settings(broker.bootstrap_servers, emu.url, tag, mode))
    sampler = Sampler(emu)
    first = replicas.add()
    counts = []
    try:
        await wait_for(lambda: settled([first], 6), 60, "the first replica")
        sampler.start()
        t0 = time.monotonic()
        plan = ["add", "add", "remove", "remove", "add"]
        marks = [t0]
        for action in plan:
            await asyncio.sleep(step)
            marks.append(time.monotonic())
            if action == "add":
                replicas.add()
            else:
                await replicas.remove(replicas.services[0])  # the oldest leaves (a clean stop)
            counts.append(len(replicas.services))
        await asyncio.sleep(step)
        t_end = time.monotonic()
        marks.append(t_end)
    finally:
        await sampler.stop()
        await replicas.stop()
    return {
        "quota %": sampler.quota_pct(t0, t_end),
        "quota % per phase": [round(sampler.quota_pct(a, b), 1) for a, b in itertools.pairwise(marks)],
        "throttled %": sampler.throttled_pct(t0, t_end),
        "worst 10 s throttled %": sampler.worst_window(t0, t_end),
        "replicas": "1→" + "→".join(map(str, counts)),
    }


async def main(window: float, step: float, references: bool = True) -> int:
    logging.basicConfig(level=logging.WARNING)
    broker = EmbeddedBroker().start()
    config = EmulatorConfig.load(CONFIG / "emulator.yaml", quotas={"enabled": True, "put_items": QUOTA})
    results: dict[str, dict[str, Any]] = {}
    try:
        async with running_emulator(config) as emu:
            results["skew, by demand"] = await skew(broker, emu, "demand", window)
            if references:
                results["skew, by partitions"] = await skew(broker, emu, "partitions", window)
            results["balanced, by demand"] = await balanced(broker, emu, window)
            if references:
                results["shift, by demand"] = await shift(broker, emu, window)
            results["churn, by demand"] = await churn(broker, emu, step)
            if references:
                results["churn, by partitions"] = await churn(broker, emu, step, "partitions")
    finally:
        broker.stop()
    checks = {
        "skew, by demand": lambda r: r["quota %"] >= 90 and r["s to 90 %"] is not None and r["s to 90 %"] <= 15,
        "balanced, by demand": lambda r: r["quota %"] >= 95,
        "churn, by demand": lambda r: r["worst 10 s throttled %"] <= 5,
        "shift, by demand": lambda r: r["worst 10 s throttled %"] <= 5,  # the share is informational here
    }
    checks = {name: check for name, check in checks.items() if name in results}
    met = {name: check(results[name]) and results[name]["throttled %"] <= 1 for name, check in checks.items()}
    met["churn, by demand"] = checks["churn, by demand"](results["churn, by demand"])
    cols = ["quota %", "throttled %", "s to 90 %", "worst 10 s throttled %"]
    print(f"{'scenario (PutItems, quota 10/s)':<32}" + "".join(f"{c:>24}" for c in cols) + f"{'target':>10}")
    for name, r in results.items():
        cells = "".join(f"{_fmt(r.get(c)):>24}" for c in cols)
        print(f"{name:<32}{cells}{('MET' if met[name] else 'NOT MET') if name in met else '(reference)':>10}")
    print(
        "targets: skew ≥ 90 % within 15 s, balanced ≥ 95 %, ≤ 1 % throttled (shift: only throttling); churn "
        f"({results['churn, by demand']['replicas']} replicas) ≤ 5 % throttled in every 10-s window"
    )
    print(
        json.dumps(
            {
                "benchmark": "bench_share",
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}",
                "window_s": window,
                "churn_step_s": step,
                "results": results,
                "met": met,
            }
        )
    )
    return 0 if all(met.values()) else 1


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short windows, no references: a smoke test")
    parser.add_argument("--window", type=float, default=20.0, help="measurement window in seconds (skew, balanced)")
    parser.add_argument("--step", type=float, default=12.0, help="seconds between replica changes (churn)")
    args = parser.parse_args()
    if args.quick:  # a smoke test (CI): no reference runs, short windows
        sys.exit(asyncio.run(main(5.0, 5.0, references=False)))
    sys.exit(asyncio.run(main(args.window, args.step)))
