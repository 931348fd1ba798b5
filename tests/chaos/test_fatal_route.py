"""A fatal route: the items route names a dataset the endpoint does not know (ResourceNotFoundException). The process
exits 3 in bounded time, commits nothing on that route past its first undeliverable record, and says which ARN."""

from __future__ import annotations

import time

import pytest

from ingestor.sample import ITEMS_TOPIC, StreamSpec, generate
from tests.chaos.harness import (
    GHOST_ITEMS_ARN,
    GroupOffsets,
    Scenario,
    ingestors,
    produce_stream,
    write_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

EXIT_FATAL = 3
BOUND_S = 30.0


async def test_unknown_dataset_stops_the_service_without_committing_it(
    broker, unique, emulator, tmp_path, seed
) -> None:
    scenario = Scenario(unique("fatal"))
    bootstrap = broker.bootstrap_servers
    await scenario.create_topics(bootstrap)
    produced = await produce_stream(
        bootstrap, generate(3000, StreamSpec(items=300, users=100, seed=seed)), scenario.rename
    )
    config = write_config(
        tmp_path / "ingestor.yaml",
        scenario,
        bootstrap,
        emulator.url,
        routes=scenario.routes(items_arn=GHOST_ITEMS_ARN),
    )
    # The first record of each items partition that could only be delivered to the unknown dataset.
    first_valid: dict = {}
    for p in produced.placed:
        if p.event.topic == ITEMS_TOPIC and p.event.valid and p.tp not in first_valid:
            first_valid[p.tp] = p.offset
    assert first_valid

    async with GroupOffsets(bootstrap, scenario.group) as offsets, ingestors(tmp_path) as spawn:
        started = time.monotonic()
        proc = spawn.start(config)
        code = await proc.wait(BOUND_S)
        took = time.monotonic() - started
        committed = await offsets.read(first_valid)
    print(f"exit {code} after {took:.1f}s; items committed {committed}, first valid {first_valid}")
    assert code == EXIT_FATAL, proc.log_tail()
    for tp, first in first_valid.items():
        assert (committed[tp] or 0) <= first, f"{tp} committed {committed[tp]} past its first valid record {first}"
    log = proc.log()
    assert "ResourceNotFoundException" in log
    assert GHOST_ITEMS_ARN in log
    fatal_lines = [line for line in log.splitlines() if "fatal" in line.lower()]
    assert any(GHOST_ITEMS_ARN in line for line in fatal_lines), "\n".join(fatal_lines)
    stats = await emulator.client.stats()
    assert stats["calls"]["PutItems"]["ok"] == 0
