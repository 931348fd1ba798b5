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
* the windows after a cut are the experiment. Back to the loss share: congestion, the cut stays. Lower but still
  congested: the cut was too small (the window before it may have caught a token bucket still spending its burst), cut
  again. Not lower after two cuts in a row (or still congested after three): the throttles are loss. The rate goes
  back to where it was before the first cut, and the loss share is learnt from the last two windows;
* a clean window raises the rate by 10 % of the full rate, but by only 1 % within ±10 % of the ceiling, so a quota
  lower than configured is probed gently; a learnt loss share follows clean windows (a moving average), back to zero
  when the loss stops.

Simulated with a token bucket (``tests/unit/test_ratelimit.py``) and measured against the local endpoint
(``bench/bench_quota.py``): the configured rate is kept under 20 % random throttling, a quota at 7/s behind 10/s
configured is found (≈ 99 % of it, ≈ 1 % throttled), and a quota equal to the configured rate is never throttled.

Calls are paced evenly (one every ``1 / rate`` seconds, no burst: never two within half an interval), so replicas
sharing a quota never overflow its window together; a wake-up a little late does not shift the schedule, so a busy
event loop does not lower the rate. The pacer is a few lines of our own: the leaky-bucket libraries fix their rate at
construction, and rebuilding one on every rate change would forget when the last call went out and let a burst through.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

_MIN_RATE = 0.1  # calls/s: never stop entirely
_MIN_FACTOR = 0.01  # of the share's rate
_MARGIN = 0.98  # a cut lands this much under the rate the window says the quota allows
_FAST_STEP, _SLOW_STEP = 0.1, 0.01  # increase per clean window, as a fraction of the share's rate
_NEAR_CEILING = 0.1  # the slow zone: ±10 % around the ceiling
_LOSS_SMOOTHING = 0.2  # weight of a clean window in the loss share's moving average
_Z, _Z_EARLY = 3.0, 4.5  # significance of a congested window: at its end, and before it is full
_EARLY_CALLS = 10  # a window may close early from this many outcomes on
_MIN_VARIANCE_SHARE = 0.01  # the binomial test's variance never assumes less than 1 % loss
_TRIAL_DEPTH = 2  # cuts in a row that must fail before throttling is called loss
_MAX_CUTS = 3  # in one experiment
_LOSS_FORGOTTEN = 0.005  # a loss share below this is taken as none


@dataclass(frozen=True, slots=True)
class _Trial:
    """Cuts under test: the window that led to the latest, and the state to go back to if they did not help."""

    factor: float  # before the first cut of the experiment
    ceiling: float
    throttled_share: float = 0.0  # of the window that led to the latest cut
    calls: int = 0  # in that window
    throttles: int = 0
    depth: int = 0  # cuts in a row that did not lower the throttled share
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
        shift the schedule, so the rate holds; one late by half an interval or more (idle) starts it afresh."""
        async with self._lock:
            while (wait := self._slot + 1.0 / self.rate - self._clock()) > 0:
                await self._sleep(wait)
            now, due = self._clock(), self._slot + 1.0 / self.rate
            self._slot = due if now - due < 0.5 / self.rate else now

    def set_share(self, share: float) -> None:
        """This replica's share of the quota (its fraction of the assigned partitions), in (0, 1]."""
        self._share = min(1.0, max(0.01, share))

    def throttled(self) -> None:
        """The service said we are over its quota (``ThrottlingException``)."""
        self._outcome(throttled=True)

    def succeeded(self) -> None:
        """A call went through. (Other failures, 5xx or timeouts, say nothing about the quota: report neither.)"""
        self._outcome(throttled=False)

    # ------------------------------------------------------------------ the window

    def _outcome(self, *, throttled: bool) -> None:
        self._calls += 1
        self._throttles += throttled
        n = self._calls
        if n >= self._window or (n >= _EARLY_CALLS and throttled and self._congested(n, self._throttles, _Z_EARLY)):
            self._judge(n, self._throttles, self._congested(n, self._throttles, _Z))
            self._calls = self._throttles = 0

    def _congested(self, calls: int, throttles: int, z: float) -> bool:
        """More throttles than the loss share explains, beyond chance (binomial: mean + z standard deviations)."""
        p = max(self._loss, _MIN_VARIANCE_SHARE)
        return throttles > calls * self._loss + z * math.sqrt(calls * p * (1 - p))

    def _judge(self, calls: int, throttles: int, congested: bool) -> None:
        share = throttles / calls
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
                return
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
            return
        if self._loss > 0:  # follow the loss share learnt from an experiment, down to zero when it stops
            self._loss += _LOSS_SMOOTHING * (share - self._loss)
            if self._loss < _LOSS_FORGOTTEN:
                self._loss = 0.0
        near = abs(self._factor - self._ceiling) <= _NEAR_CEILING * self._ceiling
        self._factor = min(1.0, self._factor + (_SLOW_STEP if near else _FAST_STEP))
