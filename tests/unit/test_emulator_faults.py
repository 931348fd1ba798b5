"""Fault injection: seeded, independent draws for latency, 5xx and throttling."""

from __future__ import annotations

from collections import Counter

from ingestor.emulator.config import FaultConfig
from ingestor.emulator.faults import FaultInjector


def decisions(config: FaultConfig, seed: int, n: int = 2000) -> list[tuple[float, int | None, bool]]:
    injector = FaultInjector(config, seed)
    return [(d.delay_s, d.status, d.throttle) for d in (injector.decide() for _ in range(n))]


def test_no_faults_by_default() -> None:
    assert set(decisions(FaultConfig(), seed=1)) == {(0.0, None, False)}


def test_the_same_seed_gives_the_same_sequence() -> None:
    config = FaultConfig(fail_rate=0.3, throttle_rate=0.2, jitter_ms=10)
    assert decisions(config, seed=7) == decisions(config, seed=7)
    assert decisions(config, seed=7) != decisions(config, seed=8)


def test_reseed_restarts_the_sequence() -> None:
    injector = FaultInjector(FaultConfig(fail_rate=0.5), seed=3)
    first = [injector.decide() for _ in range(50)]
    injector.reseed(3)
    assert [injector.decide() for _ in range(50)] == first


def test_fail_rate_one_always_answers_500_or_503() -> None:
    statuses = Counter(status for _, status, _ in decisions(FaultConfig(fail_rate=1.0), seed=1))
    assert set(statuses) == {500, 503}


def test_fail_statuses_can_be_restricted() -> None:
    statuses = {status for _, status, _ in decisions(FaultConfig(fail_rate=1.0, fail_statuses=(503,)), seed=1)}
    assert statuses == {503}


def test_throttle_rate_is_honoured_and_independent_of_fail_rate() -> None:
    calm = decisions(FaultConfig(throttle_rate=0.2), seed=5, n=5000)
    share = sum(throttle for _, _, throttle in calm) / len(calm)
    assert 0.18 < share < 0.22
    # Adding 5xx faults does not move which calls are throttled among those that are not failed.
    stormy = decisions(FaultConfig(throttle_rate=0.2, fail_rate=0.1), seed=5, n=5000)
    for (_, _, throttle), (_, status, stormy_throttle) in zip(calm, stormy, strict=True):
        if status is None:
            assert throttle == stormy_throttle


def test_latency_is_fixed_plus_uniform_jitter() -> None:
    delays = [delay for delay, _, _ in decisions(FaultConfig(latency_ms=20, jitter_ms=10), seed=2)]
    assert all(0.020 <= d <= 0.030 for d in delays)
    assert max(delays) - min(delays) > 0.009
