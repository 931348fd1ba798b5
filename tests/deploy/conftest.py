"""Fixtures for the deployment checks: the rendered kustomizations and the service's metric catalogue."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from ingestor.bulk.catchup import BulkMetrics
from ingestor.metrics import Metrics
from tests.deploy.support import KUSTOMIZATIONS, MetricCatalog, Rendered, render


@pytest.fixture(params=sorted(KUSTOMIZATIONS))
def rendered(request: pytest.FixtureRequest) -> Rendered:
    return render(request.param)


@pytest.fixture(scope="session")
def metric_catalog() -> MetricCatalog:
    registry = CollectorRegistry()
    collectors = [*vars(Metrics(registry)).values(), *vars(BulkMetrics(registry)).values()]
    # Labelled metrics export nothing until a child exists: make one child of each.
    for collector in collectors:
        labelnames = getattr(collector, "_labelnames", ())
        if labelnames:
            collector.labels(*["x"] * len(labelnames))
    catalog = MetricCatalog()
    for family in registry.collect():
        for sample in family.samples:
            catalog.labels[sample.name] = frozenset(catalog.labels.get(sample.name, frozenset()) | set(sample.labels))
    assert catalog.labels, "ingestor.metrics.Metrics registered nothing"
    return catalog
