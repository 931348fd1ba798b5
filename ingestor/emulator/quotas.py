"""Request quotas: a token bucket per (dataset group, API), like Personalize's per-second transaction limits.

Each bucket holds at most one second of quota (the burst) and refills continuously at the quota rate. So a client
that never sends more than ``rate`` calls in any one second after an idle second — in particular one pacing
evenly at exactly ``rate`` per second — is never throttled, and a sustained ``rate + 1`` per second is throttled
as soon as the burst is spent. The clock is injectable so tests can drive time by hand.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ingestor.emulator.config import Api, QuotaConfig

Clock = Callable[[], float]

# Float time arithmetic must not throttle a client pacing at exactly the rate.
_EPSILON = 1e-9


@dataclass
class TokenBucket:
    """``rate`` tokens per second, at most ``rate`` stored; one token per call."""

    rate: float
    tokens: float
    updated_at: float

    @classmethod
    def full(cls, rate: float, now: float) -> TokenBucket:
        return cls(rate, rate, now)

    def try_take(self, now: float) -> bool:
        elapsed = max(0.0, now - self.updated_at)
        self.tokens = min(self.rate, self.tokens + elapsed * self.rate)
        self.updated_at = now
        if self.tokens + _EPSILON >= 1.0:
            self.tokens = max(0.0, self.tokens - 1.0)
            return True
        return False


class Quotas:
    """All buckets of one emulator. ``allow`` answers whether a call may proceed and spends its token."""

    def __init__(self, config: QuotaConfig, clock: Clock = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self._buckets: dict[tuple[str, Api], TokenBucket] = {}

    @property
    def config(self) -> QuotaConfig:
        return self._config

    def reconfigure(self, config: QuotaConfig) -> None:
        """New limits take effect at once, with full buckets."""
        self._config = config
        self._buckets.clear()

    def reset(self) -> None:
        self._buckets.clear()

    def allow(self, group: str, api: Api) -> bool:
        rate = self._config.rate_for(api, group)
        if rate is None:
            return True
        now = self._clock()
        bucket = self._buckets.get((group, api))
        if bucket is None:
            bucket = self._buckets[(group, api)] = TokenBucket.full(rate, now)
        return bucket.try_take(now)
