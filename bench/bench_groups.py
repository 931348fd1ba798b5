"""Many dataset groups in one process: 20 groups (40 routes: items + users each), every group with a backlog.

The local endpoint runs with its quota ON (10 calls/s per group and API) in its own process and counts calls per
dataset group (``by_group`` in ``GET /_emulator/stats``). One ingestor process runs all 40 routes with default settings.
Three scenarios, each measured over a window after a warm-up:

* all healthy: every group and API should get ≥ 95 % of its quota; none starves (the minimum is reported);
* one failing group: the endpoint's quota for group 0 drops to 1 call/s while the ingestor is still configured for
  10, so it is throttled hard until AIMD finds the real quota; the OTHER groups must still get ≥ 95 %;
* one fatal group: the endpoint does not know group 0's datasets (ResourceNotFoundException). The group is held
  (``personalize.on_fatal: hold``, the default: its partitions paused, a probe call every ``fatal_retry_s``); the
  OTHER groups must still get ≥ 95 %.

Reported: min / median share of the quota per group and API, throttled calls, records per call, the process's
peak resident memory (target < 250 MB). tests/chaos/test_fatal_route.py checks the delivery side of a held group
(the other routes converge exactly, the held one commits nothing past its first record).

    .venv/bin/python bench/bench_groups.py [--groups 20] [--window 20] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.support import CONFIG, emulator_process, emulator_stats, report, rss_mb, wait_for
from ingestor.app import Service, run_async
from ingestor.broker import EmbeddedBroker
from ingestor.config import Settings
from ingestor.kafka_tools import create_topics, produce

QUOTA = 10.0
APIS = ("PutItems", "PutUsers")
FAILING = "store00"


def group(i: int) -> str:
    return f"store{i:02d}"


def arn(g: str, kind: str) -> str:
    return f"arn:aws:personalize:us-east-1:123456789012:dataset/{g}/{kind}"


def emulator_yaml(folder: Path, groups: int, unknown: str | None = None) -> Path:
    """The endpoint's datasets: every group's, except ``unknown``'s (calls to it fail with ResourceNotFound)."""
    datasets = [
        {"arn": arn(group(i), kind), "kind": kind, "schema": str(CONFIG / f"schemas/{kind.lower()}.avsc")}
        for i in range(groups)
        for kind in ("ITEMS", "USERS")
        if group(i) != unknown
    ]
    path = folder / "emulator.yaml"
    path.write_text(yaml.safe_dump({"datasets": datasets, "quotas": {"enabled": True, "put_items": QUOTA}}))
    return path


def settings(
    bootstrap: str, endpoint: str, tag: str, groups: int, http: str = "direct", max_in_flight: int = 16
) -> Settings:
    routes = [
        {
            "topic": f"{kind}-{group(i)}-{tag}",
            "kind": kind,
            "dataset_arn": arn(group(i), kind.upper()),
            "schema": CONFIG / f"schemas/{kind}.avsc",
        }
        for i in range(groups)
        for kind in ("items", "users")
    ]
    return Settings(
        kafka={
            "bootstrap_servers": bootstrap,
            "group_id": f"g-{tag}",
            "dead_letter_topic": f"dlq-{tag}",
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 500,
        },
        personalize={
            "endpoint_url": endpoint,
            "aws_access_key_id": "x",
            "aws_secret_access_key": "x",
            "http": http,
            "max_in_flight": max_in_flight,
        },
        routes=routes,
        shutdown={"drain_budget_s": 2},  # the backlog is not drained at the end: stop soon after the window
        metrics={"port": 0},
        logging={"level": "WARNING"},
    )


def backlog(tag: str, groups: int, per_route: int) -> list[tuple[str, bytes, bytes]]:
    out = []
    for i in range(groups):
        g = group(i)
        for n in range(per_route):
            item = {"ITEM_ID": f"i{n}", "PRICE": 1.5, "CREATION_TIMESTAMP": 1_700_000_000}
            user = {"USER_ID": f"u{n}", "AGE": 30, "MEMBERSHIP": "gold"}
            out.append((f"items-{g}-{tag}", f"i{n}".encode(), json.dumps(item).encode()))
            out.append((f"users-{g}-{tag}", f"u{n}".encode(), json.dumps(user).encode()))
    return out


async def scenario(
    bootstrap: str, groups: int, window: float, failure: str | None, warmup: float, http: str, max_in_flight: int
) -> dict[str, Any]:
    """``failure``: None, "throttled" (group 0's real quota is 1/s) or "fatal" (the endpoint does not know group 0)."""
    failing = failure is not None
    tag = uuid.uuid4().hex[:6]
    per_route = int(QUOTA * 10 * (warmup + window + 10))  # more than can drain during warm-up + window
    topics = {f"{kind}-{group(i)}-{tag}": 2 for i in range(groups) for kind in ("items", "users")}
    await create_topics(bootstrap, {**topics, f"dlq-{tag}": 1})
    await produce(bootstrap, backlog(tag, groups, per_route))
    with tempfile.TemporaryDirectory() as folder:
        config = emulator_yaml(Path(folder), groups, unknown=FAILING if failure == "fatal" else None)
        args = ["--put-users-rate", str(QUOTA)]
        with emulator_process(*args, config=config) as endpoint:
            if failure == "throttled":
                from ingestor.emulator.client import EmulatorClient

                async with EmulatorClient(endpoint.url) as client:
                    await client.configure(quotas={"groups": {FAILING: {"PutItems": 1.0, "PutUsers": 1.0}}})
            service = Service(settings(bootstrap, endpoint.url, tag, groups, http, max_in_flight))
            run = asyncio.create_task(service.run())
            await wait_for(lambda: service.source is not None and service.source.joined, 60, "the consumer to join")
            peak = [rss_mb()]

            async def sample_memory() -> None:
                while True:
                    peak[0] = max(peak[0], rss_mb())
                    await asyncio.sleep(0.5)

            sampler = asyncio.create_task(sample_memory())
            await asyncio.sleep(warmup)
            before, t0 = await emulator_stats(endpoint.url), time.monotonic()
            cpu0 = time.process_time()
            await asyncio.sleep(window)
            after, t1 = await emulator_stats(endpoint.url), time.monotonic()
            cpu = time.process_time() - cpu0
            held = len(service.pipeline.held_datasets) if service.pipeline is not None else 0
            sampler.cancel()
            service.stop_requested.set()
            await run
    elapsed = t1 - t0
    shares: dict[str, float] = {}
    throttled = ok_total = records_total = 0
    for i in range(groups):
        g = group(i)
        for api in APIS:
            a = after["by_group"].get(g, {}).get(api, {"calls": {}, "records": 0})
            b = before["by_group"].get(g, {}).get(api, {"calls": {}, "records": 0})
            ok = a["calls"].get("ok", 0) - b["calls"].get("ok", 0)
            thr = a["calls"].get("throttled", 0) - b["calls"].get("throttled", 0)
            quota = 1.0 if failure == "throttled" and g == FAILING else QUOTA
            shares[f"{g}/{api}"] = 100 * ok / elapsed / quota
            if not (failing and g == FAILING):
                throttled += thr
                ok_total += ok
                records_total += a["records"] - b["records"]
    healthy = [v for k, v in shares.items() if not (failing and k.startswith(FAILING + "/"))]
    out: dict[str, Any] = {
        "min_quota_pct": min(healthy),
        "median_quota_pct": statistics.median(healthy),
        "throttled_pct": 100 * throttled / max(1, ok_total + throttled),
        "records_per_call": records_total / max(1, ok_total),
        "records_per_s": records_total / elapsed,
        "cpu_s_per_1k": cpu / max(1, records_total) * 1e3,
        "cpu_share_of_one_core": cpu / elapsed,
        "peak_rss_mb": peak[0],
        "shares": shares,
        "datasets_held": held,
    }
    if failure == "throttled":
        out["failing_group_quota_pct"] = statistics.fmean(shares[f"{FAILING}/{api}"] for api in APIS)
    if failure == "fatal":  # its probe calls in the window (one per fatal_retry_s and dataset at most)
        out["failing_group_calls"] = sum(
            sum(after["by_group"].get(FAILING, {}).get(api, {"calls": {}})["calls"].values())
            - sum(before["by_group"].get(FAILING, {}).get(api, {"calls": {}})["calls"].values())
            for api in APIS
        )
    return out


async def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.ERROR)
    broker = EmbeddedBroker().start()
    try:
        healthy, failing, fatal = [
            await scenario(
                broker.bootstrap_servers, args.groups, args.window, failure, args.warmup, args.http, args.max_in_flight
            )
            for failure in (None, "throttled", "fatal")
        ]
    finally:
        broker.stop()
    rows = []
    scenarios = (("all healthy", healthy), ("group 0 throttled hard", failing), ("group 0 fatal (held)", fatal))
    for name, r in scenarios:
        rows += [
            (f"{name}: min share of quota (healthy groups)", f"{r['min_quota_pct']:.1f} %", "≥ 95 %"),
            (f"{name}: median share of quota", f"{r['median_quota_pct']:.1f} %", ""),
            (f"{name}: calls throttled (healthy groups)", f"{r['throttled_pct']:.1f} %", ""),
            (f"{name}: records per call", f"{r['records_per_call']:.2f}", ""),
            (f"{name}: records/s (all groups)", f"{r['records_per_s']:,.0f}", ""),
            (f"{name}: CPU s per 1,000 records", f"{r['cpu_s_per_1k']:.3f}", ""),
            (f"{name}: CPU used (share of one core)", f"{r['cpu_share_of_one_core']:.2f}", ""),
            (f"{name}: peak RSS", f"{r['peak_rss_mb']:.0f} MB", "< 250 MB"),
        ]
    rows += [
        ("group 0 (real quota 1/s): share of its real quota", f"{failing['failing_group_quota_pct']:.0f} %", ""),
        ("group 0 fatal: datasets held at the end", str(fatal["datasets_held"]), "2"),
        ("group 0 fatal: its calls in the window (probes)", str(fatal["failing_group_calls"]), ""),
    ]
    met = fatal["datasets_held"] == 2 and all(r["min_quota_pct"] >= 95 and r["peak_rss_mb"] < 250 for _, r in scenarios)
    report(
        f"bench_groups: {args.groups} dataset groups ({2 * args.groups} routes), quota on, window {args.window:g} s, "
        f"http: {args.http}, max_in_flight {args.max_in_flight}",
        rows,
        {
            "groups": args.groups,
            "http": args.http,
            "max_in_flight": args.max_in_flight,
            "healthy": healthy,
            "one_failing": failing,
            "one_fatal": fatal,
            "targets_met": met,
        },
        args.json,
    )
    print("targets:", "MET" if met else "NOT MET")
    return 0 if met or args.quick else 1


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--groups", type=int, default=20)
    p.add_argument("--window", type=float, default=20.0, help="measurement window in seconds")
    p.add_argument("--http", choices=("sdk", "direct"), default="direct", help="personalize.http (default: direct)")
    p.add_argument("--max-in-flight", type=int, default=16, help="personalize.max_in_flight (default: 16)")
    p.add_argument("--warmup", type=float, default=8.0, help="seconds after joining before the window starts")
    p.add_argument("--quick", action="store_true", help="a small run (CI smoke test): figures, no target check")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    args = p.parse_args(argv)
    if args.quick:
        args.groups, args.window, args.warmup = min(args.groups, 3), min(args.window, 3.0), min(args.warmup, 3.0)
    return args


if __name__ == "__main__":
    sys.exit(int(run_async(main(parse()))))
