"""The per-quota limiter: replica share, even pacing, and telling congestion (a real quota lower than our rate) from
loss (throttles that do not depend on our rate), on a simulated clock against the emulator's token-bucket quota."""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from ingestor.emulator.quotas import TokenBucket
from ingestor.ratelimit import RateLimiter


def test_share_splits_the_configured_quota() -> None:
    limiter = RateLimiter(10.0)
    assert limiter.rate == 10.0
    limiter.set_share(0.5)
    assert limiter.rate == 5.0
    limiter.set_share(0.0)  # a member with no partitions still gets a trickle, never zero
    assert limiter.rate == pytest.approx(0.1)


def test_a_share_change_keeps_what_throttling_taught() -> None:
    limiter = RateLimiter(10.0)
    for _ in range(7):
        limiter.succeeded()
    for _ in range(3):
        limiter.throttled()  # congestion: cut to 6.86/s
    limiter.set_share(0.5)  # a rebalance: half the partitions, half the rate, the same cut
    assert limiter.rate == pytest.approx(0.5 * 6.86)
    limiter.set_share(1.0)
    assert limiter.rate == pytest.approx(6.86)


def test_a_window_size_too_small_to_judge_is_refused() -> None:
    with pytest.raises(ValueError, match="window_calls must be at least 10"):
        RateLimiter(10.0, window_calls=5)


def test_one_throttle_in_a_window_changes_nothing_a_congested_window_one_decrease() -> None:
    limiter = RateLimiter(10.0, window_calls=40)
    limiter.throttled()
    for _ in range(39):
        limiter.succeeded()
    assert limiter.rate == 10.0  # one throttle in 40 calls: not evidence of congestion, no cut
    for _ in range(10):
        limiter.throttled()  # a run of throttles: the window closes early, with one decrease
    assert limiter.rate < 10.0
    cut = limiter.rate
    for _ in range(9):
        limiter.throttled()  # the next window is still filling: no second cut before it is judged
    assert limiter.rate == cut


def test_congestion_cuts_in_proportion_and_a_confirmed_cut_stays() -> None:
    limiter = RateLimiter(10.0, window_calls=40)
    for _ in range(7):
        limiter.succeeded()
    for _ in range(3):
        limiter.throttled()  # 30 % of 10 calls/s throttled: the window closes early, about 7/s gets through
    assert limiter.rate == pytest.approx(10.0 * 0.7 * 0.98)  # cut to just under that
    for _ in range(40):
        limiter.succeeded()  # slowing down helped: congestion, the cut stays; near the ceiling (7/s), +1 % of it
    assert limiter.rate == pytest.approx(6.86 + 0.07)
    assert limiter.loss_share == 0.0


def test_throttles_that_do_not_fall_when_slowing_down_are_loss_and_the_rate_comes_back() -> None:
    limiter = RateLimiter(10.0, window_calls=40)
    for _window in range(3):  # 20 % throttled whatever the rate: two cuts that do not help
        for i in range(40):
            limiter.throttled() if i % 5 == 0 else limiter.succeeded()
    assert limiter.rate == 10.0  # back where it was before the first cut
    assert limiter.loss_share == pytest.approx(0.2)
    for i in range(40 * 5):
        limiter.throttled() if i % 5 == 0 else limiter.succeeded()
    assert limiter.rate == 10.0  # the same loss again: no cut
    for _ in range(40 * 30):
        limiter.succeeded()
    assert limiter.loss_share == 0.0  # the loss stopped: forgotten


# ---------------------------------------------------------------------- simulation against a token-bucket quota


@dataclass
class Run:
    attempted: float  # calls/s, over the measured span
    ok: float
    throttled_share: float


def simulate(
    configured: float,
    *,
    quota: float | None = None,
    loss: float = 0.0,
    server_errors: float = 0.0,
    replicas: int = 1,
    seconds: float = 600.0,
    warm_up: float = 60.0,
    seed: int = 0,
    quota_change: tuple[float, float] | None = None,
    late: int = 0,
) -> list[Run]:
    """``replicas`` limiters, each with its share, pacing evenly on one simulated clock against the emulator's token
    bucket (``quota`` calls/s shared by all) and random throttling (``loss``) and 5xx (``server_errors``). Each call's
    outcome is reported up to ``late`` calls later (calls in flight), from the call's own context as the sender does.
    Returns each replica's figures after ``warm_up``."""
    rng = random.Random(seed)
    limiters = [RateLimiter(configured) for _ in range(replicas)]
    for limiter in limiters:
        limiter.set_share(1 / replicas)
    bucket = TokenBucket.full(quota, 0.0) if quota else None
    next_call = [0.0] * replicas
    calls, ok, throttled = [0] * replicas, [0] * replicas, [0] * replicas
    in_flight: list[tuple[int, Callable[[], None], contextvars.Context]] = []  # (due at call number, report, context)
    number = 0
    while (now := min(next_call)) < seconds:
        i = next_call.index(now)
        limiter = limiters[i]
        next_call[i] = now + 1 / limiter.rate
        context = contextvars.copy_context()
        context.run(limiter._paced)  # what acquire() does for the call's task
        if quota_change and now >= quota_change[0] and bucket and bucket.rate != quota_change[1]:
            bucket = TokenBucket.full(quota_change[1], now)
        error, throttle = rng.random() < server_errors, rng.random() < loss
        measured = now >= warm_up
        calls[i] += measured
        number += 1
        if error:
            continue  # a 5xx says nothing about the quota: reported neither way
        if throttle or (bucket is not None and not bucket.try_take(now)):
            throttled[i] += measured
            in_flight.append((number + rng.randint(0, late), limiter.throttled, context))
        else:
            ok[i] += measured
            in_flight.append((number + rng.randint(0, late), limiter.succeeded, context))
        for call in [c for c in in_flight if c[0] <= number]:
            in_flight.remove(call)
            call[2].run(call[1])
    span = seconds - warm_up
    return [Run(c / span, o / span, t / max(1, c)) for c, o, t in zip(calls, ok, throttled, strict=True)]


@pytest.mark.parametrize("seed", range(5))
def test_random_throttling_does_not_collapse_the_rate(seed: int) -> None:
    # The case: 20 % of calls throttled at random, 5 % 5xx, no quota. Per-throttle AIMD sank to ~0.7/s here.
    (run,) = simulate(10.0, loss=0.2, server_errors=0.05, seed=seed)
    assert run.attempted >= 8.0  # ≥ 80 % of the configured rate (target: 70 %)


def test_random_throttling_does_not_collapse_two_replicas_sharing_the_rate() -> None:
    runs = simulate(10.0, loss=0.2, server_errors=0.05, replicas=2)
    assert all(run.attempted >= 0.7 * 5.0 for run in runs)


@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_a_real_quota_lower_than_configured_is_found(replicas: int) -> None:
    runs = simulate(10.0, quota=7.0, replicas=replicas)
    assert sum(run.ok for run in runs) >= 0.95 * 7.0
    assert all(run.throttled_share <= 0.03 for run in runs)


@pytest.mark.parametrize("seed", range(3))
def test_outcomes_arriving_late_do_not_confuse_the_experiment(seed: int) -> None:
    # Ten calls in flight: after a cut, outcomes of calls paced at the old rate still arrive; they are not counted.
    (quota,) = simulate(10.0, quota=7.0, late=10, seed=seed)
    assert quota.ok >= 0.95 * 7.0 and quota.throttled_share <= 0.03
    (loss,) = simulate(10.0, loss=0.2, server_errors=0.05, late=10, seed=seed)
    assert loss.attempted >= 8.0


def test_an_outcome_of_a_call_paced_before_a_cut_is_not_counted() -> None:
    limiter = RateLimiter(10.0)
    before_cut = contextvars.copy_context()
    before_cut.run(limiter._paced)  # a call goes out at 10/s
    for _ in range(7):
        limiter.succeeded()
    for _ in range(3):
        limiter.throttled()  # congestion: cut to 6.86/s
    cut = limiter.rate
    assert cut == pytest.approx(6.86)
    for _ in range(100):
        before_cut.run(limiter.throttled)  # late answers to calls sent before the cut: no new evidence
    assert limiter.rate == cut
    for _ in range(20):
        limiter.throttled()  # calls paced at the new rate still throttled: that counts
    assert limiter.rate < cut


def test_a_far_lower_quota_is_found_too() -> None:
    (run,) = simulate(100.0, quota=7.0)
    assert run.ok >= 0.95 * 7.0
    assert run.throttled_share <= 0.1  # its first windows were mostly throttled; settled, it stays near 1 %


@pytest.mark.parametrize("replicas", [1, 2])
def test_a_quota_equal_to_the_configured_rate_is_used_fully_and_never_throttled(replicas: int) -> None:
    runs = simulate(10.0, quota=10.0, replicas=replicas)
    assert sum(run.ok for run in runs) == pytest.approx(10.0, rel=0.01)
    assert all(run.throttled_share == 0.0 for run in runs)


def test_a_quota_that_drops_is_followed_and_one_that_comes_back_is_found_again() -> None:
    (dropped,) = simulate(10.0, quota=10.0, quota_change=(60.0, 5.0), warm_up=120.0)
    assert dropped.ok >= 0.95 * 5.0 and dropped.throttled_share <= 0.03
    (back,) = simulate(10.0, quota=5.0, quota_change=(60.0, 10.0), warm_up=300.0, seconds=900.0)
    assert back.ok >= 0.95 * 10.0 and back.throttled_share <= 0.03


# ---------------------------------------------------------------------- pacing


async def test_calls_are_paced_evenly_without_a_burst() -> None:
    limiter = RateLimiter(50.0)
    loop = asyncio.get_running_loop()
    stamps = []
    for _ in range(6):
        await limiter.acquire()
        stamps.append(loop.time())
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert stamps[-1] - stamps[0] >= 5 * 0.02 * 0.999  # 50/s → one call every 20 ms, no burst at start
    assert min(gaps) >= 0.02 / 2  # a late wake-up is made up by a shorter gap, never by two calls at once


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


async def test_rate_changes_keep_the_pacing_no_burst_after_recovery_steps() -> None:
    t = FakeTime()
    limiter = RateLimiter(10.0, window_calls=10, clock=t.clock, sleep=t.sleep)
    stamps = []
    for i in range(60):
        await limiter.acquire()
        stamps.append(t.now)
        if i < 10:
            limiter.throttled() if i % 2 else limiter.succeeded()  # half throttled: the window cuts 10/s to 4.9/s
        else:
            limiter.succeeded()  # recovering, one window at a time: each step changes the rate, never the pacer
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(stamps)]
    assert gaps[:9] == [0.1] * 9
    assert gaps[9] == pytest.approx(1 / 4.9, abs=1e-6)  # the call after the cut waits at the new rate
    assert all(g >= 0.1 for g in gaps)  # never faster than the configured quota, never a burst
    assert gaps[10] > gaps[-1]  # and the rate recovers


class LateTime(FakeTime):
    """A busy event loop: every sleep wakes up ``late`` seconds after it was due."""

    def __init__(self, late: float) -> None:
        super().__init__()
        self.late = late

    async def sleep(self, seconds: float) -> None:
        self.now += seconds + self.late


async def test_late_wake_ups_do_not_lower_the_rate_and_an_idle_gap_gives_no_burst() -> None:
    t = LateTime(late=0.02)  # 20 ms late on every wake-up, at 10/s
    limiter = RateLimiter(10.0, clock=t.clock, sleep=t.sleep)
    stamps = []
    for _ in range(101):
        await limiter.acquire()
        stamps.append(t.now)
    assert stamps[-1] - stamps[0] == pytest.approx(10.0, abs=0.03)  # 100 intervals in 10 s: the rate holds
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert min(gaps) >= 0.05  # a shorter gap makes up for a late one, never two calls within half an interval
    t.now += 5.0  # idle: no calls for a while
    await limiter.acquire()
    before = t.now
    await limiter.acquire()
    assert t.now - before >= 0.1  # a fresh start after idle: no catching up, no burst


async def test_waiters_go_out_in_arrival_order() -> None:
    limiter = RateLimiter(200.0)
    order: list[int] = []

    async def call(i: int) -> None:
        await limiter.acquire()
        order.append(i)

    await asyncio.gather(*(call(i) for i in range(5)))
    assert order == [0, 1, 2, 3, 4]


async def test_a_share_raised_during_a_long_wait_shortens_it() -> None:
    """Demand sharing raises an idle replica's share when its backlog arrives: a caller already waiting out the
    idle pacing interval (here 4 s) must go at the new rate, not at the one in force when it started waiting."""
    t = FakeTime()

    async def sleep(seconds: float) -> None:
        t.now += seconds
        if t.now >= 0.3:
            limiter.set_share(1.0)  # 10 calls/s from 0.3 s on

    limiter = RateLimiter(10.0, clock=t.clock, sleep=sleep)
    limiter.set_share(0.025)  # 0.25 calls/s: one call every 4 s
    await limiter.acquire()
    await limiter.acquire()
    assert t.now == pytest.approx(0.3, abs=0.11)  # not 4 s
