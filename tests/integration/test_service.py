"""The service end to end: real broker (Tansu) + the local Personalize endpoint, in one event loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from ingestor.app import EXIT_OK, Service
from ingestor.config import Settings
from ingestor.emulator.app import running_emulator
from ingestor.emulator.config import EmulatorConfig
from ingestor.kafka_tools import create_topics, produce, read_topic
from ingestor.sample import ITEMS_TOPIC, USERS_TOPIC, Expectation, StreamSpec, generate
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

CONFIG = Path(__file__).parents[2] / "config"
ITEMS_ARN = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/ITEMS"
USERS_ARN = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/USERS"


def service_settings(bootstrap: str, endpoint: str, suffix: str, **extra: object) -> Settings:
    return Settings.load(
        CONFIG / "ingestor.yaml",
        kafka={
            "bootstrap_servers": bootstrap,
            "group_id": f"ingestor-{suffix}",
            "dead_letter_topic": f"dlq-{suffix}",
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 500,
            "commit_interval_s": 0.2,
        },
        personalize={
            "endpoint_url": endpoint,
            "aws_access_key_id": "test",
            "aws_secret_access_key": "test",
            "max_in_flight": 4,
        },
        routes=[
            {
                "topic": f"{ITEMS_TOPIC}-{suffix}",
                "kind": "items",
                "dataset_arn": ITEMS_ARN,
                "schema": str(CONFIG / "schemas/items.avsc"),
            },
            {
                "topic": f"{USERS_TOPIC}-{suffix}",
                "kind": "users",
                "dataset_arn": USERS_ARN,
                "schema": str(CONFIG / "schemas/users.avsc"),
            },
        ],
        metrics={"port": 0},
        **extra,
    )


async def test_stream_with_repeats_and_bad_records_ends_exact(broker, unique) -> None:
    suffix = unique("e2e")
    items, users, dlq = f"{ITEMS_TOPIC}-{suffix}", f"{USERS_TOPIC}-{suffix}", f"dlq-{suffix}"
    await create_topics(broker.bootstrap_servers, {items: 3, users: 2, dlq: 1})
    events = list(generate(3000, StreamSpec(items=300, users=100, bad_share=0.03, seed=11)))
    expect = Expectation()
    for e in events:
        expect.add(e)
    rename = {ITEMS_TOPIC: items, USERS_TOPIC: users}
    ends = await produce(broker.bootstrap_servers, [(rename[e.topic], e.key, e.value) for e in events])
    assert expect.invalid, "the stream must contain bad records"

    config = EmulatorConfig.load(CONFIG / "emulator.yaml", quotas={"enabled": False})
    async with running_emulator(config) as emu:
        settings = service_settings(broker.bootstrap_servers, emu.url, suffix)
        service = Service(settings, registry=CollectorRegistry())
        run = asyncio.create_task(service.run())

        async def caught_up() -> bool:
            if service.source is None or run.done():
                return run.done()
            committed = {
                TopicPartition(tp.topic, tp.partition): off for tp, off in service.pipeline.tracker._committed.items()
            }
            return all(committed.get(tp) == off + 1 for tp, off in ends.items())

        await wait_until(caught_up, timeout=90, what="commits to reach the end of every partition")
        assert not run.done(), run
        await check_scrape(service)
        service.stop_requested.set()
        assert await asyncio.wait_for(run, 30) == EXIT_OK

        # The endpoint holds exactly the last valid event per id.
        assert expect.mismatches(ITEMS_TOPIC, await emu.client.records(ITEMS_ARN)) == []
        assert expect.mismatches(USERS_TOPIC, await emu.client.records(USERS_ARN)) == []
        stats = await emu.client.stats()
        assert stats["max_records_per_call"] <= 10
        assert stats["max_concurrent_calls"] <= 4

        # The DLQ holds exactly the bad records, bytes unchanged, with the required headers.
        dead = await read_topic(broker.bootstrap_servers, dlq)
        assert sorted(r.value for r in dead) == sorted(e.value for e in expect.invalid)
        for r in dead:
            headers = {k: v.decode() for k, v in r.headers}
            assert headers["ingestor.error.stage"] in {"decode", "validate"}
            assert headers["ingestor.source.topic"] in {items, users}
            assert int(headers["ingestor.source.offset"]) >= 0
            assert headers["ingestor.dataset.arn"] in {ITEMS_ARN, USERS_ARN}
            assert f"@{headers['ingestor.source.offset']}" in headers["ingestor.error.reason"]

        # A restarted ingestor re-reads nothing past the committed offsets.
        again = Service(settings, registry=CollectorRegistry())
        run2 = asyncio.create_task(again.run())

        async def positioned_at_the_end() -> bool:
            if again.source is None or not again.source.joined:
                return False
            consumer = again.source.consumer
            try:
                return all([await consumer.position(tp) == off + 1 for tp, off in ends.items()])
            except Exception:  # not assigned yet
                return False

        await wait_until(positioned_at_the_end, timeout=30, what="the second run to resume at the committed ends")
        consumed = again.metrics.records_consumed
        again.stop_requested.set()
        assert await asyncio.wait_for(run2, 30) == EXIT_OK
        assert sum(s.value for m in consumed.collect() for s in m.samples if s.name.endswith("_total")) == 0


async def check_scrape(service: Service) -> None:
    """Scrape the running service: health endpoints answer, and every ingestor_* series that the alerts and the
    dashboard query is one the service really exports."""
    import re

    import aiohttp
    import promql_parser

    from tests.deploy.test_observability import dashboard_queries, parse, rules, substitute

    assert service.health is not None
    base = f"http://127.0.0.1:{service.health.port}"
    async with aiohttp.ClientSession() as http:
        for path in ("/healthz", "/readyz"):
            async with http.get(base + path) as resp:
                assert resp.status == 200, (path, await resp.text())
        async with http.get(base + "/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
    families = set(re.findall(r"^# TYPE (\S+) ", text, flags=re.MULTILINE))
    assert "ingestor_records_consumed_total" in text and "ingestor_api_call_duration_seconds_bucket" in text

    used: set[str] = set()
    exprs = [("rule " + r.get("alert", r.get("record", "")), r["expr"]) for r in rules()] + dashboard_queries()
    for where, expr in exprs:

        def visit(node: object) -> None:
            if isinstance(node, promql_parser.VectorSelector) and node.name and node.name.startswith("ingestor_"):
                used.add(node.name)

        promql_parser.walk(parse(where, substitute(expr)), visit)
    assert used, "the alerts and dashboard query the service's metrics"
    missing = {n for n in used if not {n, re.sub(r"_(total|bucket|sum|count|created)$", "", n)} & families}
    assert not missing, f"queried but not exported by the running service: {sorted(missing)}"
