"""The sender against a fake client: error mapping, retry budget, bisect."""

from __future__ import annotations

import pytest

from ingestor.batcher import Pending
from ingestor.config import RetrySettings
from ingestor.errors import DeliveryError, FatalRouteError
from ingestor.events import PendingEvent
from ingestor.metrics import Metrics
from ingestor.model import SourceRecord
from ingestor.ratelimit import RateLimiter
from ingestor.sender import Sender, Target
from tests.fakes import FakePersonalize, client_error

ARN = "arn:aws:personalize:us-east-1:1:dataset/g/ITEMS"
TARGET = Target("PutItems", ARN)


def batch(n: int) -> list[Pending]:
    return [Pending(SourceRecord("t", 0, i, None, b"{}"), f"i{i}", {"itemId": f"i{i}"}) for i in range(n)]


async def no_sleep(_: float) -> None:
    return None


def sender(client: FakePersonalize, **retry: object) -> Sender:
    settings = RetrySettings(**{"base_delay_s": 0.001, "max_delay_s": 0.001, **retry})
    return Sender(client, Metrics(), settings, sleep=no_sleep)


@pytest.mark.parametrize("code", ["ResourceNotFoundException", "AccessDeniedException", "UnrecognizedClientException"])
async def test_fatal_errors_name_the_dataset_and_are_not_retried(code: str) -> None:
    client = FakePersonalize(fail_next=[client_error(code)])
    with pytest.raises(FatalRouteError, match=ARN):
        await sender(client).send(TARGET, batch(3), RateLimiter(1000))
    assert len(client.calls) == 1


async def test_attempts_budget_is_enforced_then_delivery_error() -> None:
    client = FakePersonalize(fail_next=[client_error("InternalFailure", 500)] * 10)
    with pytest.raises(DeliveryError, match="InternalFailure"):
        await sender(client, max_attempts=4).send(TARGET, batch(2), RateLimiter(1000))
    assert len(client.calls) == 4


async def test_time_budget_counts_from_the_records_first_attempt() -> None:
    now = [100.0]
    client = FakePersonalize(fail_next=[client_error("ThrottlingException")] * 10)
    s = Sender(client, Metrics(), RetrySettings(max_time_s=5, base_delay_s=0.001), clock=lambda: now[0], sleep=no_sleep)
    records = batch(1)
    records[0].first_attempt = 90.0  # already spent 10 s on earlier attempts
    with pytest.raises(DeliveryError):
        await s.send(TARGET, records, RateLimiter(1000))
    assert len(client.calls) == 1


async def test_invalid_input_bisects_to_the_bad_records() -> None:
    client = FakePersonalize(bad_ids={"i2", "i7"})
    outcome = await sender(client).send(TARGET, batch(10), RateLimiter(1000))
    assert sorted(p.record_id for p, _ in outcome.rejected) == ["i2", "i7"]
    assert len(outcome.accepted) == 8
    assert all("InvalidInputException" in reason for _, reason in outcome.rejected)
    assert set(client.state[ARN]) == {f"i{i}" for i in range(10)} - {"i2", "i7"}


async def test_connection_errors_are_retried() -> None:
    client = FakePersonalize(fail_next=[ConnectionResetError("reset"), TimeoutError()])
    outcome = await sender(client).send(TARGET, batch(2), RateLimiter(1000))
    assert len(outcome.accepted) == 2 and len(client.calls) == 3


# ---------------------------------------------------------------------- PutEvents

EVENTS_TARGET = Target("PutEvents", "arn:aws:personalize:us-east-1:1:dataset/g/INTERACTIONS", "track-1")


def events(n: int, user: str = "u1", session: str = "s1") -> list[Pending]:
    return [
        PendingEvent(
            SourceRecord("ev", 0, i, None, b"{}"),
            user,
            {"eventId": f"e{i}", "eventType": "click", "sentAt": 1_700_000_000},
            session_id=session,
        )
        for i in range(n)
    ]


async def test_putevents_carries_tracking_user_and_session_ids() -> None:
    client = FakePersonalize()
    outcome = await sender(client).send(EVENTS_TARGET, events(3), RateLimiter(1000))
    assert len(outcome.accepted) == 3
    assert client.put_events_calls == [{"trackingId": "track-1", "userId": "u1", "sessionId": "s1"}]
    assert [e["eventId"] for e in client.events["track-1"]] == ["e0", "e1", "e2"]


async def test_putevents_rejections_are_bisected_to_the_bad_events() -> None:
    client = FakePersonalize(bad_ids={"e3"})
    outcome = await sender(client).send(EVENTS_TARGET, events(8), RateLimiter(1000))
    assert [p.request["eventId"] for p, _ in outcome.rejected] == ["e3"]
    assert "InvalidInputException" in outcome.rejected[0][1]
    assert sorted(e["eventId"] for e in client.events["track-1"]) == [f"e{i}" for i in range(8) if i != 3]
    assert all(c["sessionId"] == "s1" for c in client.put_events_calls)  # every half keeps the session


async def test_putevents_unknown_tracking_id_is_fatal_and_names_the_setting() -> None:
    client = FakePersonalize(fail_next=[client_error("ResourceNotFoundException")])
    with pytest.raises(FatalRouteError, match=r"routes\[\]\.tracking_id"):
        await sender(client).send(EVENTS_TARGET, events(1), RateLimiter(1000))


async def test_putevents_throttling_is_retried_with_the_same_event_ids() -> None:
    client = FakePersonalize(fail_next=[client_error("ThrottlingException"), client_error("ServiceUnavailable", 503)])
    limiter = RateLimiter(1000)
    told: list[str] = []
    limiter.throttled = lambda: told.append("throttled")  # type: ignore[method-assign]
    outcome = await sender(client).send(EVENTS_TARGET, events(2), limiter)
    assert len(outcome.accepted) == 2 and len(client.calls) == 3
    assert {tuple(e["eventId"] for e in records) for _, records in client.calls} == {("e0", "e1")}
    assert told == ["throttled"]  # the limiter heard of the throttle (it judges windows of calls, not one call)
