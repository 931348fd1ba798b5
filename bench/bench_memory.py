"""Memory benchmark: the ingestor's resident memory while a large backlog drains behind the API quota.

Produces a backlog (default one million records over 200,000 ids) into the embedded broker, runs `ingestor run` as a
subprocess against the local endpoint (quota ON by default: 10 calls/s per API), and samples the process's RSS.
Target (issue 4): RSS stays under 200 MB, and flat — backpressure pauses partitions instead of buffering more.

    .venv/bin/python bench/bench_memory.py [--records 1000000] [--seconds 60] [--no-quotas]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingestor.broker import EmbeddedBroker
from ingestor.emulator.app import running_emulator
from ingestor.emulator.config import EmulatorConfig
from ingestor.kafka_tools import create_topics, produce

ROOT = Path(__file__).resolve().parents[1]
ITEMS_ARN = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/ITEMS"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def records(n: int, ids: int):
    for i in range(n):
        rid = f"item-{i % ids}"
        value = {
            "ITEM_ID": rid,
            "PRICE": i % 1000 / 10,
            "GENRES": "action|drama",
            "CREATION_TIMESTAMP": 1_700_000_000 + i,
        }
        yield ("bench.items", rid.encode(), json.dumps(value).encode())


async def main(n: int, seconds: float, quotas: bool) -> int:
    broker = EmbeddedBroker().start()
    try:
        await create_topics(broker.bootstrap_servers, {"bench.items": 6, "bench.dlq": 1})
        t0 = time.monotonic()
        chunk = 100_000
        gen = records(n, max(1, n // 5))
        for _ in range(0, n, chunk):
            await produce(broker.bootstrap_servers, (next(gen) for _ in range(min(chunk, n))), linger_ms=20)
        print(f"produced {n:,} records in {time.monotonic() - t0:.0f}s")
        config = EmulatorConfig.load(ROOT / "config/emulator.yaml", quotas={"enabled": quotas})
        async with running_emulator(config) as emu:
            with tempfile.TemporaryDirectory() as tmp:
                cfg = Path(tmp) / "bench.yaml"
                cfg.write_text(
                    yaml.safe_dump(
                        {
                            "kafka": {
                                "bootstrap_servers": broker.bootstrap_servers,
                                "group_id": "bench-memory",
                                "dead_letter_topic": "bench.dlq",
                                "session_timeout_ms": 6000,
                                "heartbeat_interval_ms": 500,
                            },
                            "personalize": {
                                "endpoint_url": emu.url,
                                "aws_access_key_id": "x",
                                "aws_secret_access_key": "x",
                            },
                            "routes": [
                                {
                                    "topic": "bench.items",
                                    "kind": "items",
                                    "dataset_arn": ITEMS_ARN,
                                    "schema": str(ROOT / "config/schemas/items.avsc"),
                                }
                            ],
                            "metrics": {"port": 0},
                            "logging": {"level": "WARNING"},
                        }
                    )
                )
                proc = await asyncio.create_subprocess_exec(
                    str(Path(sys.executable).parent / "ingestor"),
                    "run",
                    "--config",
                    str(cfg),
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                    env=dict(os.environ),
                )
                samples: list[tuple[float, float, int]] = []
                start = time.monotonic()
                while time.monotonic() - start < seconds and proc.returncode is None:
                    await asyncio.sleep(1)
                    stats = await emu.client.stats()
                    samples.append((time.monotonic() - start, rss_mb(proc.pid), stats["records"]["PutItems"]["ok"]))
                proc.send_signal(signal.SIGTERM)
                code = await proc.wait()
    finally:
        broker.stop()
    print(f"{'t (s)':>6} {'RSS MB':>8} {'records sent':>13}")
    for t, rss, sent in samples[:: max(1, len(samples) // 12)]:
        print(f"{t:6.0f} {rss:8.1f} {sent:13,}")
    peak = max(s[1] for s in samples)
    half = len(samples) // 2
    first, second = max(s[1] for s in samples[:half]), max(s[1] for s in samples[half:])
    print(f"peak RSS {peak:.1f} MB; peak first half {first:.1f} MB, second half {second:.1f} MB; exit code {code}")
    ok = peak < 200 and second <= first * 1.1
    print("target (< 200 MB and flat):", "MET" if ok else "NOT MET")
    return 0 if ok else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--no-quotas", action="store_true", help="let the endpoint take calls as fast as they come")
    a = p.parse_args()
    sys.exit(asyncio.run(main(a.records, a.seconds, not a.no_quotas)))
