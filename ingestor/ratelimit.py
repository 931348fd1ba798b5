"""Call-rate limits per dataset group and API, with a rate that changes at run time.

Personalize's quotas (PutItems 10/s, PutUsers 10/s, PutEvents 1000/s) hold per dataset group and are shared by every
replica, so each replica gets a share of the configured rate; the share is set by ``set_share`` on every rebalance.

``ThrottlingException`` has two causes that call for opposite answers. *Congestion*: we send faster than the real
quota (lower than configured, or shared with another writer), and the throttled share falls when we slow down.
*Loss*: throttles that do not depend on our rate (the service shedding load, another writer's bursts); slowing down
does not lower their share and only loses throughput. Cutting the rate on every throttle, as plain AIMD does, sinks to
the floor under 20 % random throttling. So the limiter judges windows of calls, not single calls:

* one decision per window of ``window_calls`` outcomes (throttled or succeeded; 5xx and timeouts are neither), or
  earlier when the window is already clearly congested;
* a window is congested when it holds more throttles than the estimated loss share explains, beyond chance (a
  binomial test). The rate is then cut in proportion to the excess share, to a little under ``rate × (1 - excess)``:
  about where a token-bucket quota stops throttling. That rate is remembered as the ceiling;
* the windows after a cut are the experiment; outcomes of calls paced before the cut do not count (``acquire`` marks
  the calling task's context with the rate's epoch). Back to the loss share: congestion, the cut stays. Between the
  two, a window too short to tell: it goes on. Lower but still congested: the cut was too small (the window before it
  may have caught a token bucket still spending its burst), cut again. Not lower after two cuts in a row (or still
  congested after three): the throttles are loss. The rate goes back to where it was before the first cut, and the
  loss share is learnt from the last two windows;
* a clean window raises the rate by 10 %, but by only 1 % of the ceiling within ±10 % of it, so a quota lower than
  configured is probed gently; a learnt loss share follows clean windows (a moving average), back to zero when the
  loss stops.

Simulated against a token bucket (``tests/unit/test_ratelimit.py``) and measured against the local endpoint
(``bench/bench_quota.py``, 10/s configured): under 20 % random throttling + 5 % 5xx the full rate is kept (was ~7 %
of it); a quota at 7/s is found, ~99 % of it used with 0-3 % of calls throttled; a quota equal to the configured rate
is used fully and never throttled.

Calls are paced evenly (one every ``1 / rate`` seconds, no burst: never two within half an interval), so replicas
sharing a quota never overflow its window together; a wake-up a little late does not shift the schedule, so a busy
event loop does not lower the rate. The pacer is a few lines of our own: the leaky-bucket libraries fix their rate at
construction, and rebuilding one on every rate change would forget when the last call went out and let a burst through.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

_MIN_RATE = 0.1  # calls/s: never stop entirely
_RECHECK_S = 0.1  # a wait longer than this is slept in steps, re-reading the rate in force
_MIN_FACTOR = 0.01  # of the share's rate
_MARGIN = 0.98  # a cut lands this much under the rate the window says the quota allows
_FAST_STEP, _SLOW_STEP = 0.1, 0.01  # increase per clean window: of the rate, of the ceiling near it
_NEAR_CEILING = 0.1  # the slow zone: ±10 % around the ceiling
_LOSS_SMOOTHING = 0.2  # weight of a clean window in the loss share's moving average
_Z, _Z_EARLY = 3.0, 4.5  # significance of a congested window: at its end, and before it is full
_EARLY_CALLS, _EARLY_TRIAL_CALLS = 10, 20  # a window may close early from this many outcomes on (after a cut)
_MIN_VARIANCE_SHARE = 0.01  # the binomial test's variance never assumes less than 1 % loss
_TRIAL_DEPTH = 2  # cuts in a row that must fail before throttling is called loss
_MAX_CUTS = 3  # in one experiment
_MAX_SPAN = 3  # windows an experiment's window may run to before it concludes
_LOSS_FORGOTTEN = 0.005  # a loss share below this is taken as none


# Which limiter and rate epoch the current task's call was paced under: set by ``acquire``, read by ``throttled`` and
# ``succeeded`` in the same task (or in a task created after the ``acquire``, which inherits a copy of the context).
_PACED: contextvars.ContextVar[tuple[object, int] | None] = contextvars.ContextVar(
    "ingestor_ratelimit_paced", default=None
)


@dataclass(frozen=True, slots=True)
class _Trial:
    """Cuts under test: the window that led to the latest, and the state to go back to if they did not help."""

    factor: float  # before the first cut of the experiment
    ceiling: float
    throttled_share: float = 0.0  # of the window that led to the latest cut
    calls: int = 0  # in that window
    throttles: int = 0
    depth: int = 0  # cuts since the throttled share last fell (the latest, not judged yet, included)
    cuts: int = 0


class RateLimiter:
    def __init__(
        self,
        rate: float,
        *,
        window_calls: int = 40,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if window_calls < _EARLY_CALLS:
            raise ValueError(f"window_calls must be at least {_EARLY_CALLS}, got {window_calls}")
        self.configured = rate
        self._share = 1.0
        self._factor = 1.0  # of the share's rate, in (0, 1]
        self._ceiling = 1.0  # the factor the last confirmed congestion pointed at
        self._loss = 0.0  # estimated share of throttles that do not depend on our rate
        self._window = window_calls
        self._calls = 0  # outcomes in the current window
        self._throttles = 0
        self._span = 1  # the current window's length, in windows (an experiment may need more calls to conclude)
        self._epoch = 0  # bumped by every cut and every undo: outcomes of calls paced before it are stale
        self._identity = object()
        self._trial: _Trial | None = None
        self._clock = clock
        self._sleep = sleep
        self._slot = float("-inf")  # when the last call was due to go out
        self._lock = asyncio.Lock()  # FIFO: waiters go out in arrival order

    @property
    def rate(self) -> float:
        return max(_MIN_RATE, self.configured * self._share * self._factor)

    @property
    def loss_share(self) -> float:
        """The estimated share of calls throttled whatever our rate (0 when all throttling is congestion)."""
        return self._loss

    async def acquire(self) -> None:
        """Wait for this caller's turn: ``1 / rate`` after the previous call's slot, at the rate in force now (a cut
        decided while waiting lengthens the wait at once). A wake-up a little late (a busy event loop) does not
        shift the schedule, so the rate holds; one late by half an interval or more (idle) starts it afresh. Long
        waits are slept in steps of at most ``_RECHECK_S``, so a raised share (demand sharing) shortens them too."""
        async with self._lock:
            while (wait := self._slot + 1.0 / self.rate - self._clock()) > 0:
                await self._sleep(min(wait, _RECHECK_S))
            now, due = self._clock(), self._slot + 1.0 / self.rate
            self._slot = due if now - due < 0.5 / self.rate else now
            self._paced()

    def _paced(self) -> None:
        """Marks the current task's call as paced at the rate in force now (``acquire`` does this)."""
        _PACED.set((self._identity, self._epoch))

    def set_share(self, share: float) -> None:
        """This replica's share of the quota (its fraction of the assigned partitions), in (0, 1]. Takes effect at
        once; what throttling taught (the cut factor, the loss share, the window under way) carries over, as it is
        relative to the share's rate, so the share may be changed as often as needed."""
        self._share = min(1.0, max(0.01, share))

    def throttled(self) -> None:
        """The service said we are over its quota (``ThrottlingException``). Report it from the task that acquired
        the call's turn (or one it created afterwards): an outcome of a call paced before the latest cut is stale."""
        self._outcome(throttled=True)

    def succeeded(self) -> None:
        """A call went through. (Other failures, 5xx or timeouts, say nothing about the quota: report neither.)"""
        self._outcome(throttled=False)

    # ------------------------------------------------------------------ the window

    def _outcome(self, *, throttled: bool) -> None:
        paced = _PACED.get()
        if paced is not None and paced[0] is self._identity and paced[1] < self._epoch:
            return  # sent before the latest cut: it tells about a rate already judged
        self._calls += 1
        self._throttles += throttled
        n = self._calls
        least = _EARLY_CALLS if self._trial is None else _EARLY_TRIAL_CALLS
        if n >= self._window * self._span or (
            n >= least and throttled and self._congested(n, self._throttles, _Z_EARLY)
        ):
            if self._judge(n, self._throttles, self._congested(n, self._throttles, _Z)):
                self._calls = self._throttles = 0
                self._span = 1
            else:
                self._span += 1  # not conclusive yet: the window goes on

    def _congested(self, calls: int, throttles: int, z: float) -> bool:
        """More throttles than the loss share explains, beyond chance (binomial: mean + z standard deviations)."""
        p = max(self._loss, _MIN_VARIANCE_SHARE)
        return throttles > calls * self._loss + z * math.sqrt(calls * p * (1 - p))

    def _judge(self, calls: int, throttles: int, congested: bool) -> bool:
        """Acts on a window; False when the window should go on (an experiment not conclusive yet)."""
        share = throttles / calls
        if self._trial is not None and not congested and throttles > calls * self._loss and self._span < _MAX_SPAN:
            # Fewer throttles than congestion, more than the loss share: a few throttles at a low loss share (say
            # 5 %) look like this in one window, as do the last throttles of a quota just cut below. More calls tell.
            return False
        trial, self._trial = self._trial, None
        if trial is not None and congested:
            if share <= (trial.throttled_share + self._loss) / 2 and trial.cuts < _MAX_CUTS:
                # Lower, but not down to the loss share: the cut was too small (the window before it may have caught
                # a token bucket still spending its burst). Congestion after all: cut again.
                trial = replace(trial, depth=0)
            elif trial.depth >= _TRIAL_DEPTH or trial.cuts >= _MAX_CUTS:
                # Slowing down twice did not lower the throttled share: it is loss. Go back, and learn its level.
                self._loss = (trial.throttles + throttles) / (trial.calls + calls)
                self._factor, self._ceiling = trial.factor, trial.ceiling
                self._epoch += 1
                return True
        # (A trial window that is not congested is back to the loss share: congestion confirmed, the cut stays.)
        if congested:
            excess = max(0.0, share - self._loss)
            trial = trial or _Trial(self._factor, self._ceiling)
            self._trial = replace(
                trial,
                throttled_share=share,
                calls=calls,
                throttles=throttles,
                depth=trial.depth + 1,
                cuts=trial.cuts + 1,
            )
            self._ceiling = self._factor * (1 - excess)
            self._factor = max(_MIN_FACTOR, self._ceiling * _MARGIN)
            self._epoch += 1
            return True
        if self._loss > 0:  # follow the loss share learnt from an experiment, down to zero when it stops
            self._loss += _LOSS_SMOOTHING * (share - self._loss)
            if self._loss < _LOSS_FORGOTTEN:
                self._loss = 0.0
        near = abs(self._factor - self._ceiling) <= _NEAR_CEILING * self._ceiling
        step = _SLOW_STEP * self._ceiling if near else _FAST_STEP * self._factor
        self._factor = min(1.0, self._factor + step)
        return True
