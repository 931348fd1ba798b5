"""Catch-up benchmark: a large backlog on one dataset caught up through an import job instead of the API.

Produces a backlog (default 1M change events over 200k ids) into the embedded broker, starts moto's S3 server and the
local endpoint (quota ON: 10 PutItems calls/s; import jobs take --job-s seconds), then runs `ingestor run` as a
subprocess with bulk.catch_up_after_s set, and measures until every partition's committed offset reaches the end and
the endpoint holds exactly the newest record of every id. Also samples the ingestor's RSS, and measures CSV staging
(store + CSV render) in-process.

Targets (issue 10): caught up ≥ 20× faster than the streaming bound (ids ÷ 100 records/s), i.e. < 100 s for 200k
ids with a 30 s job; staging ≥ 50k rows/s; RSS ≤ 200 MB and flat during the import.

    .venv/bin/python bench/bench_catchup.py [--records 1000000] [--ids 200000] [--job-s 30]
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

import boto3
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingestor.broker import EmbeddedBroker
from ingestor.bulk.staging import CsvRenderer, StagingProgress, render_chunks
from ingestor.bulk.store import LatestStore
from ingestor.emulator.app import running_emulator
from ingestor.emulator.config import EmulatorConfig
from ingestor.emulator.s3server import LocalS3
from ingestor.kafka_tools import create_topics, produce
from ingestor.schema import DatasetKind, DatasetSchema

ROOT = Path(__file__).resolve().parents[1]
ITEMS_ARN = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/ITEMS"
TOPIC = "bench.items"
PARTITIONS = 6


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def value(i: int, ids: int) -> tuple[str, dict[str, object]]:
    rid = f"item-{i % ids}"
    return rid, {
        "ITEM_ID": rid,
        "PRICE": i % 1000 / 10,
        "GENRES": "action|drama",
        "CREATION_TIMESTAMP": 1_700_000_000 + i,
    }


def staging_rate(rows: int) -> tuple[float, float]:
    """(rows/s into the store, rows/s rendered as CSV) in-process."""
    schema = DatasetSchema.load(ROOT / "config/schemas/items.avsc", DatasetKind.ITEMS)
    with LatestStore() as store:
        t0 = time.perf_counter()
        batch = []
        for i in range(rows):
            batch.append((f"item-{i}", f'{{"price":{i % 1000 / 10},"genres":"action|drama","creationTimestamp":{i}}}'))
            if len(batch) == 5000:
                store.put_many(batch)
                batch = []
        store.put_many(batch)
        put = rows / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        size = sum(len(c) for c in render_chunks(CsvRenderer(schema), store.rows(), 16 << 20, StagingProgress()))
        render = rows / (time.perf_counter() - t0)
    print(f"staging: {rows:,} rows → store {put:,.0f} rows/s, CSV {render:,.0f} rows/s ({size / 1e6:.1f} MB)")
    return put, render


async def committed(bootstrap: str, group: str) -> dict[TopicPartition, int | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        return {TopicPartition(TOPIC, p): await consumer.committed(TopicPartition(TOPIC, p)) for p in range(PARTITIONS)}
    finally:
        await consumer.stop()


async def main(n: int, ids: int, job_s: float, timeout_s: float) -> int:
    staging_rate(min(n, 1_000_000))
    broker = EmbeddedBroker().start()
    s3 = LocalS3().start()
    try:
        boto3.client(
            "s3", endpoint_url=s3.url, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
        ).create_bucket(Bucket="bench-staging")
        await create_topics(broker.bootstrap_servers, {TOPIC: PARTITIONS, "bench.dlq": 1})
        t0 = time.monotonic()
        ends: dict[TopicPartition, int] = {}
        chunk = 100_000
        for lo in range(0, n, chunk):
            batch = []
            for i in range(lo, min(n, lo + chunk)):
                rid, row = value(i, ids)
                batch.append((TOPIC, rid.encode(), json.dumps(row).encode()))
            for tp, off in (await produce(broker.bootstrap_servers, batch, linger_ms=20)).items():
                ends[tp] = max(ends.get(tp, 0), off + 1)
        print(f"produced {n:,} events over {ids:,} ids in {time.monotonic() - t0:.0f}s")
        config = EmulatorConfig.load(
            ROOT / "config/emulator.yaml",
            quotas={"enabled": True},
            imports={"s3_endpoint_url": s3.url, "duration_s": job_s},
        )
        async with running_emulator(config) as emu:
            with tempfile.TemporaryDirectory() as tmp:
                cfg = Path(tmp) / "bench.yaml"
                cfg.write_text(
                    yaml.safe_dump(
                        {
                            "kafka": {
                                "bootstrap_servers": broker.bootstrap_servers,
                                "group_id": "bench-catchup",
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
                                    "topic": TOPIC,
                                    "kind": "items",
                                    "dataset_arn": ITEMS_ARN,
                                    "schema": str(ROOT / "config/schemas/items.avsc"),
                                }
                            ],
                            "bulk": {
                                "s3_uri": "s3://bench-staging/catch-up/",
                                "s3_endpoint_url": s3.url,
                                "role_arn": "arn:aws:iam::123456789012:role/PersonalizeS3",
                                "catch_up_after_s": 60,
                                "poll_interval_s": 1,
                            },
                            "metrics": {"port": 0},
                            "logging": {"level": "INFO", "format": "console"},
                        }
                    )
                )
                log_path = Path(tmp) / "ingestor.log"
                with log_path.open("wb") as log_file:
                    proc = await asyncio.create_subprocess_exec(
                        str(Path(sys.executable).parent / "ingestor"),
                        *("run", "--config", str(cfg)),
                        stdout=log_file,
                        stderr=log_file,
                        env=dict(os.environ),
                    )
                    start = time.monotonic()
                    samples: list[tuple[float, float, str]] = []
                    done_at = None
                    while time.monotonic() - start < timeout_s and proc.returncode is None:
                        await asyncio.sleep(1)
                        jobs = list(emu.service.imports.jobs.values())
                        status = jobs[-1].status.value if jobs else "-"
                        samples.append((time.monotonic() - start, rss_mb(proc.pid), status))
                        got = await committed(broker.bootstrap_servers, "bench-catchup")
                        if all(got[tp] == off for tp, off in ends.items()):
                            done_at = time.monotonic() - start
                            break
                    proc.send_signal(signal.SIGTERM)
                    code = await proc.wait()
                decisions = [ln for ln in log_path.read_text().splitlines() if "backlog ≈" in ln]
            records = emu.service.datasets[ITEMS_ARN].records
            wrong = 0
            for k in range(ids):
                last = max(i for i in (n - 1 - ((n - 1 - k) % ids),) if i >= 0)
                _, row = value(last, ids)
                rec = records.get(f"item-{k}")
                if rec is None or rec.properties.get("creationTimestamp") != row["CREATION_TIMESTAMP"]:
                    wrong += 1
            stats = await emu.client.stats()
            jobs = [(j.name, j.mode, j.status.value) for j in emu.service.imports.jobs.values()]
    finally:
        s3.stop()
        broker.stop()
    print(*decisions, sep="\n")
    print(f"{'t (s)':>6} {'RSS MB':>8}  job")
    for t, rss, status in samples[:: max(1, len(samples) // 15)]:
        print(f"{t:6.0f} {rss:8.1f}  {status}")
    bound = ids / 100
    peak = max((s[1] for s in samples), default=0.0)
    print(f"jobs: {jobs}; records sent through the API: {stats['records']['PutItems']['ok']:,}; exit code {code}")
    if done_at is None:
        print(f"NOT caught up within {timeout_s:.0f}s")
        return 1
    print(
        f"caught up in {done_at:.0f}s (offsets committed; {ids - wrong:,}/{ids:,} ids exact) vs streaming bound "
        f"{bound:,.0f}s: {bound / done_at:.0f}× faster; peak RSS {peak:.0f} MB"
    )
    ok = wrong == 0 and bound / done_at >= 20 and peak <= 200
    print("targets (exact, ≥ 20×, RSS ≤ 200 MB):", "MET" if ok else "NOT MET")
    return 0 if ok else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--ids", type=int, default=200_000)
    p.add_argument("--job-s", type=float, default=30)
    p.add_argument("--timeout-s", type=float, default=600)
    a = p.parse_args()
    sys.exit(asyncio.run(main(a.records, a.ids, a.job_s, a.timeout_s)))
