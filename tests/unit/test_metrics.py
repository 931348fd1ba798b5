"""Metrics live on an injected registry; the progress totals sum counters over their labels."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from ingestor.metrics import Metrics


def test_metrics_register_on_the_injected_registry_only() -> None:
    a, b = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())  # no duplicate-registration error
    a.records_consumed.labels("t").inc()
    assert b'ingestor_records_consumed_total{topic="t"} 1.0' in generate_latest(a.registry)
    assert b"ingestor_records_consumed_total{" not in generate_latest(b.registry)


def test_totals_sum_counters_over_labels() -> None:
    m = Metrics()
    m.records_consumed.labels("a").inc(3)
    m.records_consumed.labels("b").inc(2)
    m.records_dead_lettered.labels("decode").inc()
    m.api_calls.labels("PutItems", "ok").inc(4)
    totals = m.totals()
    assert totals["consumed"] == 5
    assert totals["dead_lettered"] == 1
    assert totals["calls"] == 4
    assert totals["sent"] == 0
