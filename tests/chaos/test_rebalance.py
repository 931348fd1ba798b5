"""Rebalance: two ingestors share a group on 4-partition topics; one is stopped (SIGTERM) mid-stream and the other
takes its partitions over. Nothing is lost (the endpoint ends exact) and the DLQ holds every invalid record."""

from __future__ import annotations

import ast
import random
import time

import pytest

from ingestor.sample import StreamSpec, generate
from tests.chaos.harness import (
    CommitWatcher,
    Feed,
    GroupOffsets,
    IngestorProcess,
    Scenario,
    assert_exact,
    committed_count,
    ingestors,
    wait_caught_up,
    write_config,
)
from tests.conftest import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

EVENTS = 16_000
ASSIGNED = "partitions assigned: "


def assignments(proc: IngestorProcess) -> list[set[str]]:
    """Every assignment the process logged, oldest first."""
    out = []
    for line in proc.log().splitlines():
        if ASSIGNED in line:
            listed = line.split(ASSIGNED, 1)[1].split("]; ", 1)[0] + "]"
            out.append(set(ast.literal_eval(listed)))
    return out


async def test_member_stopped_mid_stream_hands_over(broker, unique, start_emulator, tmp_path, seed) -> None:
    rng = random.Random(seed)
    # Some latency keeps calls in flight when the revocation comes.
    emulator = await start_emulator(faults={"latency_ms": 5, "jitter_ms": 15}, seed=seed)
    scenario = Scenario(unique("rebal"), items_partitions=4, users_partitions=4)
    bootstrap = broker.bootstrap_servers
    await scenario.create_topics(bootstrap)
    everything = {f"{tp.topic}[{tp.partition}]" for tp in scenario.partitions}
    events = generate(EVENTS, StreamSpec(items=2000, users=1000, hot_share=0.3, seed=seed))
    config = write_config(tmp_path / "ingestor.yaml", scenario, bootstrap, emulator.url)
    started = time.monotonic()
    feed = Feed(bootstrap, events, scenario.rename, rate=800).start()
    async with (
        GroupOffsets(bootstrap, scenario.group) as offsets,
        CommitWatcher(bootstrap, scenario.group, scenario.partitions) as watcher,
        ingestors(tmp_path) as spawn,
    ):
        try:
            first = spawn.start(config)
            second = spawn.start(config)

            def shared() -> bool:
                for p in (first, second):
                    assert p.running, f"{p} died\n{p.log_tail()}"
                a, b = assignments(first), assignments(second)
                return bool(a and b and a[-1] and b[-1] and a[-1] | b[-1] == everything and not a[-1] & b[-1])

            await wait_until(shared, timeout=40, what="both members to share the partitions")
            print(f"shared at {time.monotonic() - started:.1f}s: {sorted(assignments(first)[-1])}")

            target = int(rng.uniform(0.15, 0.45) * EVENTS)

            async def progressed() -> bool:
                return committed_count(await offsets.read(scenario.partitions)) >= target

            await wait_until(progressed, timeout=40, what=f"{target} records committed")
            assert not feed.finished, "the stream ended before the member left: make it longer"
            stopping = rng.choice([first, second])
            survivor = second if stopping is first else first
            seen = len(assignments(survivor))
            assert await stopping.stop(30) == 0, stopping.log_tail()
            print(f"stopped one member at {time.monotonic() - started:.1f}s, {len(feed.placed)} records produced")

            def took_over() -> bool:
                assert survivor.running, f"{survivor} died\n{survivor.log_tail()}"
                got = assignments(survivor)
                return len(got) > seen and got[-1] == everything

            await wait_until(took_over, timeout=40, what="the survivor to own every partition")
            produced = await feed.wait(60)
            await wait_caught_up(offsets, produced.ends, timeout=60, processes=[survivor])
            assert await survivor.stop(30) == 0, survivor.log_tail()
            print(f"caught up after {time.monotonic() - started:.1f}s")
        finally:
            await feed.cancel()

    await assert_exact(emulator.client, bootstrap, scenario, produced, watcher)
