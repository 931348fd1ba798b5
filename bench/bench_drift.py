"""Schema drift benchmark: what a stale schema file costs in PutItems quota, and what the fetched schema saves.

A backlog of item changes where some records (``--drift``, default 5 %) carry a field the dataset does not have
(COLOR), against the local endpoint with its quota ON (PutItems 10 calls/s). Two runs over the same window:

* ``stale file``: the route's schema file has COLOR (it drifted from the dataset): drifted records pass validation,
  every call carrying one is rejected whole and bisected — quota spent on rejects;
* ``fetched schema``: no schema file; the service validates against the dataset's schema fetched at start
  (DescribeDataset → DescribeSchema): drifted records are dead-lettered at stage ``validate`` and cost no call.

Figures: accepted calls/s as a share of the quota, the share of calls rejected, records per accepted call, and the
DLQ stages. Target (issue 11): with the fetched schema, ≥ 95 % of the quota on accepted calls and ≥ 9.5 records
per call while some records drift.

    .venv/bin/python bench/bench_drift.py [--window 20] [--drift 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
import tempfile
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
QUOTA = 10.0


def stale_schema(folder: Path) -> Path:
    avro = json.loads((CONFIG / "schemas/items.avsc").read_text())
    avro["fields"].append({"name": "COLOR", "type": ["null", "string"], "categorical": True})
    path = folder / "items-stale.avsc"
    path.write_text(json.dumps(avro))
    return path


def settings(bootstrap: str, endpoint: str, tag: str, schema: Path | None) -> Settings:
    route: dict[str, object] = {"topic": f"items-{tag}", "kind": "items", "dataset_arn": ITEMS_ARN}
    if schema is not None:
        route["schema"] = schema
    return Settings(
        kafka={
            "bootstrap_servers": bootstrap,
            "group_id": f"bench-{tag}",
            "dead_letter_topic": f"dlq-{tag}",
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 500,
        },
        personalize={"endpoint_url": endpoint, "aws_access_key_id": "x", "aws_secret_access_key": "x"},
        routes=[route],
        metrics={"port": 0},
    )


def backlog(tag: str, count: int, drift: float, seed: int = 7) -> list[tuple[str, bytes, bytes]]:
    rnd = random.Random(seed)
    out = []
    for i in range(count):
        item: dict[str, object] = {"ITEM_ID": f"i{i}", "PRICE": 1.5, "CREATION_TIMESTAMP": 1_700_000_000}
        if rnd.random() < drift:
            item["COLOR"] = "red"
        out.append((f"items-{tag}", f"i{i}".encode(), json.dumps(item).encode()))
    return out


async def scenario(broker: EmbeddedBroker, schema: Path | None, window: float, drift: float) -> dict[str, float]:
    tag = f"drift-{'file' if schema else 'live'}-{int(time.time())}"
    count = int(QUOTA * 10 * (window + 15))  # more than can drain during warm-up + window
    await create_topics(broker.bootstrap_servers, {f"items-{tag}": 4, f"dlq-{tag}": 1})
    await produce(broker.bootstrap_servers, backlog(tag, count, drift))
    config = EmulatorConfig.load(CONFIG / "emulator.yaml", quotas={"enabled": True, "put_items": QUOTA})
    async with running_emulator(config) as emu:
        service = Service(settings(broker.bootstrap_servers, emu.url, tag, schema), registry=CollectorRegistry())
        run = asyncio.create_task(service.run())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            stats = await emu.client.stats()
            if stats["calls"]["PutItems"]["ok"] > 20:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(2)
        before, t0 = await emu.client.stats(), time.monotonic()
        await asyncio.sleep(window)
        after, t1 = await emu.client.stats(), time.monotonic()
        service.stop_requested.set()
        await run
        dead = _dead(service)  # the whole run: the backlog is validated as it is fetched, mostly before the window
    elapsed = t1 - t0
    calls = {k: after["calls"]["PutItems"][k] - before["calls"]["PutItems"][k] for k in after["calls"]["PutItems"]}
    records_ok = after["records"]["PutItems"]["ok"] - before["records"]["PutItems"]["ok"]
    spent = calls["ok"] + calls["invalid_input"] + calls["throttled"]
    return {
        "accepted calls, % of quota": 100 * calls["ok"] / elapsed / QUOTA,
        "rejected calls, % of calls": 100 * calls["invalid_input"] / max(1, spent),
        "records per accepted call": records_ok / max(1, calls["ok"]),
        "DLQ at validate (whole run)": dead["validate"],
        "DLQ at api (whole run)": dead["api"],
    }


def _dead(service: Service) -> dict[str, float]:
    out = {"validate": 0.0, "api": 0.0}
    for metric in service.metrics.registry.collect():
        for s in metric.samples:
            if s.name == "ingestor_records_dead_lettered_total" and s.labels.get("stage") in out:
                out[s.labels["stage"]] += s.value
    return out


async def main(window: float, drift: float) -> int:
    logging.basicConfig(level=logging.ERROR)
    broker = EmbeddedBroker().start()
    try:
        with tempfile.TemporaryDirectory() as folder:
            results = {
                "stale file": await scenario(broker, stale_schema(Path(folder)), window, drift),
                "fetched schema": await scenario(broker, None, window, drift),
            }
    finally:
        broker.stop()
    keys = list(results["stale file"])
    drifted = sum(1 for _, _, v in backlog("x", int(QUOTA * 10 * (window + 15)), drift) if b"COLOR" in v)
    print(
        f"{drift:.0%} of records drift ({drifted} records have a field the dataset lacks); "
        f"PutItems quota {QUOTA:g} calls/s; window {window:g} s"
    )
    print(f"{'metric':<30}" + "".join(f"{name:>16}" for name in results))
    for k in keys:
        print(f"{k:<30}" + "".join(f"{r[k]:>16.2f}" for r in results.values()))
    live = results["fetched schema"]
    ok = (
        live["accepted calls, % of quota"] >= 95
        and live["records per accepted call"] >= 9.5
        and live["rejected calls, % of calls"] == 0
    )
    print(
        "target with the fetched schema (≥95 % of quota on accepted calls, ≥9.5 records/call, no rejected call):",
        "MET" if ok else "NOT MET",
    )
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", type=float, default=20.0, help="measurement window in seconds")
    parser.add_argument("--drift", type=float, default=0.05, help="share of records with a field the dataset lacks")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.window, args.drift)))
