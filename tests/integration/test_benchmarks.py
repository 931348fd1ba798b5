"""Smoke tests: the quick mode of each performance benchmark runs to the end and prints sane figures.

Not timed tests — the targets are checked by the full benchmarks (see the README); this only proves the commands work
(embedded broker, local endpoint in a subprocess, the table and the JSON) and the figures are plausible.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]


def run_quick(name: str, tmp_path: Path) -> dict[str, Any]:
    out = tmp_path / f"{name}.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{name}.py"), "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "figure" in done.stdout and "targets:" in done.stdout  # the table was printed
    figures: dict[str, Any] = json.loads(out.read_text())
    assert figures["machine"]
    return figures


def test_bench_cpu_quick(tmp_path: Path) -> None:
    f = run_quick("bench_cpu", tmp_path)
    for run in ("ingestor_sdk", "ingestor_direct", "ceiling", "sequential"):
        assert f[run]["records"] > 0
        assert f[run]["records_per_s"] > 0
        assert 0 < f[run]["cpu_s_per_1k"] < 100
    for http in ("sdk", "direct"):
        assert 1 <= f[f"ingestor_{http}"]["records_per_call"] <= 10
        assert f[f"{http}_vs_ceiling"] > 0 and f[f"{http}_vs_sequential"] > 0


def test_bench_latency_quick(tmp_path: Path) -> None:
    f = run_quick("bench_latency", tmp_path)
    assert f["records"] > 0
    assert 0 < f["p50_s"] <= f["p99_s"] <= f["max_s"] < 60
    assert 0 <= f["throttled_pct"] <= 100
    assert 1 <= f["records_per_call"] <= 10
    assert math.isfinite(f["metric_p99_bucket_s"])  # the service exported ingestor_end_to_end_seconds


def test_bench_groups_quick(tmp_path: Path) -> None:
    f = run_quick("bench_groups", tmp_path)
    for scenario in ("healthy", "one_failing", "one_fatal"):
        r = f[scenario]
        assert r["min_quota_pct"] > 0  # no group starved entirely
        assert 1 <= r["records_per_call"] <= 10
        assert 0 < r["peak_rss_mb"] < 2000
    assert len(f["healthy"]["shares"]) == 2 * f["groups"]
    assert f["one_fatal"]["datasets_held"] == 2  # group 0's two datasets held, the others streamed
