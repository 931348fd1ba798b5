"""Shared pieces of the benchmarks: the local endpoint in a subprocess, ingestor settings, waiting, the table."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingestor.broker import free_port, wait_for_port
from ingestor.emulator.client import EmulatorClient
from ingestor.model import TopicPartition
from ingestor.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config"


class Endpoint:
    """The local endpoint running in a subprocess: its URL and the CPU seconds it has used so far."""

    def __init__(self, url: str, pid: int) -> None:
        self.url, self.pid = url, pid

    def cpu_s(self) -> float:
        """user + system CPU seconds of the endpoint's process (Linux /proc; 0 elsewhere)."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def emulator_process(*args: str, config: Path = CONFIG / "emulator.yaml") -> Iterator[Endpoint]:
    """``ingestor emulator`` in its own process, so its CPU is not counted as the client's."""
    port = free_port()
    cmd = [sys.executable, "-m", "ingestor.emulator", "--config", str(config), "--port", str(port), *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", port, 30)
        yield Endpoint(f"http://127.0.0.1:{port}", proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def emulator_stats(url: str) -> dict[str, Any]:
    async with EmulatorClient(url) as client:
        return await client.stats()


async def emulator_state(url: str) -> dict[str, Any]:
    async with EmulatorClient(url, timeout_s=60) as client:
        return await client.state()


async def wait_for(predicate: Callable[[], bool | Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.02)


def all_committed(pipeline: Pipeline, ends: dict[TopicPartition, int]) -> bool:
    """Every partition committed past its last produced offset."""
    return all((pipeline.tracker.last_committed(tp) or 0) > last for tp, last in ends.items())


def rss_mb() -> float:
    """Resident memory now (Linux /proc), else the peak."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def report(title: str, rows: list[tuple[str, str, str]], figures: dict[str, Any], json_path: str | None) -> None:
    """One table (metric, value, target) and the same figures as JSON on the last line (or in a file)."""
    print(f"\n{title} — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} — {machine()}")
    width = max(len(r[0]) for r in rows) + 2
    print(f"{'figure':<{width}}{'value':>14}  target")
    for name, value, target in rows:
        print(f"{name:<{width}}{value:>14}  {target}")
    payload = json.dumps({"benchmark": title, "machine": machine(), "utc": time.time(), **figures}, sort_keys=True)
    if json_path:
        Path(json_path).write_text(payload + "\n")
    print(payload)
