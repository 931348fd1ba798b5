"""CPU ceiling benchmark: how close the ingestor comes to a bare aioboto3 loop when the quota is not the limit.

The local endpoint runs with its quota OFF and 30 ms of added latency, in its own process (so the CPU measured here
is the client side's only: the ingestor, or the loop it is compared with). The Kafka broker is a subprocess too.
Three figures, measured one after the other in one run (the machine's CPU is shared: compare the ratios):

* ingestor: the whole service (Kafka in → decode → validate → batch → PutItems accepted → offsets committed), from
  joining the group until every record of the backlog is committed;
* ceiling: a bare aioboto3 loop sending pre-built 10-record PutItems batches with the same concurrency
  (``personalize.max_in_flight``) on the same client configuration — no Kafka, no validation, no bookkeeping;
* sequential: a plain consumer loop with a synchronous boto3 client, one 10-record call after the other and a
  commit after each fetch — what people write by hand.

Targets (issue 12): ingestor ÷ ceiling ≥ 0.80, ingestor ÷ sequential ≥ 20; CPU seconds per 1,000 records reported.

    .venv/bin/python bench/bench_cpu.py [--records 40000] [--concurrency 32] [--quick] [--profile out.pstats]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.support import CONFIG, Endpoint, all_committed, emulator_process, emulator_stats, report, wait_for
from ingestor.app import Service, personalize_client, run_async
from ingestor.broker import EmbeddedBroker
from ingestor.config import Settings
from ingestor.kafka_tools import create_topics, produce
from ingestor.model import TopicPartition

ARN = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/ITEMS"
PARTITIONS = 8
LATENCY_MS = 30


def settings(bootstrap: str, endpoint: str, topic: str, concurrency: int, http: str = "sdk") -> Settings:
    return Settings(
        kafka={
            "bootstrap_servers": bootstrap,
            "group_id": f"g-{topic}",
            "dead_letter_topic": f"dlq-{topic}",
            "session_timeout_ms": 3000,
            "heartbeat_interval_ms": 500,
        },
        personalize={
            "endpoint_url": endpoint,
            "aws_access_key_id": "x",
            "aws_secret_access_key": "x",
            "max_in_flight": concurrency,
            "rate_limits": {"PutItems": 1e6},  # the quota is not what is measured here
            "http": http,
        },
        routes=[{"topic": topic, "kind": "items", "dataset_arn": ARN, "schema": CONFIG / "schemas/items.avsc"}],
        metrics={"port": 0},
        logging={"level": "WARNING"},
    )


def row(i: int) -> dict[str, Any]:
    return {"ITEM_ID": f"item-{i}", "PRICE": 9.5, "GENRES": "action|drama", "CREATION_TIMESTAMP": 1_700_000_000}


def api_record(flat: dict[str, Any]) -> dict[str, str]:
    """A flat row → the API's shape, by hand (ITEM_ID → itemId, other columns camelCase in a properties string)."""
    props = {}
    for column, value in flat.items():
        if column != "ITEM_ID":
            head, *rest = column.lower().split("_")
            props[head + "".join(w.capitalize() for w in rest)] = value
    return {"itemId": flat["ITEM_ID"], "properties": json.dumps(props)}


async def backlog(bootstrap: str, topic: str, n: int) -> dict[TopicPartition, int]:
    await create_topics(bootstrap, {topic: PARTITIONS, f"dlq-{topic}": 1})
    records = [(topic, f"item-{i}".encode(), json.dumps(row(i)).encode()) for i in range(n)]
    last = await produce(bootstrap, records)
    return {TopicPartition(tp.topic, tp.partition): off for tp, off in last.items()}


class Clock:
    """Wall time, this process's CPU time and the endpoint's CPU time between ``start`` and ``stop``."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def start(self) -> None:
        self.t0, self.c0, self.e0 = time.perf_counter(), time.process_time(), self.endpoint.cpu_s()

    def stop(self, records: int) -> dict[str, float]:
        wall, cpu = time.perf_counter() - self.t0, time.process_time() - self.c0
        endpoint_cpu = self.endpoint.cpu_s() - self.e0
        return {
            "records": records,
            "seconds": wall,
            "records_per_s": records / wall,
            "cpu_s_per_1k": cpu / records * 1e3,
            "endpoint_cpu_s_per_1k": endpoint_cpu / records * 1e3,
        }


async def run_ingestor(
    bootstrap: str, endpoint: Endpoint, n: int, concurrency: int, profile: str | None, http: str = "sdk"
) -> dict[str, float]:
    url = endpoint.url
    topic = f"cpu-{uuid.uuid4().hex[:8]}"
    ends = await backlog(bootstrap, topic, n)
    service = Service(settings(bootstrap, url, topic, concurrency, http))
    before = await emulator_stats(url)
    run = asyncio.create_task(service.run())
    await wait_for(lambda: service.source is not None and service.source.joined, 60, "the consumer to join")
    clock, profiler = Clock(endpoint), cProfile.Profile() if profile else None
    clock.start()
    if profiler:
        profiler.enable()
    assert service.pipeline is not None
    pipeline = service.pipeline
    await wait_for(lambda: all_committed(pipeline, ends), 600, "every record committed")
    if profiler:
        profiler.disable()
        profiler.dump_stats(profile)  # type: ignore[arg-type]
    out = clock.stop(n)
    service.stop_requested.set()
    await run
    after = await emulator_stats(url)
    out["records_per_call"] = (after["records"]["PutItems"]["ok"] - before["records"]["PutItems"]["ok"]) / max(
        1, after["calls"]["PutItems"]["ok"] - before["calls"]["PutItems"]["ok"]
    )
    return out


async def run_ceiling(endpoint: Endpoint, n: int, concurrency: int) -> dict[str, float]:
    s = settings("127.0.0.1:1", endpoint.url, "ceiling", concurrency)
    batches = [[api_record(row(i + j)) for j in range(10)] for i in range(0, n, 10)]
    async with personalize_client(s) as client:
        await client.put_items(datasetArn=ARN, items=batches[0])  # connect + warm up, as the service does at start
        queue = iter(batches)

        async def worker() -> None:
            for batch in queue:
                await client.put_items(datasetArn=ARN, items=batch)

        clock = Clock(endpoint)
        clock.start()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return clock.stop(len(batches) * 10)


async def run_sequential(bootstrap: str, endpoint: Endpoint, n: int) -> dict[str, float]:
    """A plain hand-written sink: consumer loop, synchronous boto3, one call after the other, commit per fetch."""
    from aiokafka import AIOKafkaConsumer

    topic = f"seq-{uuid.uuid4().hex[:8]}"
    await backlog(bootstrap, topic, n)
    client = boto3.client(
        "personalize-events",
        region_name="us-east-1",
        endpoint_url=endpoint.url,
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
    )
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"g-{topic}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=3000,
        heartbeat_interval_ms=500,
    )
    await consumer.start()
    done, clock = 0, Clock(endpoint)
    try:
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=100)
        clock.start()
        while done < n:
            fetched = await consumer.getmany(timeout_ms=500, max_records=500)
            for records in fetched.values():
                for i in range(0, len(records), 10):
                    items = []
                    for r in records[i : i + 10]:
                        items.append(api_record(json.loads(r.value)))
                    client.put_items(datasetArn=ARN, items=items)
                    done += len(items)
            if fetched:
                await consumer.commit()
        return clock.stop(done)
    finally:
        await consumer.stop()
        client.close()


async def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    broker = EmbeddedBroker().start()
    runs: dict[str, dict[str, float]] = {}
    try:
        with emulator_process("--no-quotas", "--latency-ms", str(LATENCY_MS)) as endpoint:
            for http in ("sdk", "direct"):
                runs[f"ingestor_{http}"] = await run_ingestor(
                    broker.bootstrap_servers, endpoint, args.records, args.concurrency, args.profile, http
                )
            runs["ceiling"] = await run_ceiling(endpoint, args.records, args.concurrency)
            runs["sequential"] = await run_sequential(broker.bootstrap_servers, endpoint, args.sequential_records)
    finally:
        broker.stop()
    ceiling, sequential = runs["ceiling"], runs["sequential"]
    labels = {
        "ingestor_sdk": "ingestor, http: sdk (aioboto3)",
        "ingestor_direct": "ingestor, http: direct",
        "ceiling": "ceiling: bare aioboto3 loop",
        "sequential": "sequential boto3 sink",
    }
    rows = [(f"{labels[name]}: records/s", f"{r['records_per_s']:,.0f}", "") for name, r in runs.items()]
    figures: dict[str, object] = dict(runs)
    for http in ("sdk", "direct"):
        r = runs[f"ingestor_{http}"]
        figures[f"{http}_vs_ceiling"] = r["records_per_s"] / ceiling["records_per_s"]
        figures[f"{http}_vs_sequential"] = r["records_per_s"] / sequential["records_per_s"]
        rows += [
            (f"ingestor ({http}) ÷ ceiling", f"{figures[f'{http}_vs_ceiling']:.2f}", "≥ 0.80"),
            (f"ingestor ({http}) ÷ sequential", f"{figures[f'{http}_vs_sequential']:.1f}×", "≥ 20×"),
        ]
    rows.append(("ceiling ÷ sequential", f"{ceiling['records_per_s'] / sequential['records_per_s']:.1f}×", ""))
    rows += [(f"{labels[name]}: CPU s / 1,000 records", f"{r['cpu_s_per_1k']:.3f}", "") for name, r in runs.items()]
    rows += [
        (f"endpoint (subprocess) CPU s / 1,000 records, {name}", f"{r['endpoint_cpu_s_per_1k']:.3f}", "")
        for name, r in runs.items()
    ]
    rows += [
        (f"ingestor ({h}) records per call", f"{runs[f'ingestor_{h}']['records_per_call']:.2f}", "")
        for h in ("sdk", "direct")
    ]
    met = {
        http: figures[f"{http}_vs_ceiling"] >= 0.8 and figures[f"{http}_vs_sequential"] >= 20  # type: ignore[operator]
        for http in ("sdk", "direct")
    }
    figures["targets_met"] = met
    report(
        f"bench_cpu: {args.records:,} records, concurrency {args.concurrency}, endpoint +{LATENCY_MS} ms, quota off",
        rows,
        figures,
        args.json,
    )
    print("targets:", ", ".join(f"{http} {'MET' if ok else 'NOT MET'}" for http, ok in met.items()))
    return 0 if any(met.values()) or args.quick else 1


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=40_000, help="backlog for the ingestor and the ceiling")
    p.add_argument("--sequential-records", type=int, default=2_000, help="records the sequential sink sends")
    p.add_argument("--concurrency", type=int, default=32, help="personalize.max_in_flight, and the ceiling's workers")
    p.add_argument("--quick", action="store_true", help="a small run (CI smoke test): figures, no target check")
    p.add_argument("--profile", metavar="FILE", help="cProfile the ingestor's run into FILE (pstats)")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    args = p.parse_args(argv)
    if args.quick:
        args.records, args.sequential_records = min(args.records, 2_000), min(args.sequential_records, 200)
    return args


if __name__ == "__main__":
    sys.exit(int(run_async(main(parse()))))
