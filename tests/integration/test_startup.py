"""Start-up without a reachable broker: the service waits (not ready) instead of crash-looping, then runs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from ingestor.app import EXIT_OK, Service
from ingestor.broker import EmbeddedBroker, free_port
from ingestor.config import Settings
from tests.conftest import wait_until

pytestmark = pytest.mark.integration
CONFIG = Path(__file__).parents[2] / "config"


def settings(bootstrap: str) -> Settings:
    return Settings.load(
        CONFIG / "ingestor.yaml",
        kafka={"bootstrap_servers": bootstrap, "session_timeout_ms": 6000, "heartbeat_interval_ms": 500},
        personalize={"endpoint_url": "http://127.0.0.1:9", "aws_access_key_id": "x", "aws_secret_access_key": "x"},
        metrics={"port": 0},
    )


async def probe(service: Service, path: str) -> int:
    assert service.health is not None
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{service.health.port}{path}") as resp:
        return resp.status


async def test_waits_for_the_broker_then_becomes_ready() -> None:
    port = free_port()
    service = Service(settings(f"127.0.0.1:{port}"), registry=CollectorRegistry())
    run = asyncio.create_task(service.run())
    await wait_until(lambda: service.health is not None and service.health.port != 0, timeout=10, what="health server")
    assert await probe(service, "/readyz") == 503
    assert await probe(service, "/healthz") == 200
    assert not run.done()
    broker = EmbeddedBroker(port=port).start()
    try:
        await wait_until(lambda: service.ready() is None, timeout=60, what="ready once the broker is up")
        assert await probe(service, "/readyz") == 200
        service.stop_requested.set()
        assert await asyncio.wait_for(run, 30) == EXIT_OK
    finally:
        broker.stop()


async def test_stop_while_waiting_for_the_broker_exits_promptly() -> None:
    service = Service(settings(f"127.0.0.1:{free_port()}"), registry=CollectorRegistry())
    run = asyncio.create_task(service.run())
    await wait_until(lambda: service.health is not None and service.health.port != 0, timeout=10, what="health server")
    service.stop_requested.set()
    assert await asyncio.wait_for(run, 10) == EXIT_OK
