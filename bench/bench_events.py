"""Interactions benchmark: events/s through an interactions route with the quota off, and the CPU cost per call.

The pipeline (decode → event builder → events buffer → sender) runs in this process with the service's own
Personalize client, built as `ingestor run` builds it: `personalize.http: direct` (the default: one SigV4-signed
rest-json POST per call, ingestor/personalize_http.py) and, as a second set of lines, `http: sdk` (aioboto3); the
local endpoint runs in a subprocess (`ingestor emulator --no-quotas`), so this process's CPU time is the ingestor's
own cost. Two stream shapes bound the throughput:

* dense: few users with many events each → calls of 10 events (one user and session per call);
* sparse: every event from another user → calls of 1 event (PutEvents carries one user per call).

A third line runs the dense stream against an in-memory client (no signing, no HTTP): the pipeline's own cost.
Kafka is left out (bench_pipeline.py and bench_memory.py cover the fetch side).

    .venv/bin/python bench/bench_events.py [--events 20000] [--http direct|sdk|both]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingestor.app import direct_client, personalize_client, personalize_session, reuse_user_agent
from ingestor.config import Settings
from ingestor.metrics import Metrics
from ingestor.model import SourceRecord
from ingestor.pipeline import Pipeline
from ingestor.sender import Sender

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config"
ARN = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/INTERACTIONS"


class InstantPersonalize:
    async def put_events(self, **kwargs: Any) -> dict[str, Any]:
        return {}


class InstantProducer:
    async def send(self, topic: str, value: Any = None, key: Any = None, headers: Any = None) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


def values(n: int, users: int) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(n):
        user = f"user-{i % users}"
        row = {"USER_ID": user, "ITEM_ID": f"item-{i % 997}", "EVENT_TYPE": "click", "TIMESTAMP": 1_700_000_000 + i}
        row |= {"EVENT_VALUE": 1.0, "DEVICE": "ios"}
        out.append((user.encode(), json.dumps(row).encode()))
    return out


def settings(endpoint: str, http: Literal["direct", "sdk"] = "direct") -> Settings:
    return Settings(
        kafka={"dead_letter_topic": "dlq"},
        personalize={
            "http": http,
            "endpoint_url": endpoint,
            "aws_access_key_id": "bench",
            "aws_secret_access_key": "bench",
            "rate_limits": {"PutEvents": 1e6},  # the quota off
            "max_in_flight": 16,
        },
        routes=[
            {
                "topic": "events",
                "kind": "interactions",
                "dataset_arn": ARN,
                "tracking_id": "shop-tracking-id",
                "schema": CONFIG / "schemas/interactions.avsc",
            }
        ],
        batching={"linger_ms": 5, "max_buffered_records": 10**7},
    )


@contextlib.asynccontextmanager
async def service_client(s: Settings) -> AsyncIterator[Any]:
    """The Personalize client exactly as ``ingestor run`` builds it for ``s.personalize.http``."""
    session = personalize_session(s)
    async with personalize_client(s, session) as client:
        reuse_user_agent(client)
        if s.personalize.http == "sdk":
            yield client
            return
        direct = await direct_client(s, session, client)
        try:
            yield direct
        finally:
            await direct.aclose()


async def run(client: Any, s: Settings, records: list[tuple[bytes, bytes]]) -> tuple[float, float, float]:
    """(events/s, calls/s, CPU seconds of this process per call)."""
    metrics = Metrics()
    pipeline = Pipeline(s, Sender(client, metrics, s.personalize.retry), InstantProducer(), metrics)
    pipeline.start()
    wall, cpu = time.perf_counter(), time.process_time()
    for off, (key, value) in enumerate(records):
        pipeline.ingest(SourceRecord("events", 0, off, key, value))
        if off % 1000 == 999:
            await asyncio.sleep(0)  # as the fetch loop does between getmany() batches
    assert await pipeline.drain(600), "the events were not all delivered"
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await pipeline.stop()
    calls = sum(s.value for m in metrics.api_calls.collect() for s in m.samples if s.name.endswith("_total"))
    return len(records) / wall, calls / wall, cpu / max(calls, 1)


def line(label: str, ev_s: float, calls_s: float, cpu_per_call: float) -> str:
    per_call = ev_s / calls_s
    per_cpu_s = per_call / cpu_per_call
    return f"{label:<48}{ev_s:>10,.0f}{calls_s:>10,.0f}{per_call:>9.1f}{cpu_per_call * 1000:>13.2f}{per_cpu_s:>14,.0f}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_endpoint(port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "ingestor.emulator", "--config", str(CONFIG / "emulator.yaml")]
    cmd += ["--port", str(port), "--no-quotas"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_emulator/stats", timeout=1):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the local endpoint did not start")


async def main(n: int, clients: list[Literal["direct", "sdk"]]) -> None:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = start_endpoint(port)
    try:
        print(f"{'stream':<48}{'events/s':>10}{'calls/s':>10}{'ev/call':>9}{'CPU ms/call':>13}{'events/CPU-s':>14}")
        for http in clients:
            s = settings(endpoint, http)
            name = "http: direct (default)" if http == "direct" else "http: sdk (aioboto3)"
            async with service_client(s) as client:
                await run(client, s, values(200, 20))  # warm-up: connections, credentials, botocore's model
                for label, users, count in [
                    (f"dense (20 users), {name}", 20, n),
                    (f"sparse (1 event/user), {name}", n, n // 4),
                ]:
                    ev_s, calls_s, cpu = await run(client, s, values(count, users))
                    print(line(label, ev_s, calls_s, cpu))
        s = settings(endpoint)
        ev_s, calls_s, cpu = await run(InstantPersonalize(), s, values(n, 20))
        label = "dense, in-memory client (no signing, no HTTP)"
        print(line(label, ev_s, calls_s, cpu))
        print("events/s: wall clock (the local endpoint shares the machine); events/CPU-s: one core of the ingestor")
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument(
        "--http",
        choices=["direct", "sdk", "both"],
        default="both",
        help="which Personalize client to measure (default: both, the default client first)",
    )
    args = p.parse_args()
    asyncio.run(main(args.events, ["direct", "sdk"] if args.http == "both" else [args.http]))
