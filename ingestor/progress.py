"""The demo's live progress: one snapshot a second, drawn as a refreshing block on a terminal, plain lines otherwise.

Numbers come from the service's own Prometheus metrics (what an operator would watch) plus what the demo's producer
knows. Rendering is pure text; ``Display`` only decides how to put it on the screen.
"""

from __future__ import annotations

import shutil
import sys
from collections import deque
from dataclasses import dataclass
from typing import TextIO

from prometheus_client.metrics import MetricWrapperBase


def metric_sum(metric: MetricWrapperBase, suffix: str = "_total") -> float:
    """The sum over all label sets of a metric's samples named ``*suffix`` (``_total``, ``_sum``, ``_count``)."""
    return sum(s.value for family in metric.collect() for s in family.samples if s.name.endswith(suffix))


def gauge_value(metric: MetricWrapperBase) -> float:
    return sum(s.value for family in metric.collect() for s in family.samples)


@dataclass(frozen=True)
class Snapshot:
    at: float  # seconds since the demo started
    planned: int
    produced: int  # acknowledged by the broker
    consumed: int
    sent: int  # accepted by Personalize
    superseded: int
    dead_lettered: int
    calls: int  # Personalize calls, every outcome
    call_records: int  # records carried by those calls
    in_flight: int
    buffered: int  # fetched, not yet done
    lag: int  # produced, not yet committed
    phase: str = ""  # e.g. the bulk path's state (demo --catch-up); empty: not shown

    @property
    def records_per_call(self) -> float:
        return self.call_records / self.calls if self.calls else 0.0


def calls_per_second(now: Snapshot, before: Snapshot | None) -> float:
    if before is None or now.at <= before.at:
        return 0.0
    return (now.calls - before.calls) / (now.at - before.at)


def render_block(now: Snapshot, before: Snapshot | None) -> list[str]:
    phase = [f"         {now.phase}"] if now.phase else []
    return [
        f"{now.at:6.1f}s  produced {now.produced:>6}/{now.planned:<6}  consumed {now.consumed:>6}   lag {now.lag:>6}",
        f"         sent     {now.sent:>6}         superseded {now.superseded:>6}"
        f"   dead-lettered {now.dead_lettered:>5}",
        f"         API {calls_per_second(now, before):5.1f} calls/s  {now.records_per_call:4.1f} records/call"
        f"   in-flight {now.in_flight:>3}   buffered {now.buffered:>6}",
        *phase,
    ]


def render_line(now: Snapshot, before: Snapshot | None) -> str:
    return (
        f"[{now.at:6.1f}s] produced {now.produced}/{now.planned} consumed {now.consumed} sent {now.sent} "
        f"superseded {now.superseded} dead-lettered {now.dead_lettered} | "
        f"{calls_per_second(now, before):.1f} calls/s {now.records_per_call:.1f} records/call | "
        f"in-flight {now.in_flight} buffered {now.buffered} lag {now.lag}" + (f" | {now.phase}" if now.phase else "")
    )


class Display:
    """Shows snapshots: redraws a block in place on a terminal, appends plain lines to anything else."""

    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out if out is not None else sys.stdout
        self._tty = self._out.isatty()
        self._drawn = 0  # lines of the block currently on screen
        self._recent: deque[Snapshot] = deque(maxlen=8)  # rates are measured over a second or more

    def show(self, now: Snapshot) -> None:
        before = next((s for s in reversed(self._recent) if s.at <= now.at - 0.9), None)
        before = before or (self._recent[0] if self._recent else None)
        self._recent.append(now)
        if not self._tty:
            self._write(render_line(now, before) + "\n")
            return
        width = max(20, shutil.get_terminal_size().columns - 1)  # never wrap: the redraw counts lines
        lines = [line[:width] for line in render_block(now, before)]
        up = f"\x1b[{self._drawn}A" if self._drawn else ""
        self._write(up + "".join(f"\r{line}\x1b[K\n" for line in lines))
        self._drawn = len(lines)

    def note(self, text: str) -> None:
        """A line about an event (e.g. an import job finished), printed above the block, which is drawn again next."""
        up = f"\x1b[{self._drawn}A\r\x1b[J" if self._tty and self._drawn else ""
        self._write(f"{up}{text}\n")
        self._drawn = 0

    def close(self) -> None:
        """Leave the last block on screen; what is printed next starts below it."""
        self._drawn = 0

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()
