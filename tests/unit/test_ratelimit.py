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
    limiter = RateLimiter(10.0, backoff=0.5, recovery_per_call=0.1)
    limiter.throttled()
    assert limiter.rate == pytest.approx(5.0)
    limiter.throttled()
    assert limiter.rate == pytest.approx(2.5)
    for _ in range(3):
        limiter.succeeded()
    assert limiter.rate == pytest.approx(5.5)
    for _ in range(100):
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
