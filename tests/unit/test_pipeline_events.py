"""An interactions route through the pipeline against in-memory fakes: every event counts, DLQ, commits."""

from __future__ import annotations

import json
from pathlib import Path

from ingestor.config import Settings
from ingestor.metrics import Metrics
from ingestor.model import SourceRecord, TopicPartition
from ingestor.pipeline import Pipeline
from ingestor.sender import Sender
from tests.fakes import FakePersonalize, FakeProducer, client_error

CONFIG = Path(__file__).parents[2] / "config"
ARN = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/INTERACTIONS"
TRACKING_ID = "shop-tracking-id"
TOPIC = "shop.events"


def settings(**retry: object) -> Settings:
    retry = {"base_delay_s": 0.001, "max_delay_s": 0.01, **retry}
    return Settings(
        kafka={"dead_letter_topic": "dlq"},
        personalize={"rate_limits": {"PutEvents": 10_000.0}, "retry": retry},
        routes=[
            {
                "topic": TOPIC,
                "kind": "interactions",
                "dataset_arn": ARN,
                "tracking_id": TRACKING_ID,
                "schema": CONFIG / "schemas/interactions.avsc",
            }
        ],
        batching={"linger_ms": 5},
    )


def event(user: str, item: str, offset: int, partition: int = 0, **extra: object) -> SourceRecord:
    value = {"USER_ID": user, "ITEM_ID": item, "EVENT_TYPE": "click", "TIMESTAMP": 1_700_000_000 + offset, **extra}
    return SourceRecord(TOPIC, partition, offset, user.encode(), json.dumps(value).encode())


async def run(
    personalize: FakePersonalize, records: list[SourceRecord], **retry: object
) -> tuple[Pipeline, FakeProducer]:
    s, producer, metrics = settings(**retry), FakeProducer(), Metrics()
    pipeline = Pipeline(s, Sender(personalize, metrics, s.personalize.retry), producer, metrics)
    pipeline.start()
    try:
        for r in records:
            pipeline.ingest(r)
        assert await pipeline.drain(10)
    finally:
        await pipeline.stop()
    return pipeline, producer


async def test_every_event_is_delivered_in_order_per_session_and_everything_commits() -> None:
    personalize = FakePersonalize()
    records = [event(f"u{i % 4}", "same-item", offset) for i, offset in enumerate(range(100))]
    pipeline, producer = await run(personalize, records)
    delivered = personalize.events[TRACKING_ID]
    assert len(delivered) == 100  # repeats of (user, item) are not coalesced
    for user in ("u0", "u1", "u2", "u3"):
        mine = [e["sentAt"] for e in delivered if e["userId"] == user]
        assert mine == sorted(mine) and len(mine) == 25
    assert all(len(records) <= 10 for _, records in personalize.calls)
    assert len(personalize.calls) >= 10  # each call holds one user's events
    assert pipeline.tracker.to_commit() == {TopicPartition(TOPIC, 0): 100}
    assert producer.sent == []


async def test_invalid_events_are_dead_lettered_and_do_not_block() -> None:
    personalize = FakePersonalize(bad_ids={f"{TOPIC}/0@3"})  # the endpoint rejects this one
    records = [event("u1", "i", o) for o in range(6)]
    records[1] = SourceRecord(TOPIC, 0, 1, b"u1", b'{"USER_ID": "u1", "EVENT_TYPE": "click"}')
    pipeline, producer = await run(personalize, records)
    assert sorted(e["eventId"] for e in personalize.events[TRACKING_ID]) == [f"{TOPIC}/0@{o}" for o in (0, 2, 4, 5)]
    stages = {producer.headers_of(i)["ingestor.source.offset"]: producer.headers_of(i) for i in range(2)}
    assert stages["1"]["ingestor.error.stage"] == "validate" and "TIMESTAMP" in stages["1"]["ingestor.error.reason"]
    assert stages["3"]["ingestor.error.stage"] == "api"
    assert pipeline.tracker.to_commit() == {TopicPartition(TOPIC, 0): 6}


async def test_a_retried_call_resends_the_same_event_ids() -> None:
    personalize = FakePersonalize(fail_next=[client_error("InternalFailure", 500)])
    _, _ = await run(personalize, [event("u1", "i", 0), event("u1", "i", 1)])
    assert [[e["eventId"] for e in events] for _, events in personalize.calls] == [[f"{TOPIC}/0@0", f"{TOPIC}/0@1"]] * 2
    assert len(personalize.events[TRACKING_ID]) == 2


async def test_spent_retries_in_block_mode_keep_the_events_and_send_them_again_in_order() -> None:
    personalize = FakePersonalize(fail_next=[client_error("InternalFailure", 500)] * 4)
    records = [event("u1", "i", o) for o in range(15)]
    pipeline, producer = await run(personalize, records, max_attempts=2, on_exhausted="block")
    delivered = [e["eventId"] for e in personalize.events[TRACKING_ID]]
    assert delivered == [f"{TOPIC}/0@{o}" for o in range(15)]  # each once, in order, after the failures
    assert producer.sent == [] and pipeline.tracker.to_commit() == {TopicPartition(TOPIC, 0): 15}
    assert pipeline.stalled is None  # a later success cleared the stall


async def test_spent_retries_in_dead_letter_mode_dead_letter_the_events_at_stage_api() -> None:
    personalize = FakePersonalize(fail_next=[client_error("InternalFailure", 500)] * 2)
    records = [event("u1", "i", o) for o in range(3)]
    pipeline, producer = await run(personalize, records, max_attempts=2, on_exhausted="dead_letter")
    assert len(producer.sent) == 3 and TRACKING_ID not in personalize.events
    assert {producer.headers_of(i)["ingestor.error.stage"] for i in range(3)} == {"api"}
    assert pipeline.tracker.to_commit() == {TopicPartition(TOPIC, 0): 3}
