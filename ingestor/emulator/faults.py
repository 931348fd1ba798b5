"""Fault injection: added latency, 5xx answers and throttling, drawn from one seeded random generator.

Every call draws the same number of random values whatever the configuration, so a given seed yields the same
sequence of decisions for the same sequence of calls, and changing one rate does not shift the others.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ingestor.emulator.config import FaultConfig


@dataclass(frozen=True, slots=True)
class FaultDecision:
    """What to do to one call: wait ``delay_s``, then answer ``status`` (5xx) or throttle, or carry on."""

    delay_s: float = 0.0
    status: int | None = None
    throttle: bool = False


class FaultInjector:
    def __init__(self, config: FaultConfig, seed: int | None = None) -> None:
        self._config = config
        self._rng = random.Random(seed)

    @property
    def config(self) -> FaultConfig:
        return self._config

    def reconfigure(self, config: FaultConfig) -> None:
        """New fault settings; the random sequence carries on."""
        self._config = config

    def reseed(self, seed: int | None) -> None:
        """Restart the random sequence from ``seed`` (None: unpredictable)."""
        self._rng = random.Random(seed)

    def decide(self) -> FaultDecision:
        cfg, rng = self._config, self._rng
        jitter, fail, status_pick, throttle = rng.random(), rng.random(), rng.random(), rng.random()
        delay_s = (cfg.latency_ms + jitter * cfg.jitter_ms) / 1000.0
        if fail < cfg.fail_rate:
            statuses = cfg.fail_statuses
            return FaultDecision(delay_s, status=statuses[int(status_pick * len(statuses))])
        return FaultDecision(delay_s, throttle=throttle < cfg.throttle_rate)
