"""The dataset's own schema: a route without a schema file validates against the schema fetched at start; a schema
file that drifted from the dataset's is reported at start, and a burst of API rejections re-fetches the schema."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from ingestor import schema_source
from ingestor.app import EXIT_CONFIG, EXIT_OK, Service, check_schemas, describe
from ingestor.config import Settings
from ingestor.errors import ConfigError
from ingestor.kafka_tools import create_topics, produce, read_topic
from tests.conftest import wait_until
from tests.integration.test_service import CONFIG, ITEMS_ARN

pytestmark = pytest.mark.integration


def settings_for(
    bootstrap: str, endpoint: str, suffix: str, schema: str | None, route: dict[str, object] | None = None
) -> Settings:
    route = route or {"topic": f"items-{suffix}", "kind": "items", "dataset_arn": ITEMS_ARN}
    if schema is not None:
        route["schema"] = schema
    return Settings(
        kafka={
            "bootstrap_servers": bootstrap,
            "group_id": f"ingestor-{suffix}",
            "dead_letter_topic": f"dlq-{suffix}",
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 500,
            "commit_interval_s": 0.2,
        },
        personalize={"endpoint_url": endpoint, "aws_access_key_id": "t", "aws_secret_access_key": "t"},
        routes=[route],
        metrics={"port": 0},
    )


def item(i: int, **extra: object) -> bytes:
    return json.dumps({"ITEM_ID": f"i{i}", "PRICE": 1.5, "CREATION_TIMESTAMP": 1_700_000_000, **extra}).encode()


async def test_a_route_without_a_schema_file_uses_the_datasets_schema(broker, emulator, unique) -> None:
    suffix = unique("live")
    topic, dlq = f"items-{suffix}", f"dlq-{suffix}"
    await create_topics(broker.bootstrap_servers, {topic: 2, dlq: 1})
    settings = settings_for(broker.bootstrap_servers, emulator.url, suffix, schema=None)
    assert settings.routes[0].schema_path is None

    resolved = await check_schemas(settings)  # what `ingestor run --check-config` prints
    text = describe(settings, resolved)
    assert "schema: the dataset's schema arn:aws:personalize:us-east-1:123456789012:schema/shop-ITEMS" in text
    assert "CREATION_TIMESTAMP" in text

    # a drifted record (a field the dataset does not have) is dead-lettered at stage validate: no API call
    records = [(topic, f"i{i}".encode(), item(i)) for i in range(20)]
    records += [(topic, b"i100", item(100, COLOR="red"))]
    await produce(broker.bootstrap_servers, records)
    service = Service(settings, registry=CollectorRegistry())
    run = asyncio.create_task(service.run())
    try:
        await wait_until(lambda: len(emulator.service.datasets[ITEMS_ARN].records) == 20 or run.done(), timeout=60)
        dead = await wait_until(
            lambda: read_topic(broker.bootstrap_servers, dlq, idle_s=0.5), timeout=30, what="the DLQ record"
        )
        assert [r.key for r in dead] == [b"i100"]
        headers = dict(dead[0].headers)
        assert headers["ingestor.error.stage"] == b"validate"
        assert b"COLOR" in headers["ingestor.error.reason"]
        stats = await emulator.client.stats()
        assert stats["calls"]["PutItems"]["invalid_input"] == 0
    finally:
        service.stop_requested.set()
        assert await asyncio.wait_for(run, 30) == EXIT_OK


async def test_no_schema_file_and_no_control_plane_fails_start_up_naming_the_route(unique, caplog) -> None:
    settings = settings_for("127.0.0.1:9", "http://127.0.0.1:9", unique("none"), schema=None)
    with pytest.raises(ConfigError, match=r"routes\[0\]\.schema is not set"):
        await check_schemas(settings)
    service = Service(settings, registry=CollectorRegistry())
    with caplog.at_level(logging.ERROR):
        assert await asyncio.wait_for(service.run(), 120) == EXIT_CONFIG
    messages = [r.getMessage() for r in caplog.records]
    assert any("routes[0].schema" in m and "control_endpoint_url" in m for m in messages)


@pytest.mark.parametrize("order", ["as_it_comes", "comparison_first"])
async def test_a_drifted_schema_file_is_reported_at_start_and_on_a_burst_of_rejections(
    broker, emulator, unique, tmp_path: Path, caplog, monkeypatch, order: str
) -> None:
    monkeypatch.setattr(schema_source, "BURST", 3)
    if order == "comparison_first":  # the comparison at start ends before the pipeline (and its schema watch) exists
        serve = Service._serve_with_control

        async def serve_after_comparison(self: Service, *args: object) -> int:
            await wait_until(lambda: self._compared is not None, timeout=30, what="the comparison at start")
            return await serve(self, *args)  # type: ignore[arg-type]

        monkeypatch.setattr(Service, "_serve_with_control", serve_after_comparison)
    avro = json.loads((CONFIG / "schemas/items.avsc").read_text())
    avro["fields"].append({"name": "COLOR", "type": ["null", "string"], "categorical": True})
    for f in avro["fields"]:
        if f["name"] == "NUMBER_OF_RATINGS":
            f["type"] = ["null", "long"]
    stale = tmp_path / "items-stale.avsc"
    stale.write_text(json.dumps(avro))
    suffix = unique("drift")
    topic, dlq = f"items-{suffix}", f"dlq-{suffix}"
    await create_topics(broker.bootstrap_servers, {topic: 1, dlq: 1})
    settings = settings_for(broker.bootstrap_servers, emulator.url, suffix, schema=str(stale))

    text = describe(settings, await check_schemas(settings))
    assert "DIFFERS from the dataset's" in text
    assert 'field COLOR (["null", "string"], categorical) is in the file but not in the dataset' in text
    assert 'field NUMBER_OF_RATINGS is ["null", "long"] in the file but ["null", "int"] in the dataset' in text

    drifted = [(topic, f"i{i}".encode(), item(i, COLOR="red")) for i in range(5)]
    await produce(broker.bootstrap_servers, [(topic, f"i{i}".encode(), item(i)) for i in range(5, 10)] + drifted)
    service = Service(settings, registry=CollectorRegistry())
    with caplog.at_level(logging.INFO):
        run = asyncio.create_task(service.run())
        try:

            def logged(*words: str) -> bool:
                return any(all(w in r.getMessage() for w in words) for r in caplog.records)

            await wait_until(lambda: logged("differs from the schema of", "COLOR"), timeout=30, what="drift report")
            await wait_until(lambda: logged("burst of InvalidInputException", "unchanged since start"), timeout=60)
            assert logged("burst of InvalidInputException", "COLOR")  # says what the file has that the dataset lacks
            dead = await wait_until(
                lambda: read_topic(broker.bootstrap_servers, dlq, idle_s=0.5), timeout=30, what="DLQ records"
            )
            assert sorted(r.key for r in dead) == [f"i{i}".encode() for i in range(5)]
            assert {dict(r.headers)["ingestor.error.stage"] for r in dead} == {b"api"}  # the stale file let them pass
        finally:
            service.stop_requested.set()
            assert await asyncio.wait_for(run, 30) == EXIT_OK


INTERACTIONS_ARN = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/INTERACTIONS"


async def test_an_interactions_route_without_a_schema_file_uses_the_datasets_schema(broker, emulator, unique) -> None:
    suffix = unique("live-ev")
    topic, dlq = f"events-{suffix}", f"dlq-{suffix}"
    await create_topics(broker.bootstrap_servers, {topic: 2, dlq: 1})
    route = {"topic": topic, "kind": "interactions", "dataset_arn": INTERACTIONS_ARN, "tracking_id": "shop-tracking-id"}
    settings = settings_for(broker.bootstrap_servers, emulator.url, suffix, schema=None, route=route)
    assert settings.routes[0].schema_path is None

    text = describe(settings, await check_schemas(settings))  # what `ingestor run --check-config` prints
    assert "schema: the dataset's schema arn:aws:personalize:us-east-1:123456789012:schema/shop-INTERACTIONS" in text
    assert "properties: DEVICE" in text  # the fetched schema's property field, compiled into the event builder

    def event(i: int, **extra: object) -> bytes:
        row = {"USER_ID": f"u{i}", "ITEM_ID": f"i{i}", "EVENT_TYPE": "click", "TIMESTAMP": 1_700_000_000 + i}
        return json.dumps({**row, **extra}).encode()

    valid = [(topic, f"u{i}".encode(), event(i, DEVICE="ios")) for i in range(6)]
    no_timestamp = json.dumps({"USER_ID": "u90", "ITEM_ID": "i1", "EVENT_TYPE": "click"}).encode()
    wrong_type = event(91, EVENT_VALUE="high")  # EVENT_VALUE is ["null", "float"] in the dataset's schema
    unknown_field = event(92, COLOR="red")  # not in the dataset's schema
    bad = [(topic, b"u90", no_timestamp), (topic, b"u91", wrong_type), (topic, b"u92", unknown_field)]
    await produce(broker.bootstrap_servers, valid + bad)
    service = Service(settings, registry=CollectorRegistry())
    run = asyncio.create_task(service.run())
    try:

        async def stored() -> list[dict[str, Any]] | bool:
            events = [e for e in await emulator.client.events(INTERACTIONS_ARN) if str(e["eventId"]).startswith(topic)]
            return events if len(events) == len(valid) or run.done() else False

        events = await wait_until(stored, timeout=60, what="the valid events in the endpoint's PutEvents store")
        assert not run.done()
        assert sorted(str(e["userId"]) for e in events) == [f"u{i}" for i in range(6)]
        assert all(e.get("properties") == {"device": "ios"} for e in events)

        async def dead_lettered() -> list[Any] | None:
            records = await read_topic(broker.bootstrap_servers, dlq, idle_s=0.5)
            return records if len(records) >= len(bad) else None

        dead = await wait_until(dead_lettered, timeout=30, what="the three DLQ records")
        assert sorted(r.key for r in dead) == [b"u90", b"u91", b"u92"]
        reasons = {r.key: dict(r.headers)["ingestor.error.reason"] for r in dead}
        assert {dict(r.headers)["ingestor.error.stage"] for r in dead} == {b"validate"}
        assert (
            b"TIMESTAMP" in reasons[b"u90"] and b"eventValue (float)" in reasons[b"u91"] and b"COLOR" in reasons[b"u92"]
        )
        stats = await emulator.client.stats()
        assert stats["calls"]["PutEvents"]["invalid_input"] == 0  # the bad events cost no call
    finally:
        service.stop_requested.set()
        assert await asyncio.wait_for(run, 30) == EXIT_OK
