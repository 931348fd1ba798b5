"""Quota benchmark: how close to Personalize's call quota the ingestor runs, with one replica and with two.

Runs against the local endpoint with its quota ON (PutItems 10/s and PutUsers 10/s per dataset group) and a backlog
on both topics, then measures over a window: calls/s per API as a share of the quota, the share of calls throttled,
and records per call. Targets (issue 5): each API ≥ 95 % of its quota, ≤ 1 % throttled, ≥ 9.5 records per call, with
one replica and with two replicas sharing the quota, and neither API starved while the other has a backlog.

    .venv/bin/python bench/bench_quota.py [--window 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingestor.app import Service
from ingestor.broker import EmbeddedBroker
from ingestor.config import Settings
from ingestor.emulator.app import running_emulator
from ingestor.emulator.config import EmulatorConfig
from ingestor.kafka_tools import create_topics, produce

CONFIG = Path(__file__).resolve().parents[1] / "config"
ITEMS_ARN = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/ITEMS"
USERS_ARN = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/USERS"
QUOTA = 10.0


def settings(bootstrap: str, endpoint: str, tag: str) -> Settings:
    return Settings(
        kafka={
            "bootstrap_servers": bootstrap,
            "group_id": f"bench-{tag}",
            "dead_letter_topic": f"dlq-{tag}",
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 500,
        },
        personalize={"endpoint_url": endpoint, "aws_access_key_id": "x", "aws_secret_access_key": "x"},
        routes=[
            {
                "topic": f"items-{tag}",
                "kind": "items",
                "dataset_arn": ITEMS_ARN,
                "schema": CONFIG / "schemas/items.avsc",
            },
            {
                "topic": f"users-{tag}",
                "kind": "users",
                "dataset_arn": USERS_ARN,
                "schema": CONFIG / "schemas/users.avsc",
            },
        ],
        metrics={"port": 0},
    )


def backlog(tag: str, per_api: int) -> list[tuple[str, bytes, bytes]]:
    out = []
    for i in range(per_api):
        item = {"ITEM_ID": f"i{i}", "PRICE": 1.5, "CREATION_TIMESTAMP": 1_700_000_000}
        user = {"USER_ID": f"u{i}", "AGE": 30, "MEMBERSHIP": "gold"}
        out.append((f"items-{tag}", f"i{i}".encode(), json.dumps(item).encode()))
        out.append((f"users-{tag}", f"u{i}".encode(), json.dumps(user).encode()))
    return out


async def scenario(broker: EmbeddedBroker, replicas: int, window: float, quota: float = QUOTA) -> dict[str, float]:
    """``quota``: the endpoint's real quota; the ingestor is always configured with Personalize's 10 calls/s."""
    tag = f"r{replicas}-q{quota:g}-{int(time.time())}"
    per_api = int(QUOTA * 10 * (window + 15))  # more than can drain during warm-up + window
    await create_topics(broker.bootstrap_servers, {f"items-{tag}": 4, f"users-{tag}": 4, f"dlq-{tag}": 1})
    await produce(broker.bootstrap_servers, backlog(tag, per_api))
    config = EmulatorConfig.load(
        CONFIG / "emulator.yaml", quotas={"enabled": True, "put_items": quota, "put_users": quota}
    )
    async with running_emulator(config) as emu:
        services = [
            Service(settings(broker.bootstrap_servers, emu.url, tag), registry=CollectorRegistry())
            for _ in range(replicas)
        ]
        runs = [asyncio.create_task(s.run()) for s in services]
        # warm-up: every replica joined with its share and calls are flowing
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            stats = await emu.client.stats()
            joined = all(s.source is not None and s.source.joined for s in services)
            if joined and stats["calls"]["PutItems"]["ok"] > 20 and stats["calls"]["PutUsers"]["ok"] > 20:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(3)  # let a rebalance (second replica) settle before measuring
        before, t0 = await emu.client.stats(), time.monotonic()
        await asyncio.sleep(window)
        after, t1 = await emu.client.stats(), time.monotonic()
        for s in services:
            s.stop_requested.set()
        await asyncio.gather(*runs)
    elapsed = t1 - t0
    out: dict[str, float] = {}
    for api in ("PutItems", "PutUsers"):
        ok = after["calls"][api]["ok"] - before["calls"][api]["ok"]
        throttled = after["calls"][api]["throttled"] - before["calls"][api]["throttled"]
        records = after["records"][api]["ok"] - before["records"][api]["ok"]
        out[f"{api} quota %"] = 100 * ok / elapsed / quota
        out[f"{api} throttled %"] = 100 * throttled / max(1, ok + throttled)
        out[f"{api} records/call"] = records / max(1, ok)
    return out


async def main(window: float) -> int:
    logging.basicConfig(level=logging.WARNING)
    broker = EmbeddedBroker().start()
    try:
        results = {
            "1 replica": await scenario(broker, 1, window),
            "2 replicas": await scenario(broker, 2, window),
            "real quota 7/s": await scenario(broker, 1, window, quota=7.0),
        }
    finally:
        broker.stop()
    keys = list(results["1 replica"])
    print(f"{'metric':<24}" + "".join(f"{name:>16}" for name in results))
    for k in keys:
        print(f"{k:<24}" + "".join(f"{r[k]:>16.2f}" for r in results.values()))
    print("(last column: the endpoint's quota is 7/s while the ingestor is configured for 10/s: AIMD finds it)")
    ok = all(
        r[f"{api} quota %"] >= 95 and r[f"{api} throttled %"] <= 1 and r[f"{api} records/call"] >= 9.5
        for name, r in results.items()
        if name != "real quota 7/s"
        for api in ("PutItems", "PutUsers")
    )
    print("targets (≥95 % of quota, ≤1 % throttled, ≥9.5 records/call):", "MET" if ok else "NOT MET")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", type=float, default=20.0, help="measurement window in seconds")
    sys.exit(asyncio.run(main(parser.parse_args().window)))
