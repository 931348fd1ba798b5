"""Broker outages and the log: the broker is unreachable three times for ~2 s (every connection cut, new ones
refused by a TCP proxy the broker advertises as its address) while the ingestor works through a backlog.

Each outage must read as one WARNING when the broker becomes unreachable and one INFO when it answers again (at
most one rate-limited repeat in between), not as hundreds of ERROR lines from aiokafka; ``ingestor_broker_up``
flips to 0 and back to 1; nothing is lost."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from typing import Any

import aiohttp
import pytest

from ingestor.broker import EmbeddedBroker, free_port
from ingestor.sample import StreamSpec, generate
from tests.chaos.harness import (
    CommitWatcher,
    GroupOffsets,
    Scenario,
    assert_exact,
    committed_count,
    ingestors,
    produce_stream,
    wait_caught_up,
    write_config,
)
from tests.conftest import wait_until
from tests.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

EVENTS = 6_000
OUTAGES = 3
OUTAGE_S = 2.0
LINES_PER_OUTAGE = 3  # unreachable, at most one "still unreachable" repeat, answers again


async def scrape(http: aiohttp.ClientSession, port: int) -> dict[str, float]:
    """The ingestor_broker_* samples, summed over their labels."""
    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for name, value in re.findall(r"^(ingestor_broker_\w+)(?:{[^}]*})? (\S+)$", text, flags=re.MULTILINE):
        out[name] = out.get(name, 0.0) + float(value)
    return out


def json_lines(log: str) -> list[dict[str, Any]]:
    out = []
    for line in log.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


async def test_broker_outages_log_a_summary_not_a_storm(unique, start_emulator, tmp_path, seed) -> None:
    # Slow calls, two in flight and a small buffer: the backlog is still being worked through during the outages
    # (the stream is produced up front: a producer writing through the proxy could write duplicates when cut).
    emulator = await start_emulator(faults={"latency_ms": 50, "jitter_ms": 10}, seed=seed)
    broker_port, metrics_port = free_port(), free_port()
    async with TcpProxy("127.0.0.1", broker_port) as proxy:
        broker = EmbeddedBroker(port=broker_port, advertised_port=proxy.port, log_path=tmp_path / "tansu.log")
        broker.start()
        try:
            bootstrap = f"127.0.0.1:{proxy.port}"
            scenario = Scenario(unique("outage"))
            await scenario.create_topics(bootstrap)
            events = generate(EVENTS, StreamSpec(items=3000, users=1500, hot_share=0.1, seed=seed))
            produced = await produce_stream(bootstrap, events, scenario.rename)
            config = write_config(
                tmp_path / "ingestor.yaml",
                scenario,
                bootstrap,
                emulator.url,
                kafka={"fetch_max_records": 100, "request_timeout_ms": 5000, "session_timeout_ms": 6000},
                personalize={"max_in_flight": 2},
                batching={"max_buffered_records": 200},
                metrics={"port": metrics_port},
                logging={"format": "json"},
            )
            async with (
                aiohttp.ClientSession() as http,
                GroupOffsets(bootstrap, scenario.group) as offsets,
                CommitWatcher(bootstrap, scenario.group, scenario.partitions) as watcher,
                ingestors(tmp_path) as spawn,
            ):
                proc = spawn.start(config)
                await proc.wait_for_log("partitions assigned")

                async def broker_up(value: float) -> bool:
                    assert proc.running, f"{proc} died\n{proc.log_tail()}"
                    return (await scrape(http, metrics_port)).get("ingestor_broker_up") == value

                await wait_until(lambda: broker_up(1.0), timeout=30, interval=0.1, what="ingestor_broker_up 1")
                for n in range(1, OUTAGES + 1):
                    dropped = await proxy.go_down()
                    started = time.monotonic()
                    await wait_until(lambda: broker_up(0.0), timeout=10, interval=0.05, what="ingestor_broker_up 0")
                    await asyncio.sleep(max(0.0, started + OUTAGE_S - time.monotonic()))  # the outage lasts ~2 s
                    await proxy.come_up()
                    await wait_until(lambda: broker_up(1.0), timeout=30, interval=0.1, what="ingestor_broker_up 1")
                    done = committed_count(await offsets.read(scenario.partitions))
                    print(
                        f"outage {n}: {dropped} connections cut, up again after {time.monotonic() - started:.1f}s, "
                        f"{done} records committed"
                    )
                    assert dropped > 0
                assert done < produced.total, "the outages came after the run had caught up: make it slower"
                metrics = await scrape(http, metrics_port)
                await wait_caught_up(offsets, produced.ends, timeout=90, processes=[proc])
                assert await proc.stop(30) == 0, proc.log_tail()
            await assert_exact(emulator.client, bootstrap, scenario, produced, watcher)
        finally:
            broker.stop()

    lines = json_lines(proc.log())
    levels = Counter((r.get("level"), r.get("logger")) for r in lines)
    print("log lines by level and logger:", dict(levels))
    errors = [r for r in lines if r.get("level") in ("error", "critical")]
    assert not errors, f"{len(errors)} ERROR lines, e.g. {errors[:5]}"
    kafka_noise = [r for r in lines if str(r.get("logger", "")).startswith("aiokafka")]
    assert len(kafka_noise) <= OUTAGES, f"{len(kafka_noise)} lines from aiokafka, e.g. {kafka_noise[:5]}"
    health = [r for r in lines if r.get("logger") == "ingestor.broker_health"]
    assert len(health) <= LINES_PER_OUTAGE * OUTAGES, health
    assert [r["level"] for r in health] == ["warning", "info"] * OUTAGES, health
    assert all("answers again" in r["event"] and r["suppressed"] for r in health[1::2]), health
    assert metrics["ingestor_broker_outages_total"] == OUTAGES
    assert metrics["ingestor_broker_errors_suppressed_total"] >= OUTAGES
    print(
        f"{metrics['ingestor_broker_errors_suppressed_total']:.0f} transient errors summarised in {len(health)} lines"
    )
