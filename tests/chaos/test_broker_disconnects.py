"""Broker disconnects: every connection to the broker (consumer, coordinator, DLQ producer) is cut three times
mid-stream by a TCP proxy the broker advertises as its address. The ingestor reconnects, the endpoint still ends
exact, the DLQ complete, and SIGTERM afterwards exits 0."""

from __future__ import annotations

import random
import time

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

EVENTS = 12_000
DROPS = 3


async def test_dropped_broker_connections_lose_nothing(unique, start_emulator, tmp_path, seed) -> None:
    rng = random.Random(seed)
    # Slow calls and a small buffer keep the run going for a while: the stream is produced up front (a producer
    # writing through the proxy could write duplicates when its connection is cut) and must not coalesce whole.
    emulator = await start_emulator(faults={"latency_ms": 20, "jitter_ms": 10}, seed=seed)
    broker_port = free_port()
    async with TcpProxy("127.0.0.1", broker_port) as proxy:
        broker = EmbeddedBroker(port=broker_port, advertised_port=proxy.port, log_path=tmp_path / "tansu.log")
        broker.start()
        try:
            bootstrap = f"127.0.0.1:{proxy.port}"  # the address the broker advertises: every client goes through
            scenario = Scenario(unique("drops"))
            await scenario.create_topics(bootstrap)
            events = generate(EVENTS, StreamSpec(items=2000, users=1000, hot_share=0.3, seed=seed))
            produced = await produce_stream(bootstrap, events, scenario.rename)
            config = write_config(
                tmp_path / "ingestor.yaml",
                scenario,
                bootstrap,
                emulator.url,
                kafka={"fetch_max_records": 200, "request_timeout_ms": 5000},
                personalize={"max_in_flight": 4},
                batching={"max_buffered_records": 400},
            )
            started = time.monotonic()
            async with (
                GroupOffsets(bootstrap, scenario.group) as offsets,
                CommitWatcher(bootstrap, scenario.group, scenario.partitions) as watcher,
                ingestors(tmp_path) as spawn,
            ):
                proc = spawn.start(config)
                await proc.wait_for_log("partitions assigned")
                for n in range(1, DROPS + 1):
                    target = int(EVENTS * (n / (DROPS + 1) + rng.uniform(-0.1, 0.1)))

                    async def progressed(target=target) -> bool:
                        assert proc.running, f"{proc} died\n{proc.log_tail()}"
                        return committed_count(await offsets.read(scenario.partitions)) >= target

                    await wait_until(progressed, timeout=60, interval=0.05, what=f"{target} records committed")
                    dropped = proxy.drop_all()
                    done = committed_count(await offsets.read(scenario.partitions))
                    print(f"drop {n} at {time.monotonic() - started:.1f}s: {dropped} connections, {done} committed")
                    assert dropped > 0
                await wait_caught_up(offsets, produced.ends, timeout=60, processes=[proc])
                assert done < produced.total, "the last drop came after the run had caught up: make it slower"
                assert await proc.stop(30) == 0, proc.log_tail()
                print(f"caught up after {time.monotonic() - started:.1f}s; {proxy.accepted} connections accepted")

            await assert_exact(emulator.client, bootstrap, scenario, produced, watcher)
        finally:
            broker.stop()
