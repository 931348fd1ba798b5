"""Memory benchmark: the ingestor's resident memory while a large backlog drains behind the API quota.

Produces a backlog (default one million records over 200,000 ids, values of about 300 bytes, 4 partitions) into the
embedded broker, runs `ingestor run` as a subprocess against the local endpoint (quota ON by default: 10 calls/s per
API), and samples the process's RSS and its `ingestor_buffered_records` gauge once a second.
Targets (issue 9): peak RSS ≤ 130 MB, flat (the second half's peak within 5 % of the first half's, and the same for a
1M and a 3M backlog), buffered records never above `max_buffered_records` plus one fetch, and calls at ≥ 95 % of the
quota (backpressure must not starve the sender).

    .venv/bin/python bench/bench_memory.py [--records 1000000] [--value-bytes 300] [--seconds 60] [--no-quotas]
    .venv/bin/python bench/bench_memory.py --records 3000000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingestor.broker import EmbeddedBroker
from ingestor.emulator.app import running_emulator
from ingestor.emulator.config import EmulatorConfig
from ingestor.kafka_tools import create_topics, produce

ROOT = Path(__file__).resolve().parents[1]
ITEMS_ARN = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/ITEMS"
QUOTA_CALLS_PER_S = 10.0  # config/emulator.yaml's put_items quota = the ingestor's default rate limit
WORDS = ("warm", "wool", "knit", "sweater", "ribbed", "cuffs", "relaxed", "fit", "everyday", "autumn", "winter")
TARGET_MB = 130.0
FETCH_RECORDS = 1_000  # kafka.fetch_max_records: the "one fetch" a buffer bound may overshoot by


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def records(n: int, ids: int, value_bytes: int):
    for i in range(n):
        rid = f"item-{i % ids}"
        value = {
            "ITEM_ID": rid,
            "PRICE": i % 1000 / 10,
            "GENRES": "action|drama",
            "NUMBER_OF_RATINGS": i % 5000,
            "IN_STOCK": i % 3 != 0,
            "DESCRIPTION": "",
            "CREATION_TIMESTAMP": 1_700_000_000 + i,
        }
        room = max(0, value_bytes - len(json.dumps(value)))
        words: list[str] = []
        k, length = i, 0
        while length < room:
            words.append(WORDS[k % len(WORDS)])
            length += len(words[-1]) + 1
            k = (k * 7 + 3) % 1_000_003
        value["DESCRIPTION"] = " ".join(words)[:room]
        yield ("bench.items", rid.encode(), json.dumps(value).encode())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def buffered(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("ingestor_buffered_records "):
                    return int(float(line.split()[1]))
    except OSError:
        return None
    return None


async def main(a: argparse.Namespace) -> int:
    n = a.records
    broker = EmbeddedBroker().start()
    try:
        await create_topics(broker.bootstrap_servers, {"bench.items": a.partitions, "bench.dlq": 1})
        t0 = time.monotonic()
        chunk = 100_000
        gen = records(n, max(1, n // 5), a.value_bytes)
        for start in range(0, n, chunk):
            await produce(broker.bootstrap_servers, (next(gen) for _ in range(min(chunk, n - start))), linger_ms=20)
        size = len(next(records(1, 1, a.value_bytes))[2])
        print(f"produced {n:,} records of ~{size} bytes over {a.partitions} partitions in {time.monotonic() - t0:.0f}s")
        config = EmulatorConfig.load(ROOT / "config/emulator.yaml", quotas={"enabled": not a.no_quotas})
        port = free_port()
        async with running_emulator(config) as emu:
            with tempfile.TemporaryDirectory() as tmp:
                cfg = Path(tmp) / "bench.yaml"
                settings: dict[str, object] = {
                    "kafka": {
                        "bootstrap_servers": broker.bootstrap_servers,
                        "group_id": "bench-memory",
                        "dead_letter_topic": "bench.dlq",
                        "session_timeout_ms": 6000,
                        "heartbeat_interval_ms": 500,
                    },
                    "personalize": {"endpoint_url": emu.url, "aws_access_key_id": "x", "aws_secret_access_key": "x"},
                    "routes": [
                        {
                            "topic": "bench.items",
                            "kind": "items",
                            "dataset_arn": ITEMS_ARN,
                            "schema": str(ROOT / "config/schemas/items.avsc"),
                        }
                    ],
                    "metrics": {"host": "127.0.0.1", "port": port},
                    "logging": {"level": "WARNING"},
                }
                if a.max_buffered:
                    settings["batching"] = {"max_buffered_records": a.max_buffered}
                cfg.write_text(yaml.safe_dump(settings))
                wrap = ["-m", "memray", "run", "--native", "-f", "-o", a.memray] if a.memray else []
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    *wrap,
                    "-m",
                    "ingestor.cli",
                    "run",
                    "--config",
                    str(cfg),
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                    env={**os.environ, **dict(kv.split("=", 1) for kv in a.env)},
                )
                samples: list[tuple[float, float, int, int, int]] = []  # t, RSS, records sent, calls ok, buffered
                start = time.monotonic()
                while time.monotonic() - start < a.seconds and proc.returncode is None:
                    await asyncio.sleep(1)
                    stats = await emu.client.stats()
                    samples.append(
                        (
                            time.monotonic() - start,
                            rss_mb(proc.pid),
                            stats["records"]["PutItems"]["ok"],
                            stats["calls"]["PutItems"]["ok"],
                            await asyncio.to_thread(buffered, port) or 0,
                        )
                    )
                proc.send_signal(signal.SIGTERM)
                code = await proc.wait()
    finally:
        broker.stop()
    print(f"{'t (s)':>6} {'RSS MB':>8} {'records sent':>13} {'buffered':>9}")
    for t, rss, sent, _, buf in samples[:: max(1, len(samples) // 12)]:
        print(f"{t:6.0f} {rss:8.1f} {sent:13,} {buf:9,}")
    peak = max(s[1] for s in samples)
    half = len(samples) // 2
    first, second = max(s[1] for s in samples[:half]), max(s[1] for s in samples[half:])
    # throughput in the second half (the service is up and the backlog drains at its steady rate)
    t_a, recs_a, calls_a = samples[half][0], samples[half][2], samples[half][3]
    t_b, recs_b, calls_b = samples[-1][0], samples[-1][2], samples[-1][3]
    rate = (calls_b - calls_a) / (t_b - t_a) if t_b > t_a else 0.0
    records_rate = (recs_b - recs_a) / (t_b - t_a) if t_b > t_a else 0.0
    max_buffered = max(s[4] for s in samples)
    bound = a.max_buffered or 10_000
    print(
        f"peak RSS {peak:.1f} MB (start {samples[0][1]:.1f} MB); peak first half {first:.1f} MB, "
        f"second half {second:.1f} MB; exit code {code}"
    )
    print(f"max buffered {max_buffered:,} (bound {bound:,} + one fetch of {FETCH_RECORDS:,})")
    quota_note = f"{rate / QUOTA_CALLS_PER_S:.0%} of the quota" if not a.no_quotas else "no quota"
    print(f"throughput {rate:.2f} calls/s ({records_rate:.0f} records/s): {quota_note}")
    ok = peak <= TARGET_MB and second <= first * 1.05 and max_buffered <= bound + FETCH_RECORDS
    if not a.no_quotas:
        ok = ok and rate >= 0.95 * QUOTA_CALLS_PER_S
    print(f"target (≤ {TARGET_MB:.0f} MB, flat, bounded, ≥ 95 % of the quota):", "MET" if ok else "NOT MET")
    return 0 if ok else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=1_000_000, help="backlog size (1M and 3M should look the same)")
    p.add_argument("--value-bytes", type=int, default=300, help="approximate size of each record's JSON value")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--max-buffered", type=int, default=0, help="batching.max_buffered_records (default: the service's)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="for the ingestor's process")
    p.add_argument("--memray", metavar="FILE", help="record the service's allocations (native too) with memray")
    p.add_argument("--no-quotas", action="store_true", help="let the endpoint take calls as fast as they come")
    sys.exit(asyncio.run(main(p.parse_args())))
