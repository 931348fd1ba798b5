"""The per-quota limiter: replica share, AIMD on throttling, even pacing."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from ingestor.ratelimit import RateLimiter


def test_share_splits_the_configured_quota() -> None:
    limiter = RateLimiter(10.0)
    assert limiter.rate == 10.0
    limiter.set_share(0.5)
    assert limiter.rate == 5.0
    limiter.set_share(0.0)  # a member with no partitions still gets a trickle, never zero
    assert limiter.rate == pytest.approx(0.1)


def test_throttling_backs_off_multiplicatively_and_recovers_additively() -> None:
    limiter = RateLimiter(10.0, backoff=0.5, recovery_per_call=0.15)
    limiter.throttled()
    assert limiter.rate == pytest.approx(5.0)  # throttled at factor 1.0: the ceiling
    limiter.succeeded()
    limiter.succeeded()
    assert limiter.rate == pytest.approx(8.0)  # fast steps below 90 % of the ceiling
    limiter.succeeded()
    assert limiter.rate == pytest.approx(9.5)
    limiter.succeeded()
    assert limiter.rate == pytest.approx(9.65)  # near the ceiling: ten times slower
    limiter.throttled()  # throttled again at 9.65/s: that is the new ceiling
    assert limiter.rate == pytest.approx(4.825)
    for _ in range(200):
        limiter.succeeded()
    assert limiter.rate == pytest.approx(10.0)  # never above the configured quota


async def test_calls_are_paced_evenly_without_a_burst() -> None:
    limiter = RateLimiter(50.0)
    loop = asyncio.get_running_loop()
    stamps = []
    for _ in range(6):
        await limiter.acquire()
        stamps.append(loop.time())
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert min(gaps) >= 0.02 * 0.9  # 50/s → one call every 20 ms, no burst at start


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


async def test_rate_changes_keep_the_pacing_no_burst_after_recovery_steps() -> None:
    t = FakeTime()
    limiter = RateLimiter(10.0, backoff=0.5, recovery_per_call=0.1, clock=t.clock, sleep=t.sleep)
    stamps = []
    for i in range(8):
        await limiter.acquire()
        stamps.append(t.now)
        if i == 2:
            limiter.throttled()  # 10/s → 5/s
        elif i > 2:
            limiter.succeeded()  # creeping back: each step changes the rate, never resets the pacer
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(stamps)]
    assert gaps[:2] == [0.1, 0.1]
    assert gaps[2] == 0.2  # the call after the throttle waits at 5/s
    assert all(g >= 0.1 for g in gaps)  # never faster than the configured quota, never a burst
    assert gaps[3] > gaps[-1]  # and the rate recovers


async def test_waiters_go_out_in_arrival_order() -> None:
    limiter = RateLimiter(200.0)
    order: list[int] = []

    async def call(i: int) -> None:
        await limiter.acquire()
        order.append(i)

    await asyncio.gather(*(call(i) for i in range(5)))
    assert order == [0, 1, 2, 3, 4]
