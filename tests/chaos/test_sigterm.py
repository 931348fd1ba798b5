"""SIGTERM mid-stream: the drain ends within ``shutdown.drain_budget_s``, the exit code is 0, and the committed
offsets cover only what was delivered: every record below them is reflected in the endpoint or the DLQ."""

from __future__ import annotations

import random
import signal
import time

import pytest

from ingestor.sample import StreamSpec, generate
from tests.chaos.harness import (
    Feed,
    GroupOffsets,
    Scenario,
    committed_count,
    delivered_problems,
    dlq_problems,
    ingestors,
    read_dlq,
    summary,
    write_config,
)
from tests.conftest import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

BUDGET_S = 5.0
TEARDOWN_MARGIN_S = 3.0  # after the drain: DLQ flush (within the budget), final commit, leave the group, exit


# backlog "large": slow calls (2 in flight) against a fast stream build a backlog the drain cannot finish: the budget
# ends it, with calls in flight and records buffered. "small": the drain delivers everything fetched, in time.
BACKLOGS = {
    "large": ({"latency_ms": 40, "jitter_ms": 40}, 2),
    "small": ({"latency_ms": 2, "jitter_ms": 5}, 8),
}


@pytest.mark.parametrize("backlog", sorted(BACKLOGS))
async def test_sigterm_drains_within_budget_and_commits_only_delivered(
    broker, unique, start_emulator, tmp_path, seed, backlog
) -> None:
    rng = random.Random(seed)
    faults, in_flight = BACKLOGS[backlog]
    emulator = await start_emulator(faults=faults, seed=seed)
    scenario = Scenario(unique("sigterm"))
    bootstrap = broker.bootstrap_servers
    await scenario.create_topics(bootstrap)
    events = generate(15_000, StreamSpec(items=2000, users=1000, hot_share=0.3, seed=seed))
    config = write_config(
        tmp_path / "ingestor.yaml",
        scenario,
        bootstrap,
        emulator.url,
        personalize={"max_in_flight": in_flight},
        shutdown={"drain_budget_s": 60},  # overridden by the environment below
    )
    feed = Feed(bootstrap, events, scenario.rename, rate=1500).start()
    async with GroupOffsets(bootstrap, scenario.group) as offsets, ingestors(tmp_path) as spawn:
        try:
            proc = spawn.start(config, env={"INGESTOR_SHUTDOWN__DRAIN_BUDGET_S": str(BUDGET_S)})
            await proc.wait_for_log("partitions assigned")
            target = rng.randint(300, 2000)

            async def progressed() -> bool:
                assert proc.running, f"{proc} died\n{proc.log_tail()}"
                return committed_count(await offsets.read(scenario.partitions)) >= target

            await wait_until(progressed, timeout=40, what=f"{target} records committed")
            # A random moment a few endpoint calls later.
            calls = (await emulator.client.stats())["total_calls"] + rng.randint(1, 20)

            async def called() -> bool:
                return (await emulator.client.stats())["total_calls"] >= calls

            await wait_until(called, timeout=30, interval=0.01, what=f"{calls} endpoint calls")
            proc.send(signal.SIGTERM)
            code = await proc.wait(BUDGET_S + 30)
            assert proc.signalled_at is not None
            took = time.monotonic() - proc.signalled_at
            produced = await feed.end_early()
        finally:
            await feed.cancel()
        committed = await offsets.read(scenario.partitions)

    stopping = next(line for line in proc.log().splitlines() if "stopping: drained=" in line)
    print(f"exit {code} {took:.2f}s after SIGTERM; {committed_count(committed)} of {produced.total} committed")
    print(stopping[:300])
    assert code == 0, proc.log_tail()
    assert f"draining (budget {BUDGET_S:.0f}s)" in proc.log(), "INGESTOR_SHUTDOWN__DRAIN_BUDGET_S was not applied"
    assert took < BUDGET_S + TEARDOWN_MARGIN_S, f"exit took {took:.1f}s, budget {BUDGET_S}s"
    assert 0 < committed_count(committed) < produced.total, "SIGTERM must land mid-stream"
    if backlog == "small":
        assert "drained=True" in stopping, "a small backlog must drain completely within the budget"

    problems = await delivered_problems(emulator.client, produced, committed)
    assert problems == [], summary(problems)
    problems = dlq_problems(await read_dlq(bootstrap, scenario.dlq), produced, below=committed)
    assert problems == [], summary(problems)
