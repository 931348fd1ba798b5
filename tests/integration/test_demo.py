"""``ingestor demo`` end to end: a run proves itself, a wrong outcome fails the proof, Ctrl-C stops everything."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingestor import demo
from ingestor.demo import Options, run_demo
from ingestor.sample import ITEMS_TOPIC, Event, StreamSpec

pytestmark = pytest.mark.integration

DEMO = [sys.executable, "-m", "ingestor.cli", "demo"]


async def test_a_small_run_with_quotas_proves_itself(capsys: pytest.CaptureFixture[str]) -> None:
    code = await asyncio.wait_for(run_demo(Options(records=600, rate=0, metrics_port=0)), 60)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "ALL CHECKS PASSED" in out
    assert out.count("[PASS]") == 6 and "[FAIL]" not in out
    assert "[PASS] interactions: the endpoint received each of the" in out
    assert re.search(r"dead-letter +\d+ records by stage: ", out)
    assert "max 10" in out


async def test_chaos_is_retried_and_the_proof_still_holds(capsys: pytest.CaptureFixture[str]) -> None:
    options = Options(records=600, rate=0, quotas=False, fault_rate=0.2, throttle_rate=0.2, seed=3, metrics_port=0)
    code = await asyncio.wait_for(run_demo(options), 60)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "server_error" in out and "throttled" in out  # the endpoint's call outcomes, in the summary
    assert "ALL CHECKS PASSED" in out


async def test_an_avro_run_through_the_local_schema_registry_proves_itself(capsys: pytest.CaptureFixture[str]) -> None:
    options = Options(records=600, rate=0, quotas=False, bad_share=0.05, metrics_port=0, format="avro")
    code = await asyncio.wait_for(run_demo(options), 60)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Avro values (Confluent wire format)" in out and "Schema Registry at http://" in out
    assert "ALL CHECKS PASSED" in out
    assert re.search(r"dead-letter +\d+ records by stage: decode \d+, validate \d+", out), out


async def test_an_outcome_other_than_expected_fails_the_proof(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The expectation claims another price for the last valid item event: the endpoint check must catch it."""
    real = demo.generate
    lied_about: list[str] = []

    def lying_generate(count: int, spec: StreamSpec | None = None) -> Iterator[Event]:
        events = list(real(count, spec))
        i = max(i for i, e in enumerate(events) if e.topic == ITEMS_TOPIC and e.expected is not None)
        assert events[i].expected is not None
        events[i] = dataclasses.replace(events[i], expected={**events[i].expected, "price": -1.0})
        lied_about.append(events[i].record_id)
        return iter(events)

    monkeypatch.setattr(demo, "generate", lying_generate)
    code = await asyncio.wait_for(run_demo(Options(records=300, rate=0, quotas=False, metrics_port=0)), 60)
    out = capsys.readouterr().out
    assert code == 1, out
    assert "SOME CHECKS FAILED" in out
    assert re.search(rf"\[FAIL\] items: .*\n +{lied_about[0]}: has ", out)
    assert out.count("[PASS]") == 5


def test_help_documents_every_option() -> None:
    result = subprocess.run([*DEMO, "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    for option in (
        "--records", "--rate", "--bad-share", "--seed", "--no-quotas", "--fault-rate", "--throttle-rate",
        "--keep-running", "--metrics-port", "--verbose", "--format",
    ):  # fmt: skip
        assert option in result.stdout
    assert "Exit status" in result.stdout


def _processes_listening_on(url: str) -> list[int]:
    """Pids whose command line mentions ``url`` (the broker's --listener-url)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if url.encode() in cmdline.split(b"\0"):
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc to find the broker process")
async def test_ctrl_c_mid_run_stops_everything_and_exits_130() -> None:
    # Its own session, signalled as a group: what a terminal does on Ctrl-C (the broker gets SIGINT too).
    proc = await asyncio.create_subprocess_exec(
        *DEMO, "--records", "100000", "--rate", "2000", "--metrics-port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        broker = None
        async with asyncio.timeout(45):
            while True:
                line = (await proc.stdout.readline()).decode()
                assert line, "the demo ended before it was interrupted"
                if match := re.search(r"broker (\S+)", line):
                    broker = f"tcp://{match[1]}"
                if (consumed := re.search(r" consumed (\d+)", line)) and int(consumed[1]) > 0:
                    break  # mid-run: the ingestor is consuming, the producer still producing
        assert broker is not None and _processes_listening_on(broker)
        os.killpg(proc.pid, signal.SIGINT)
        async with asyncio.timeout(30):
            rest, err = await proc.communicate()
        assert proc.returncode == 130, err.decode()
        assert b"Traceback" not in err, err.decode()
        assert b"interrupted" in rest
        assert _processes_listening_on(broker) == []
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.communicate()
