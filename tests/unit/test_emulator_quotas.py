"""Quotas: a token bucket per (dataset group, API) holding one second of quota, driven by a fake clock."""

from __future__ import annotations

import pytest

from ingestor.emulator.config import Api, QuotaConfig
from ingestor.emulator.quotas import Quotas


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_pacing_exactly_at_the_rate_is_never_throttled(clock: FakeClock) -> None:
    quotas = Quotas(QuotaConfig(put_items=10), clock)
    for i in range(1000):  # 100 seconds at exactly 10 calls/s
        clock.now = i * 0.1
        assert quotas.allow("shop", Api.PUT_ITEMS), f"call {i} at t={clock.now}"


def test_a_burst_of_one_second_of_quota_passes_and_the_next_call_is_throttled(clock: FakeClock) -> None:
    quotas = Quotas(QuotaConfig(put_items=10), clock)
    assert all(quotas.allow("shop", Api.PUT_ITEMS) for _ in range(10))
    assert not quotas.allow("shop", Api.PUT_ITEMS)
    clock.now = 0.1  # one call's worth of quota comes back
    assert quotas.allow("shop", Api.PUT_ITEMS)
    assert not quotas.allow("shop", Api.PUT_ITEMS)


def test_sustained_rate_above_the_quota_is_throttled(clock: FakeClock) -> None:
    quotas = Quotas(QuotaConfig(put_items=10), clock)
    results = []
    for i in range(220):  # 20 seconds at 11 calls/s
        clock.now = i / 11
        results.append(quotas.allow("shop", Api.PUT_ITEMS))
    assert not all(results)
    accepted = sum(results)
    assert accepted <= 10 + 10 * 20  # the burst plus the rate, never more
    assert results[-11:].count(False) >= 1  # once the burst is spent, every second sees a throttle


def test_buckets_are_per_dataset_group_and_per_api(clock: FakeClock) -> None:
    quotas = Quotas(QuotaConfig(put_items=2, put_users=2), clock)
    assert quotas.allow("shop", Api.PUT_ITEMS) and quotas.allow("shop", Api.PUT_ITEMS)
    assert not quotas.allow("shop", Api.PUT_ITEMS)
    assert quotas.allow("shop", Api.PUT_USERS)
    assert quotas.allow("other", Api.PUT_ITEMS)


def test_default_rates_are_personalizes() -> None:
    config = QuotaConfig()
    assert [config.rate_for(api) for api in Api] == [10.0, 10.0, 1000.0]


def test_put_events_allows_1000_per_second(clock: FakeClock) -> None:
    quotas = Quotas(QuotaConfig(), clock)
    assert all(quotas.allow("shop", Api.PUT_EVENTS) for _ in range(1000))
    assert not quotas.allow("shop", Api.PUT_EVENTS)


@pytest.mark.parametrize("config", [QuotaConfig(enabled=False), QuotaConfig(put_items=None)])
def test_no_quota_never_throttles(clock: FakeClock, config: QuotaConfig) -> None:
    quotas = Quotas(config, clock)
    assert all(quotas.allow("shop", Api.PUT_ITEMS) for _ in range(10_000))


def test_reconfigure_applies_new_limits_with_full_buckets(clock: FakeClock) -> None:
    quotas = Quotas(QuotaConfig(put_items=1), clock)
    assert quotas.allow("shop", Api.PUT_ITEMS)
    assert not quotas.allow("shop", Api.PUT_ITEMS)
    quotas.reconfigure(QuotaConfig(put_items=3))
    assert [quotas.allow("shop", Api.PUT_ITEMS) for _ in range(4)] == [True, True, True, False]


def test_an_idle_period_refills_no_more_than_one_second(clock: FakeClock) -> None:
    quotas = Quotas(QuotaConfig(put_items=5), clock)
    quotas.allow("shop", Api.PUT_ITEMS)
    clock.now = 3600.0
    assert [quotas.allow("shop", Api.PUT_ITEMS) for _ in range(6)] == [True] * 5 + [False]


def test_a_group_can_have_its_own_quota(clock: FakeClock) -> None:
    quotas = Quotas(QuotaConfig(put_items=10, groups={"slow": {Api.PUT_ITEMS: 1}}), clock)
    assert quotas.allow("slow", Api.PUT_ITEMS)
    assert not quotas.allow("slow", Api.PUT_ITEMS)  # its bucket holds one call
    assert all(quotas.allow("fast", Api.PUT_ITEMS) for _ in range(10))
    assert quotas.allow("slow", Api.PUT_USERS)  # other APIs keep the default
