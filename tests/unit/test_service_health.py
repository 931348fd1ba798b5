"""Service.ready / Service.live with datasets held by a fatal error (personalize.on_fatal: hold)."""

from __future__ import annotations

import time
from types import SimpleNamespace

from ingestor.app import COMMIT_STALL_S, Service
from ingestor.errors import FatalRouteError
from ingestor.metrics import Metrics
from ingestor.pipeline import Pipeline
from ingestor.sender import Sender
from tests.fakes import FakePersonalize, FakeProducer
from tests.unit.test_pipeline import ITEMS_ARN, USERS_ARN, item, two_routes, user


def service_with_pipeline() -> tuple[Service, Pipeline]:
    s = two_routes()
    service = Service(s)
    metrics = Metrics()
    pipeline = Pipeline(s, Sender(FakePersonalize(), metrics, s.personalize.retry), FakeProducer(), metrics)
    service.pipeline = pipeline
    service.source = SimpleNamespace(joined=True, broker_ok_at=time.monotonic())  # type: ignore[assignment]
    return service, pipeline


async def test_readiness_names_the_held_dataset_and_counts_the_others() -> None:
    service, pipeline = service_with_pipeline()
    assert service.ready() is None
    items, users = pipeline.datasets
    items.fatal = FatalRouteError(f"PutItems on {ITEMS_ARN} failed with ResourceNotFoundException")
    assert service.ready() == f"fatal: {items.fatal}"
    users.fatal = FatalRouteError(f"PutUsers on {USERS_ARN} failed with AccessDeniedException")
    assert service.ready() == f"fatal: {items.fatal} (and 1 more dataset(s) held)"
    items.fatal = users.fatal = None
    assert service.ready() is None


async def test_liveness_does_not_fail_for_records_that_only_wait_for_a_held_dataset() -> None:
    """A restart would not fix a held dataset (it is reported as not ready); a stuck healthy route still fails."""
    service, pipeline = service_with_pipeline()
    for i in range(3):
        pipeline.ingest(item(f"i{i}", 1.0, i))
    pipeline.datasets[0].fatal = FatalRouteError("held")
    service._progress_at = time.monotonic() - COMMIT_STALL_S - 1
    assert service.live() is None  # only the held dataset's records are pending
    pipeline.ingest(user("u1", 0))  # a healthy route's record that does not move either
    service._progress_at = time.monotonic() - COMMIT_STALL_S - 1
    assert (service.live() or "").startswith("4 records pending and no commit advanced")
