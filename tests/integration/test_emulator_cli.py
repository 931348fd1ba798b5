"""``python -m ingestor.emulator`` (the same code as ``ingestor emulator``): serves, logs its URL, stops cleanly."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path

import pytest

from ingestor.emulator import EmulatorClient

pytestmark = pytest.mark.integration

CONFIG = Path(__file__).resolve().parents[2] / "config" / "emulator.yaml"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_serves_until_a_signal_then_exits_0(sig: signal.Signals) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ingestor.emulator", "--config", str(CONFIG), "--port", "0", "--seed", "1",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(30):
            while not (match := re.search(rb"listening on (http://\S+)", line := await proc.stderr.readline())):
                assert line, "the emulator exited before listening"
        async with EmulatorClient(match[1].decode()) as client:
            assert (await client.stats())["total_calls"] == 0
        from ingestor.config import SchemaRegistrySettings
        from ingestor.registry import RegistryClient

        async with RegistryClient(SchemaRegistrySettings(url=match[1].decode())) as registry:  # same URL
            sid = await registry.register("t-value", '"string"')
            assert (await registry.schema(sid)).text == '"string"'
        proc.send_signal(sig)
        async with asyncio.timeout(30):
            _, rest = await proc.communicate()
        assert proc.returncode == 0, rest.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()


async def test_a_bad_config_exits_2_naming_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "emulator.yaml"
    bad.write_text("datasets: []\n", encoding="utf-8")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ingestor.emulator", "--config", str(bad),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    assert proc.returncode == 2 and b"datasets" in err
