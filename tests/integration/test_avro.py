"""Avro change streams end to end: real broker (Tansu) + the local endpoint with its Schema Registry subset."""

from __future__ import annotations

import asyncio
import base64
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
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


def avro_settings(bootstrap: str, endpoint: str, suffix: str, **registry: Any) -> Any:
    """Items with format avro, users with format auto; ``registry``: schema_registry keys over the defaults."""
    s = service_settings(
        bootstrap,
        endpoint,
        suffix,
        schema_registry={"url": endpoint, "retry_base_delay_s": 0.1, "retry_max_delay_s": 0.5, **registry},
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


class RegistryFront:
    """A tiny registry in front of the local endpoint's: it records each request's Authorization header, answers
    401 to a wrong one (``expect_auth``), and while ``hang`` is set accepts requests but never answers them."""

    def __init__(self, upstream: str, expect_auth: str | None = None) -> None:
        self.upstream = upstream
        self.expect_auth = expect_auth
        self.hang = False
        self.auth_seen: list[str | None] = []
        self.hung = 0  # requests accepted and never answered
        self._closing = asyncio.Event()  # at exit: the hung handlers end (else the server waits for them)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> RegistryFront:
        app = web.Application()
        app.add_routes([web.get("/{path:.*}", self._handle)])
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        self._closing.set()
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.auth_seen.append(request.headers.get("Authorization"))
        if self.hang:
            self.hung += 1
            await self._closing.wait()  # the connection is open, the answer never comes (the client gives up)
            return web.Response(status=503)
        if self.expect_auth is not None and request.headers.get("Authorization") != self.expect_auth:
            return web.json_response({"error_code": 40101, "message": "Unauthorized"}, status=401)
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.upstream}/{request.match_info['path']}") as answer,
        ):
            return web.Response(body=await answer.read(), status=answer.status, content_type=answer.content_type)


def price_items(s: AvroSchemas, topic: str, price: float, n: int = 10) -> list[tuple[str, bytes, bytes]]:
    rows = [{"ITEM_ID": f"i{i}", "PRICE": price, "CREATION_TIMESTAMP": 1_700_000_000_000 + i} for i in range(n)]
    return [(topic, str(r["ITEM_ID"]).encode(), s.encode("items-v1", r)) for r in rows]


async def test_basic_auth_password_from_a_mounted_file_reaches_the_registry(broker, unique, tmp_path: Path) -> None:
    suffix = unique("avro-auth")
    items, dlq = f"{ITEMS_TOPIC}-{suffix}", f"dlq-{suffix}"
    await create_topics(broker.bootstrap_servers, {items: 1, dlq: 1})
    password = tmp_path / "registry-password"
    password.write_text("s3cret-from-file\n")  # as a mounted secret: the trailing newline is not part of it
    expected = "Basic " + base64.b64encode(b"ingestor:s3cret-from-file").decode()
    config = EmulatorConfig.load(CONFIG / "emulator.yaml", quotas={"enabled": False})
    async with running_emulator(config) as emu, RegistryFront(emu.url, expect_auth=expected) as front:
        schemas = await register_avro_schemas(emu.url)
        ends = await produce(broker.bootstrap_servers, price_items(schemas, items, 3.0))
        settings = avro_settings(
            broker.bootstrap_servers, emu.url, suffix, url=front.url,
            basic_auth_user="ingestor", basic_auth_password_file=str(password),
        )  # fmt: skip
        assert settings.schema_registry.basic_auth_password is None  # the password is only in the file
        service = Service(settings, registry=CollectorRegistry())
        run = asyncio.create_task(service.run())
        await run_until_committed(service, ends, run)
        service.stop_requested.set()
        assert await asyncio.wait_for(run, 30) == EXIT_OK
        stored = await emu.client.records(ITEMS_ARN)
    assert front.auth_seen and set(front.auth_seen) == {expected}  # every request carried the file's password
    assert {stored[f"i{i}"]["price"] for i in range(10)} == {3.0}  # decoded with the fetched schema and delivered
    assert await read_topic(broker.bootstrap_servers, dlq) == []


async def test_a_registry_that_never_answers_times_out_and_records_wait_not_dead_lettered(
    broker, unique, caplog
) -> None:
    suffix = unique("avro-hang")
    items, dlq = f"{ITEMS_TOPIC}-{suffix}", f"dlq-{suffix}"
    await create_topics(broker.bootstrap_servers, {items: 1, dlq: 1})
    config = EmulatorConfig.load(CONFIG / "emulator.yaml", quotas={"enabled": False})
    async with running_emulator(config) as emu, RegistryFront(emu.url) as front:
        schemas = await register_avro_schemas(emu.url)
        front.hang = True
        tp = TopicPartition(items, 0)
        ends = await produce(broker.bootstrap_servers, price_items(schemas, items, 4.0))
        settings = avro_settings(broker.bootstrap_servers, emu.url, suffix, url=front.url, request_timeout_s=0.3)
        service = Service(settings, registry=CollectorRegistry())
        with caplog.at_level(logging.WARNING, logger="ingestor"):
            run = asyncio.create_task(service.run())
            await wait_until(lambda: front.hung >= 3 or run.done(), timeout=30, what="fetches to time out and retry")
            assert not run.done(), run
            pipeline = service.pipeline
            assert pipeline is not None
            await wait_until(lambda: pipeline.held.count == 10, timeout=10, what="the records to wait for the schema")
            timed_out = [r.getMessage() for r in caplog.records if "got no answer within" in r.getMessage()]
            assert timed_out, [r.getMessage() for r in caplog.records]
            assert f"schema registry {front.url}" in timed_out[0]
            assert "0.3 s (schema_registry.request_timeout_s)" in timed_out[0]
            assert "schema registry" in (service.ready() or "")  # not ready while records wait
            assert pipeline.tracker._committed.get(_ours(tp), 0) == 0  # waiting records are never committed
            assert await read_topic(broker.bootstrap_servers, dlq) == []  # ... nor dead-lettered

            front.hang = False  # the registry answers again: the waiting records flow
            await run_until_committed(service, ends, run)
            service.stop_requested.set()
            assert await asyncio.wait_for(run, 30) == EXIT_OK
        stored = await emu.client.records(ITEMS_ARN)
    assert {stored[f"i{i}"]["price"] for i in range(10)} == {4.0}
    assert await read_topic(broker.bootstrap_servers, dlq) == []
