"""Avro change streams end to end: real broker (Tansu) + the local endpoint with its Schema Registry subset."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from ingestor.app import EXIT_OK, Service
from ingestor.emulator.app import running_emulator
from ingestor.emulator.config import EmulatorConfig
from ingestor.kafka_tools import create_topics, produce, read_topic
from ingestor.sample import (
    ITEMS_TOPIC,
    USERS_TOPIC,
    AvroSchemas,
    Expectation,
    StreamSpec,
    generate,
    register_avro_schemas,
)
from tests.conftest import wait_until
from tests.integration.test_service import CONFIG, ITEMS_ARN, USERS_ARN, service_settings

pytestmark = pytest.mark.integration


def avro_settings(bootstrap: str, endpoint: str, suffix: str) -> Any:
    s = service_settings(
        bootstrap,
        endpoint,
        suffix,
        schema_registry={"url": endpoint, "retry_base_delay_s": 0.1, "retry_max_delay_s": 0.5},
    )
    # items: format avro; users: format auto (detects the magic byte)
    routes = [r.model_dump(by_alias=True) for r in s.routes]
    routes[0]["format"] = "avro"
    return type(s).load(
        None,
        **{k: v for k, v in s.model_dump(by_alias=True).items() if k not in ("routes",)},
        routes=routes,
    )


async def run_until_committed(service: Service, ends: dict[TopicPartition, int], run: asyncio.Task[int]) -> None:
    async def caught_up() -> bool:
        if service.pipeline is None or run.done():
            return run.done()
        committed = service.pipeline.tracker._committed
        return all(committed.get(_ours(tp)) == off + 1 for tp, off in ends.items())

    await wait_until(caught_up, timeout=90, what="commits to reach the end of every partition")
    assert not run.done(), run


def _ours(tp: TopicPartition) -> Any:
    from ingestor.model import TopicPartition as Ours

    return Ours(tp.topic, tp.partition)


async def test_avro_stream_plain_debezium_and_evolved_ends_exact(broker, unique) -> None:
    suffix = unique("avro")
    items, users, dlq = f"{ITEMS_TOPIC}-{suffix}", f"{USERS_TOPIC}-{suffix}", f"dlq-{suffix}"
    await create_topics(broker.bootstrap_servers, {items: 3, users: 2, dlq: 1})
    config = EmulatorConfig.load(CONFIG / "emulator.yaml", quotas={"enabled": False})
    async with running_emulator(config) as emu:
        schemas = await register_avro_schemas(emu.url)
        events = list(generate(1500, StreamSpec(items=150, users=60, bad_share=0.05, seed=5, avro=schemas)))
        expect = Expectation()
        for e in events:
            expect.add(e)
        rename = {ITEMS_TOPIC: items, USERS_TOPIC: users}
        ends = await produce(broker.bootstrap_servers, [(rename[e.topic], e.key, e.value) for e in events])

        service = Service(avro_settings(broker.bootstrap_servers, emu.url, suffix), registry=CollectorRegistry())
        run = asyncio.create_task(service.run())
        await run_until_committed(service, ends, run)
        service.stop_requested.set()
        assert await asyncio.wait_for(run, 30) == EXIT_OK

        assert expect.mismatches(ITEMS_TOPIC, await emu.client.records(ITEMS_ARN)) == []
        assert expect.mismatches(USERS_TOPIC, await emu.client.records(USERS_ARN)) == []
        dead = await read_topic(broker.bootstrap_servers, dlq)
        assert sorted(r.value for r in dead) == sorted(e.value for e in expect.invalid)
        by_problem: dict[str, set[str]] = {}
        for r in dead:
            h = {k: v.decode() for k, v in r.headers}
            by_problem.setdefault(h["ingestor.error.stage"], set()).add(h["ingestor.error.reason"].partition(": ")[2])
        decode_reasons = " ".join(by_problem["decode"])
        assert "schema id 999999 is not in the schema registry" in decode_reasons
        assert f"does not decode with schema id {schemas.by_name['items-v2'][0]}" in decode_reasons
        assert any("COLOR" in r for r in by_problem["validate"])


async def test_registry_outage_mid_stream_records_wait_then_flow(broker, unique) -> None:
    suffix = unique("avro-outage")
    items, users, dlq = f"{ITEMS_TOPIC}-{suffix}", f"{USERS_TOPIC}-{suffix}", f"dlq-{suffix}"
    await create_topics(broker.bootstrap_servers, {items: 2, users: 1, dlq: 1})
    config = EmulatorConfig.load(CONFIG / "emulator.yaml", quotas={"enabled": False})
    async with running_emulator(config) as emu:
        s: AvroSchemas = await register_avro_schemas(emu.url)

        def item(name: str, i: int, price: float, **extra: Any) -> tuple[str, bytes, bytes]:
            row = {"ITEM_ID": f"i{i}", "PRICE": price, "CREATION_TIMESTAMP": 1_700_000_000_000 + i, **extra}
            return (items, f"i{i}".encode(), s.encode(name, row))

        def user(i: int, age: int) -> tuple[str, bytes, bytes]:
            return (users, f"u{i}".encode(), s.encode("users", {"USER_ID": f"u{i}", "AGE": age, "MEMBERSHIP": "gold"}))

        service = Service(avro_settings(broker.bootstrap_servers, emu.url, suffix), registry=CollectorRegistry())
        run = asyncio.create_task(service.run())
        first = await produce(broker.bootstrap_servers, [item("items-v1", i, 1.0) for i in range(20)])
        first |= await produce(broker.bootstrap_servers, [user(i, 30) for i in range(10)])
        await run_until_committed(service, first, run)

        emu.registry.down = True  # the registry goes away; items now arrive with a schema id not cached yet
        second = await produce(
            broker.bootstrap_servers, [item("items-v2", i, 2.0, IN_STOCK=i % 2 == 0) for i in range(20)]
        )
        more_users = await produce(broker.bootstrap_servers, [user(i, 40) for i in range(10)])
        await run_until_committed(service, {**first, **more_users}, run)  # users (cached schema) flow meanwhile
        pipeline = service.pipeline
        assert pipeline is not None
        await wait_until(lambda: pipeline.held.count == 20, timeout=30, what="the items to wait for their schema")
        await wait_until(lambda: service.ready() is not None, timeout=10, what="readiness to report the outage")
        assert "schema registry" in (service.ready() or "")
        committed = pipeline.tracker._committed
        assert all(committed.get(_ours(tp)) == first[tp] + 1 for tp in second)  # items wait, uncommitted
        stored = await emu.client.records(ITEMS_ARN)
        assert {p["price"] for p in stored.values()} == {1.0}

        emu.registry.down = False  # back: the held records flow
        await run_until_committed(service, {**second, **more_users}, run)
        service.stop_requested.set()
        assert await asyncio.wait_for(run, 30) == EXIT_OK

        stored = await emu.client.records(ITEMS_ARN)
        assert len(stored) == 20
        for i in range(20):
            assert stored[f"i{i}"] == {
                "price": 2.0,
                "creationTimestamp": 1_700_000_000,
                "inStock": i % 2 == 0,
            }
        assert {p["age"] for p in (await emu.client.records(USERS_ARN)).values()} == {40}
        assert await read_topic(broker.bootstrap_servers, dlq, idle_s=1.0) == []  # nothing dead-lettered
