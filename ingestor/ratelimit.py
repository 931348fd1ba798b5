"""Call-rate limits per dataset group and API, with a rate that can change at run time.

Personalize's quotas (PutItems 10/s, PutUsers 10/s, PutEvents 1000/s) hold per dataset group and are shared by every
replica, so each replica gets a share of the configured rate; the share is set by ``set_share`` on every rebalance.
On ``ThrottlingException`` the rate backs off multiplicatively and creeps back additively (AIMD), which finds a quota
that is lower than configured. The pacing itself is aiolimiter's leaky bucket.
"""

from __future__ import annotations

from aiolimiter import AsyncLimiter

_MIN_RATE = 0.1  # calls/s: never stop entirely


class RateLimiter:
    def __init__(
        self,
        rate: float,
        *,
        backoff: float = 0.7,
        recovery_per_call: float = 0.02,
    ) -> None:
        self.configured = rate
        self._share = 1.0
        self._factor = 1.0  # AIMD factor in (0, 1]
        self._backoff = backoff
        self._recovery = recovery_per_call
        self._limiter = self._build()

    @property
    def rate(self) -> float:
        return max(_MIN_RATE, self.configured * self._share * self._factor)

    def _build(self) -> AsyncLimiter:
        # A burst of at most one call: even pacing keeps a shared quota's window from overflowing.
        rate = self.rate
        return AsyncLimiter(1, 1.0 / rate)

    async def acquire(self) -> None:
        await self._limiter.acquire()

    def set_share(self, share: float) -> None:
        """This replica's share of the quota (its fraction of the assigned partitions), in (0, 1]."""
        share = min(1.0, max(0.01, share))
        if share != self._share:
            self._share = share
            self._limiter = self._build()

    def throttled(self) -> None:
        """The service said we are over its quota: slow down now (multiplicative decrease)."""
        self._factor = max(0.05, self._factor * self._backoff)
        self._limiter = self._build()

    def succeeded(self) -> None:
        """A call went through: creep back towards the configured rate (additive increase)."""
        if self._factor < 1.0:
            self._factor = min(1.0, self._factor + self._recovery)
            self._limiter = self._build()
