"""Crash recovery: SIGKILL the ingestor at random moments of a live stream, restart it: nothing is lost or
misordered (the endpoint ends with the last valid event per id), every invalid record is dead-lettered."""

from __future__ import annotations

import random
import time

import pytest

from ingestor.sample import StreamSpec, generate
from tests.chaos.harness import (
    CommitWatcher,
    Feed,
    GroupOffsets,
    Scenario,
    assert_exact,
    committed_count,
    ingestors,
    wait_caught_up,
    write_config,
)
from tests.conftest import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

EVENTS = 20_000
RATE = 700  # events/s: the stream stays live for about 30 s, through (most) kills


async def test_sigkill_at_random_moments_loses_nothing(broker, unique, emulator, tmp_path, seed) -> None:
    rng = random.Random(seed)
    scenario = Scenario(unique("crash"))
    bootstrap = broker.bootstrap_servers
    await scenario.create_topics(bootstrap)
    events = generate(EVENTS, StreamSpec(items=2000, users=1000, hot_share=0.3, seed=seed))
    config = write_config(tmp_path / "ingestor.yaml", scenario, bootstrap, emulator.url)

    kills = rng.randint(3, 4)
    print(f"{kills} kills")
    started = time.monotonic()
    feed = Feed(bootstrap, events, scenario.rename, rate=RATE).start()
    async with (
        GroupOffsets(bootstrap, scenario.group) as offsets,
        CommitWatcher(bootstrap, scenario.group, scenario.partitions) as watcher,
        ingestors(tmp_path) as spawn,
    ):
        try:
            done_before = 0
            for n in range(1, kills + 1):
                proc = spawn.start(config)
                # A random moment: once this run committed a random number of records more than the last one...
                target = done_before + rng.randint(EVENTS // 40, EVENTS // 10)

                async def progressed(proc=proc, target=target) -> bool:
                    assert proc.running, f"{proc} died\n{proc.log_tail()}"
                    done = committed_count(await offsets.read(scenario.partitions))
                    return done >= min(target, len(feed.placed)) and (done >= target or feed.finished)

                await wait_until(progressed, timeout=60, interval=0.05, what=f"run {n} to commit {target} records")
                # ... then a random number of endpoint calls later: the kill lands mid-batch, mid-commit-interval.
                calls = (await emulator.client.stats())["total_calls"] + rng.randint(0, 30)

                async def called(calls=calls) -> bool:
                    return (await emulator.client.stats())["total_calls"] >= calls or feed.finished

                await wait_until(called, timeout=30, interval=0.01, what=f"{calls} endpoint calls")
                proc.kill()
                assert await proc.wait(10) == -9
                done_before = committed_count(await offsets.read(scenario.partitions))
                print(
                    f"run {n}: killed at {time.monotonic() - started:.1f}s with {done_before} records committed, "
                    f"{len(feed.placed)} produced"
                )

            final = spawn.start(config)
            produced = await feed.wait(60)
            assert not any(p.running for p in spawn.started[:-1])
            await wait_caught_up(offsets, produced.ends, timeout=60, processes=[final])
            await final.wait_for_log("partitions assigned")
            assert await final.stop(30) == 0, final.log_tail()
            stats = await emulator.client.stats()
            print(f"caught up after {time.monotonic() - started:.1f}s, {stats['total_calls']} endpoint calls")
        finally:
            await feed.cancel()

    assert produced.invalid, "the stream must hold invalid records"
    await assert_exact(emulator.client, bootstrap, scenario, produced, watcher)
