"""Call-rate limits per dataset group and API, with a rate that changes at run time.

Personalize's quotas (PutItems 10/s, PutUsers 10/s, PutEvents 1000/s) hold per dataset group and are shared by every
replica, so each replica gets a share of the configured rate; the share is set by ``set_share`` on every rebalance.
On ``ThrottlingException`` the rate backs off multiplicatively and creeps back additively (AIMD), which finds a quota
that is lower than configured; near the rate that was last throttled it creeps back ten times slower.

Calls are paced evenly (one every ``1 / rate`` seconds, no burst), so replicas sharing a quota never overflow its
window together. The pacer is a few lines of our own: the leaky-bucket libraries fix their rate at construction, and
rebuilding one on every AIMD step would forget when the last call went out and let a burst through.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

_MIN_RATE = 0.1  # calls/s: never stop entirely


class RateLimiter:
    def __init__(
        self,
        rate: float,
        *,
        backoff: float = 0.7,
        recovery_per_call: float = 0.02,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.configured = rate
        self._share = 1.0
        self._factor = 1.0  # AIMD factor in (0, 1]
        self._ceiling = 1.0  # the factor at the last throttle: recovery slows down as it gets near
        self._backoff = backoff
        self._recovery = recovery_per_call
        self._clock = clock
        self._sleep = sleep
        self._last = float("-inf")  # when the last call went out
        self._lock = asyncio.Lock()  # FIFO: waiters go out in arrival order

    @property
    def rate(self) -> float:
        return max(_MIN_RATE, self.configured * self._share * self._factor)

    async def acquire(self) -> None:
        """Wait for this caller's turn: ``1 / rate`` after the previous call, at the rate in force now (a throttle
        signalled while waiting lengthens the wait at once)."""
        async with self._lock:
            while (wait := self._last + 1.0 / self.rate - self._clock()) > 0:
                await self._sleep(wait)
            self._last = self._clock()

    def set_share(self, share: float) -> None:
        """This replica's share of the quota (its fraction of the assigned partitions), in (0, 1]."""
        self._share = min(1.0, max(0.01, share))

    def throttled(self) -> None:
        """The service said we are over its quota: slow down now (multiplicative decrease)."""
        self._ceiling = self._factor
        self._factor = max(0.05, self._factor * self._backoff)

    def succeeded(self) -> None:
        """A call went through: creep back towards the configured rate (additive increase), fast up to 90 % of the
        rate that was last throttled, then ten times slower, so a quota lower than configured is probed gently."""
        step = self._recovery if self._factor < 0.9 * self._ceiling else self._recovery / 10
        self._factor = min(1.0, self._factor + step)
