"""Endpoint faults: throttling, 5xx answers and latency jitter (seeded) — retries absorb them all and the endpoint
still ends with exactly the last valid event per id; every invalid record is dead-lettered, no valid one is."""

from __future__ import annotations

import time

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
