"""A fatal route: the items route names a dataset the endpoint does not know (ResourceNotFoundException).

``personalize.on_fatal: stop``: the process exits 3 in bounded time, commits nothing on that route past its first
undeliverable record, and says which ARN. ``hold`` (the default): only that dataset is held — the users route streams
on and converges, nothing of items is committed past its first undeliverable record, /readyz fails naming the ARN,
the process keeps running (SIGTERM: exit 3, in bounded time); once the dataset exists, a probe call finds out and the
items route converges too, without a restart."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest
from aiokafka import TopicPartition

from ingestor.emulator.config import DatasetConfig
from ingestor.emulator.datasets import Dataset
from ingestor.sample import ITEMS_TOPIC, USERS_TOPIC, StreamSpec, generate
from tests.chaos.harness import (
    CONFIG,
    GHOST_ITEMS_ARN,
    USERS_ARN,
    GroupOffsets,
    Produced,
    Scenario,
    dlq_problems,
    ingestors,
    produce_stream,
    read_dlq,
    summary,
    wait_caught_up,
    write_config,
)
from tests.conftest import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

EXIT_OK, EXIT_FATAL = 0, 3
BOUND_S = 30.0
DRAIN_BUDGET_S = 5.0  # the harness's shutdown.drain_budget_s
TEARDOWN_MARGIN_S = 5.0  # after the drain: DLQ flush, final commit, leave the group, exit
PROBE_S = 0.5  # personalize.fatal_retry_s of the hold tests
HELD_LINE = "this dataset is held"


async def produce(bootstrap: str, scenario: Scenario, seed: int) -> Produced:
    await scenario.create_topics(bootstrap)
    return await produce_stream(bootstrap, generate(3000, StreamSpec(items=300, users=100, seed=seed)), scenario.rename)


def first_valid_items(produced: Produced) -> dict[TopicPartition, int]:
    """The first record of each items partition that could only be delivered to the unknown dataset."""
    first: dict[TopicPartition, int] = {}
    for p in produced.placed:
        if p.event.topic == ITEMS_TOPIC and p.event.valid and p.tp not in first:
            first[p.tp] = p.offset
    assert first
    return first


def assert_items_not_committed_past(
    committed: dict[TopicPartition, int | None], first: dict[TopicPartition, int]
) -> None:
    for tp, offset in first.items():
        assert (committed[tp] or 0) <= offset, f"{tp} committed {committed[tp]} past its first valid record {offset}"


def putitems_calls(stats: dict[str, Any]) -> int:
    return sum(stats["calls"]["PutItems"].values())


async def test_unknown_dataset_stops_the_service_without_committing_it(
    broker, unique, emulator, tmp_path, seed
) -> None:
    scenario = Scenario(unique("fatal"))
    bootstrap = broker.bootstrap_servers
    produced = await produce(bootstrap, scenario, seed)
    config = write_config(
        tmp_path / "ingestor.yaml",
        scenario,
        bootstrap,
        emulator.url,
        routes=scenario.routes(items_arn=GHOST_ITEMS_ARN),
        personalize={"on_fatal": "stop"},
    )
    first_valid = first_valid_items(produced)

    async with GroupOffsets(bootstrap, scenario.group) as offsets, ingestors(tmp_path) as spawn:
        started = time.monotonic()
        proc = spawn.start(config)
        code = await proc.wait(BOUND_S)
        took = time.monotonic() - started
        committed = await offsets.read(first_valid)
    print(f"exit {code} after {took:.1f}s; items committed {committed}, first valid {first_valid}")
    assert code == EXIT_FATAL, proc.log_tail()
    assert_items_not_committed_past(committed, first_valid)
    log = proc.log()
    assert "ResourceNotFoundException" in log
    assert GHOST_ITEMS_ARN in log
    fatal_lines = [line for line in log.splitlines() if "fatal" in line.lower()]
    assert any(GHOST_ITEMS_ARN in line for line in fatal_lines), "\n".join(fatal_lines)
    assert HELD_LINE not in log
    stats = await emulator.client.stats()
    assert stats["calls"]["PutItems"]["ok"] == 0


async def test_unknown_dataset_is_held_while_the_other_datasets_stream_on(
    broker, unique, emulator, tmp_path, seed
) -> None:
    scenario = Scenario(unique("held"))
    bootstrap = broker.bootstrap_servers
    produced = await produce(bootstrap, scenario, seed)
    config = write_config(
        tmp_path / "ingestor.yaml",
        scenario,
        bootstrap,
        emulator.url,
        routes=scenario.routes(items_arn=GHOST_ITEMS_ARN),
        personalize={"on_fatal": "hold", "fatal_retry_s": PROBE_S},
    )
    first_valid = first_valid_items(produced)
    users_ends = {tp: last for tp, last in produced.ends.items() if tp.topic == scenario.users}

    async with GroupOffsets(bootstrap, scenario.group) as offsets, ingestors(tmp_path) as spawn:
        proc = spawn.start(config)
        await wait_caught_up(offsets, users_ends, timeout=60, processes=[proc])  # the users route converges
        await proc.wait_for_log(HELD_LINE)
        status, body = await proc.get("/readyz")
        assert status == 503 and GHOST_ITEMS_ARN in body and "fatal" in body, body
        _, metrics = await proc.get("/metrics")
        assert 'ingestor_datasets_held{api="PutItems"} 1.0' in metrics
        assert 'ingestor_datasets_held{api="PutUsers"} 0.0' in metrics

        # Probe calls go on, one every fatal_retry_s (no more), and change nothing.
        calls, since = putitems_calls(await emulator.client.stats()), time.monotonic()

        async def probed() -> bool:
            return putitems_calls(await emulator.client.stats()) >= calls + 3

        await wait_until(probed, timeout=20, what="three more probe calls")
        probes, elapsed = putitems_calls(await emulator.client.stats()) - calls, time.monotonic() - since
        assert probes <= elapsed / PROBE_S + 1, f"{probes} probe calls in {elapsed:.1f}s"
        assert proc.running
        assert_items_not_committed_past(await offsets.read(first_valid), first_valid)

        proc.send(signal.SIGTERM)
        code = await proc.wait(DRAIN_BUDGET_S + TEARDOWN_MARGIN_S + 10)
        assert proc.signalled_at is not None
        took = time.monotonic() - proc.signalled_at
        committed = await offsets.read([*first_valid, *users_ends])
    print(f"exit {code} {took:.2f}s after SIGTERM; committed {committed}, first valid items {first_valid}")
    assert code == EXIT_FATAL, proc.log_tail()  # a dataset was still held: operators see it in the exit code
    assert took < DRAIN_BUDGET_S + TEARDOWN_MARGIN_S, f"exit took {took:.1f}s"
    assert_items_not_committed_past(committed, first_valid)
    assert all(committed[tp] == last + 1 for tp, last in users_ends.items())
    log = proc.log()
    held = [line for line in log.splitlines() if HELD_LINE in line]
    assert len(held) == 1 and GHOST_ITEMS_ARN in held[0] and "ResourceNotFoundException" in held[0], held
    assert "Traceback" not in log
    stats = await emulator.client.stats()
    assert stats["calls"]["PutItems"]["ok"] == 0
    problems = dlq_problems(await read_dlq(bootstrap, scenario.dlq), produced, below=committed)
    assert problems == [], summary(problems)  # nothing valid dead-lettered (the held records least of all)


async def test_a_held_dataset_resumes_without_a_restart_once_it_exists(
    broker, unique, emulator, tmp_path, seed
) -> None:
    scenario = Scenario(unique("resume"))
    bootstrap = broker.bootstrap_servers
    produced = await produce(bootstrap, scenario, seed)
    config = write_config(
        tmp_path / "ingestor.yaml",
        scenario,
        bootstrap,
        emulator.url,
        routes=scenario.routes(items_arn=GHOST_ITEMS_ARN),
        personalize={"fatal_retry_s": PROBE_S},  # on_fatal: hold is the default
    )
    async with GroupOffsets(bootstrap, scenario.group) as offsets, ingestors(tmp_path) as spawn:
        proc = spawn.start(config)
        await proc.wait_for_log(HELD_LINE)
        # The operator creates the dataset: the endpoint knows it from now on.
        service = emulator.service
        ghost = DatasetConfig(arn=GHOST_ITEMS_ARN, kind="ITEMS", schema=CONFIG / "schemas/items.avsc")
        service.datasets[GHOST_ITEMS_ARN] = Dataset(ghost, service.config.max_events_kept)
        await wait_caught_up(offsets, produced.ends, timeout=60, processes=[proc])  # every route converges
        await proc.wait_for_log(f"calls to {GHOST_ITEMS_ARN} succeed again after a fatal error")

        async def ready() -> bool:
            return (await proc.get("/readyz"))[0] == 200

        await wait_until(ready, timeout=10, what="/readyz to pass again")
        code = await proc.stop(DRAIN_BUDGET_S + TEARDOWN_MARGIN_S + 10)
    assert code == EXIT_OK, proc.log_tail()
    client = emulator.client
    problems = [f"items {m}" for m in produced.expect.mismatches(ITEMS_TOPIC, await client.records(GHOST_ITEMS_ARN))]
    problems += [f"users {m}" for m in produced.expect.mismatches(USERS_TOPIC, await client.records(USERS_ARN))]
    assert problems == [], summary(problems)  # the last valid record per id: released records kept their order
    problems = dlq_problems(await read_dlq(bootstrap, scenario.dlq), produced)
    assert problems == [], summary(problems)  # every invalid record dead-lettered, no valid one
    assert proc.log().count(HELD_LINE) == 1
