"""Endpoint faults: throttling, 5xx answers and latency jitter (seeded) — retries absorb them all and the endpoint
still ends with exactly the last valid event per id; every invalid record is dead-lettered, no valid one is. Random
throttling (not caused by our rate) must not drag the call rate down: slowing down would not lower it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import pytest

from ingestor.sample import StreamSpec, generate
from tests.chaos.harness import (
    CommitWatcher,
    Feed,
    GroupOffsets,
    Scenario,
    assert_exact,
    ingestors,
    wait_caught_up,
    write_config,
)
from tests.conftest import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

FAULTS = {"throttle_rate": 0.2, "fail_rate": 0.05, "latency_ms": 5, "jitter_ms": 20}


async def test_throttling_5xx_and_jitter_end_exact(broker, unique, start_emulator, tmp_path, seed) -> None:
    emulator = await start_emulator(faults=FAULTS, seed=seed)
    scenario = Scenario(unique("faults"))
    bootstrap = broker.bootstrap_servers
    await scenario.create_topics(bootstrap)
    events = generate(12_000, StreamSpec(items=2000, users=1000, hot_share=0.3, seed=seed))
    config = write_config(
        tmp_path / "ingestor.yaml",
        scenario,
        bootstrap,
        emulator.url,
        personalize={"retry": {"max_attempts": 20, "base_delay_s": 0.01, "max_delay_s": 0.2}},
    )
    started = time.monotonic()
    feed = Feed(bootstrap, events, scenario.rename, rate=1000).start()
    async with (
        GroupOffsets(bootstrap, scenario.group) as offsets,
        CommitWatcher(bootstrap, scenario.group, scenario.partitions) as watcher,
        ingestors(tmp_path) as spawn,
    ):
        try:
            proc = spawn.start(config)
            produced = await feed.wait(60)
            await wait_caught_up(offsets, produced.ends, timeout=60, processes=[proc])
            assert await proc.stop(30) == 0, proc.log_tail()
        finally:
            await feed.cancel()
    stats = await emulator.client.stats()
    print(f"caught up after {time.monotonic() - started:.1f}s; endpoint calls {stats['calls']}")

    calls = stats["calls"]
    assert calls["PutItems"]["throttled"] + calls["PutUsers"]["throttled"] > 0
    assert calls["PutItems"]["server_error"] + calls["PutUsers"]["server_error"] > 0
    assert calls["PutItems"]["invalid_input"] + calls["PutUsers"]["invalid_input"] == 0
    await assert_exact(emulator.client, bootstrap, scenario, produced, watcher)


RATE = 20.0  # calls/s configured per API: the limiter, not the endpoint's quota (off), is what paces the calls


async def test_random_throttling_keeps_the_configured_rate(broker, unique, start_emulator, tmp_path, seed) -> None:
    # 20 % of calls throttled at random and 5 % 5xx, no quota: throttles that slowing down does not lower. A limiter
    # that cut its rate on each of them sank to ~1 call/s per API here (issue 9); it must keep the configured rate.
    emulator = await start_emulator(faults={"throttle_rate": 0.2, "fail_rate": 0.05}, seed=seed)
    scenario = Scenario(unique("random-throttling"))
    bootstrap = broker.bootstrap_servers
    await scenario.create_topics(bootstrap)
    events = generate(12_000, StreamSpec(items=6000, users=3000, hot_share=0.0, seed=seed))
    config = write_config(
        tmp_path / "ingestor.yaml",
        scenario,
        bootstrap,
        emulator.url,
        personalize={"rate_limits": {"PutItems": RATE, "PutUsers": RATE}},
    )
    produced = await Feed(bootstrap, events, scenario.rename, rate=None).start().wait(60)  # a backlog: calls are full
    apis = ("PutItems", "PutUsers")
    async with (
        GroupOffsets(bootstrap, scenario.group) as offsets,
        CommitWatcher(bootstrap, scenario.group, scenario.partitions) as watcher,
        ingestors(tmp_path) as spawn,
    ):
        proc = spawn.start(config)

        async def calls() -> dict[str, int]:
            stats = (await emulator.client.stats())["calls"]
            return {api: sum(stats[api].values()) for api in apis}

        # Past start-up and the limiter's first experiment (a few windows of 40 calls), then a 10 s window.
        await wait_until(lambda: _all_above(calls(), 100), timeout=60, what="calls flowing on both APIs")
        before, t0 = await calls(), time.monotonic()
        await asyncio.sleep(10)  # the measurement window (a rate over time), not a wait for a condition
        after, t1 = await calls(), time.monotonic()
        rates = {api: (after[api] - before[api]) / (t1 - t0) for api in apis}
        print(f"attempted calls/s under 20 % random throttling + 5 % 5xx, {RATE:g}/s configured: {rates}")
        # Loose (the CPU is shared): well above the collapsed level of ~1/s, and most of the configured rate.
        assert all(rate >= 0.5 * RATE for rate in rates.values()), rates
        await wait_caught_up(offsets, produced.ends, timeout=90, processes=[proc])
        assert await proc.stop(30) == 0, proc.log_tail()
    stats = await emulator.client.stats()
    assert stats["calls"]["PutItems"]["throttled"] + stats["calls"]["PutUsers"]["throttled"] > 0
    await assert_exact(emulator.client, bootstrap, scenario, produced, watcher)


async def _all_above(counts: Awaitable[dict[str, int]], least: int) -> bool:
    return all(n >= least for n in (await counts).values())
