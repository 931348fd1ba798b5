"""``ingestor demo`` end to end: a run proves itself, a wrong outcome fails the proof, Ctrl-C stops everything."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingestor import demo
from ingestor.bulk import catchup
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


async def test_catch_up_imports_the_backlog_then_streams_the_live_records(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """--catch-up, small and quick: the estimate, the import jobs, then the live stream (newer versions of the same
    ids) going through PutItems/PutUsers after the jobs are ACTIVE; the proof covers the live records too."""
    monkeypatch.setattr(catchup, "CHECK_INTERVAL_S", 0.5)
    monkeypatch.setattr(demo, "CATCH_UP_AFTER_S", 5.0)  # ≈ 1,900 item and 1,100 user changes: 10-20 s of calls each
    monkeypatch.setattr(demo, "CATCH_UP_JOB_S", 2.0)
    monkeypatch.setattr(demo, "CATCH_UP_LIVE_AFTER_S", 2.0)
    options = Options(records=3000, rate=50, catch_up=True, metrics_port=0)
    with caplog.at_level(logging.INFO, logger="ingestor.bulk.catchup"):
        code = await asyncio.wait_for(run_demo(options), 90)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "ALL CHECKS PASSED" in out and "[FAIL]" not in out
    assert "live stream of newer versions of the same ids at 50 records/s" in out
    # the estimate of the streaming time, in the switch's one sentence
    assert any(re.search(r"backlog ≈ .* records.* ≈ .* at 100 records/s > 5 s: importing offsets", r.getMessage())
               for r in caplog.records), caplog.text  # fmt: skip
    # the proof's own check: every job ACTIVE, then records sent through the API and ending as the newest per id
    proof = re.search(
        r"\[PASS\] (\d+) import job\(s\) ACTIVE, then streaming resumed: (\d+) records sent through PutItems/PutUsers "
        r"after them; (\d+) ids end with one of those \((\d+) newer versions of ids in the backlog\)",
        out,
    )
    assert proof is not None, out
    jobs, records, ids, newer = (int(g) for g in proof.groups())
    assert jobs >= 1 and records > 0 and ids > 0 and newer > 0
    assert re.search(rf"after import +{records} records streamed through PutItems/PutUsers", out)
    # visibly: the progress lines after the last job's ACTIVE line show the API sending more
    lines = out.splitlines()
    active = [i for i, line in enumerate(lines) if "ACTIVE: its rows are in; streaming resumes from the cut" in line]
    assert active, out
    sent = [(i, int(m[1])) for i, line in enumerate(lines) if (m := re.search(r"\] produced .* sent (\d+) ", line))]
    before = [n for i, n in sent if i < active[-1]]
    after = [n for i, n in sent if i > active[-1]]
    assert after and after[-1] > (before[-1] if before else 0), out


def test_help_documents_every_option() -> None:
    result = subprocess.run([*DEMO, "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    for option in (
        "--records", "--rate", "--bad-share", "--seed", "--no-quotas", "--fault-rate", "--throttle-rate",
        "--keep-running", "--metrics-port", "--verbose", "--format", "--catch-up",
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
