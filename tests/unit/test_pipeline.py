"""The pipeline end to end against in-memory fakes: outcomes per record, DLQ, coalescing, commits."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from ingestor.config import Settings
from ingestor.metrics import Metrics
from ingestor.model import SourceRecord, TopicPartition
from ingestor.pipeline import Pipeline
from ingestor.sender import Sender
from tests.conftest import wait_until
from tests.fakes import FakePersonalize, FakeProducer, client_error

CONFIG = Path(__file__).parents[2] / "config"
ITEMS_ARN = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/ITEMS"
TP = TopicPartition("catalog.items", 0)


def settings(*, personalize: dict[str, object] | None = None, **retry: object) -> Settings:
    return Settings(
        kafka={"dead_letter_topic": "dlq"},
        personalize={
            "rate_limits": {"PutItems": 1000.0, "PutUsers": 1000.0},
            "retry": {"base_delay_s": 0.001, "max_delay_s": 0.01, **retry},
            **(personalize or {}),
        },
        routes=[
            {
                "topic": "catalog.items",
                "kind": "items",
                "dataset_arn": ITEMS_ARN,
                "schema": CONFIG / "schemas/items.avsc",
            }
        ],
        batching={"linger_ms": 5},
    )


def item(item_id: str, price: float, offset: int) -> SourceRecord:
    value = {"ITEM_ID": item_id, "PRICE": price, "CREATION_TIMESTAMP": 1700000000}
    return SourceRecord("catalog.items", 0, offset, item_id.encode(), json.dumps(value).encode())


@pytest.fixture
async def harness():
    personalize, producer = FakePersonalize(), FakeProducer()
    s = settings()
    metrics = Metrics()
    pipeline = Pipeline(s, Sender(personalize, metrics, s.personalize.retry), producer, metrics)
    pipeline.start()
    yield pipeline, personalize, producer
    await pipeline.stop()


async def test_latest_record_per_id_wins_and_everything_commits(harness) -> None:
    pipeline, personalize, _ = harness
    offset = 0
    for version in range(5):
        for i in range(30):
            pipeline.ingest(item(f"i{i}", version, offset))
            offset += 1
    assert await pipeline.drain(10)
    state = personalize.state[ITEMS_ARN]
    assert len(state) == 30
    assert all(json.loads(p)["price"] == 4 for p in state.values())
    assert pipeline.tracker.to_commit() == {TP: offset}
    assert all(len(records) <= 10 for _, records in personalize.calls)


async def test_end_to_end_latency_is_observed_from_the_kafka_timestamp_to_acceptance() -> None:
    s = settings()
    metrics, personalize = Metrics(), FakePersonalize()
    wall = 1_800_000_010.0
    pipeline = Pipeline(
        s, Sender(personalize, metrics, s.personalize.retry), FakeProducer(), metrics, wall_clock=lambda: wall
    )
    pipeline.start()
    try:
        stamped = [item(f"i{i}", 1.0, i)._replace(timestamp_ms=1_800_000_000_000 + i * 1000) for i in range(3)]
        for rec in [*stamped, item("untimed", 1.0, 3)]:  # a record without a timestamp is not observed
            pipeline.ingest(rec)
        assert await pipeline.drain(10)
    finally:
        await pipeline.stop()
    assert metrics.registry.get_sample_value("ingestor_end_to_end_seconds_count", {"api": "PutItems"}) == 3
    assert metrics.registry.get_sample_value("ingestor_end_to_end_seconds_sum", {"api": "PutItems"}) == 10 + 9 + 8
    assert (
        metrics.registry.get_sample_value("ingestor_end_to_end_seconds_bucket", {"api": "PutItems", "le": "5.0"}) == 0
    )


async def test_bad_json_and_schema_rejects_go_to_the_dlq_with_headers(harness) -> None:
    pipeline, personalize, producer = harness
    pipeline.ingest(SourceRecord("catalog.items", 0, 0, b"k", b"{not json"))
    pipeline.ingest(item("ok", 1.0, 1))
    bad = SourceRecord("catalog.items", 0, 2, b"x", json.dumps({"ITEM_ID": "x", "PRICE": "cheap"}).encode())
    pipeline.ingest(bad)
    assert await pipeline.drain(10)
    assert [r[2] for r in producer.sent] == [b"{not json", bad.value]
    h0, h1 = producer.headers_of(0), producer.headers_of(1)
    assert h0["ingestor.error.stage"] == "decode" and "catalog.items/0@0" in h0["ingestor.error.reason"]
    assert h1["ingestor.error.stage"] == "validate" and "price" in h1["ingestor.error.reason"]
    assert h1["ingestor.source.offset"] == "2" and h1["ingestor.dataset.arn"] == ITEMS_ARN
    assert set(personalize.state[ITEMS_ARN]) == {"ok"}
    assert pipeline.tracker.to_commit() == {TP: 3}


async def test_api_rejection_is_narrowed_to_the_bad_record_and_older_version_is_sent(harness) -> None:
    pipeline, personalize, producer = harness
    # Personalize rejects i3's newest version (price 2.0) only; its older version (price 1.0) is acceptable.
    personalize.rejects = lambda r: r["itemId"] == "i3" and json.loads(r["properties"])["price"] == 2.0
    pipeline.ingest(item("i3", 1.0, 0))
    for i in range(10):
        pipeline.ingest(item(f"i{i}", 2.0, i + 1))
    assert await pipeline.drain(10)
    assert len(producer.sent) == 1
    headers = producer.headers_of(0)
    assert headers["ingestor.error.stage"] == "api"
    assert headers["ingestor.source.offset"] == "4"
    assert "InvalidInputException" in headers["ingestor.error.reason"]
    state = personalize.state[ITEMS_ARN]
    assert len(state) == 10
    assert json.loads(state["i3"])["price"] == 1.0  # the last record Personalize accepts
    assert all(json.loads(state[f"i{i}"])["price"] == 2.0 for i in range(10) if i != 3)
    assert pipeline.tracker.to_commit() == {TP: 11}
    # bisect: the 10-record call failed, then halves until i3 was alone; every call stayed within 10 records
    assert max(len(r) for _, r in personalize.calls) == 10


async def test_throttling_is_retried_and_in_flight_stays_bounded(harness) -> None:
    pipeline, personalize, _ = harness
    personalize.fail_next = [client_error("ThrottlingException")] * 3 + [client_error("ServiceUnavailable", 503)]
    for i in range(200):
        pipeline.ingest(item(f"i{i}", 1.0, i))
    assert await pipeline.drain(10)
    assert len(personalize.state[ITEMS_ARN]) == 200
    assert personalize.max_in_flight <= pipeline.settings.personalize.max_in_flight
    assert pipeline.metrics.api_retries.labels("PutItems", "throttled")._value.get() == 3


async def test_fatal_error_stops_the_route_without_dead_lettering() -> None:
    """on_fatal: stop — the service is told to stop (exit code 3), the batch stays in flight, nothing is committed."""
    personalize, producer = FakePersonalize(), FakeProducer()
    pipeline = pipeline_with(personalize, producer, personalize_settings={"on_fatal": "stop"})
    failed = asyncio.Event()
    pipeline.on_failure = failed.set
    pipeline.start()
    try:
        personalize.fail_next = [client_error("ResourceNotFoundException", message="no such dataset")]
        for i in range(3):
            pipeline.ingest(item(f"i{i}", 1.0, i))
        await wait_until(failed.is_set, timeout=5, what="the fatal error")
        assert pipeline.fatal is not None and ITEMS_ARN in str(pipeline.fatal)
        assert producer.sent == []
        assert pipeline.tracker.to_commit() == {TP: 0}
        assert pipeline.datasets[0].buffer.in_flight == 3  # stays in flight: never sent again, never committed
        assert pipeline.metrics.datasets_held.labels("PutItems")._value.get() == 1
    finally:
        await pipeline.stop()


async def test_tombstones_are_done_at_once(harness) -> None:
    pipeline, _, _ = harness
    pipeline.ingest(SourceRecord("catalog.items", 0, 0, b"i1", None))
    assert pipeline.tracker.to_commit() == {TP: 1}


async def test_a_dataset_waiting_for_its_rate_limit_holds_no_call_slot() -> None:
    """One slot, a slow quota for items (0.2 calls/s) and a fast one for users: the items dispatcher waiting ~5 s for
    its next turn must not hold the only slot, or every user waits behind it."""
    users_arn = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/USERS"
    s = Settings(
        kafka={"dead_letter_topic": "dlq"},
        personalize={"rate_limits": {"PutItems": 0.2, "PutUsers": 1000.0}, "max_in_flight": 1},
        routes=[
            {
                "topic": "catalog.items",
                "kind": "items",
                "dataset_arn": ITEMS_ARN,
                "schema": CONFIG / "schemas/items.avsc",
            },
            {"topic": "crm.users", "kind": "users", "dataset_arn": users_arn, "schema": CONFIG / "schemas/users.avsc"},
        ],
        batching={"linger_ms": 1},
    )
    personalize, metrics = FakePersonalize(), Metrics()
    pipeline = Pipeline(s, Sender(personalize, metrics, s.personalize.retry), FakeProducer(), metrics)
    pipeline.start()
    try:
        for i in range(20):  # two calls: the second must wait 5 s for the items quota
            pipeline.ingest(item(f"i{i}", 1.0, i))
        await wait_until(lambda: len(personalize.state.get(ITEMS_ARN, {})) == 10, timeout=5, what="the first call")
        for i in range(50):
            user = {"USER_ID": f"u{i}", "AGE": 30, "MEMBERSHIP": "gold"}
            pipeline.ingest(SourceRecord("crm.users", 0, i, None, json.dumps(user).encode()))
        await wait_until(lambda: len(personalize.state.get(users_arn, {})) == 50, timeout=2.5, what="every user")
        assert len(personalize.state[ITEMS_ARN]) == 10  # the items quota still holds its second call back
    finally:
        await pipeline.stop()


async def test_a_throttled_dataset_in_retry_back_off_holds_no_call_slot() -> None:
    """One slot; every items call is throttled and retried with back-offs of up to 2 s: the users must not wait
    behind those sleeps (nothing is on the wire while a call backs off)."""
    users_arn = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/USERS"
    s = Settings(
        kafka={"dead_letter_topic": "dlq"},
        personalize={
            "rate_limits": {"PutItems": 1000.0, "PutUsers": 1000.0},
            "max_in_flight": 1,
            "retry": {"base_delay_s": 1.0, "max_delay_s": 2.0, "max_attempts": 50},
        },
        routes=[
            {
                "topic": "catalog.items",
                "kind": "items",
                "dataset_arn": ITEMS_ARN,
                "schema": CONFIG / "schemas/items.avsc",
            },
            {"topic": "crm.users", "kind": "users", "dataset_arn": users_arn, "schema": CONFIG / "schemas/users.avsc"},
        ],
        batching={"linger_ms": 1},
    )
    personalize, metrics = FakePersonalize(), Metrics()
    personalize.on_call = lambda arn, _: (
        personalize.fail_next.append(client_error("ThrottlingException")) if arn == ITEMS_ARN else None
    )
    pipeline = Pipeline(s, Sender(personalize, metrics, s.personalize.retry), FakeProducer(), metrics)
    pipeline.start()
    try:
        for i in range(10):
            pipeline.ingest(item(f"i{i}", 1.0, i))
        await wait_until(lambda: len(personalize.calls) >= 2, timeout=5, what="the items call to be retried")
        for i in range(50):
            user = {"USER_ID": f"u{i}", "AGE": 30, "MEMBERSHIP": "gold"}
            pipeline.ingest(SourceRecord("crm.users", 0, i, None, json.dumps(user).encode()))
        await wait_until(lambda: len(personalize.state.get(users_arn, {})) == 50, timeout=1.5, what="every user")
        assert ITEMS_ARN not in personalize.state  # still throttled, still retrying
    finally:
        await pipeline.stop()


@pytest.mark.parametrize("on_fatal", ["stop", "hold"])
async def test_drain_after_a_fatal_route_still_delivers_the_healthy_routes(on_fatal: str) -> None:
    users_arn = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/USERS"
    s = Settings(
        kafka={"dead_letter_topic": "dlq"},
        personalize={"rate_limits": {"PutItems": 1000.0, "PutUsers": 1000.0}, "on_fatal": on_fatal},
        routes=[
            {
                "topic": "catalog.items",
                "kind": "items",
                "dataset_arn": ITEMS_ARN,
                "schema": CONFIG / "schemas/items.avsc",
            },
            {"topic": "crm.users", "kind": "users", "dataset_arn": users_arn, "schema": CONFIG / "schemas/users.avsc"},
        ],
        batching={"linger_ms": 1000},  # users wait for the drain's flush, not for linger
    )
    personalize = FakePersonalize()
    personalize.on_call = lambda arn, _: (
        personalize.fail_next.append(client_error("ResourceNotFoundException")) if arn == ITEMS_ARN else None
    )
    metrics = Metrics()
    pipeline = Pipeline(s, Sender(personalize, metrics, s.personalize.retry), FakeProducer(), metrics)
    pipeline.start()
    try:
        pipeline.ingest(item("i1", 1.0, 0))
        await wait_until(lambda: pipeline.fatal is not None, timeout=5, what="the fatal error")
        for i in range(3):  # buffered after the fatal error, waiting for their linger
            user = {"USER_ID": f"u{i}", "MEMBERSHIP": "gold"}
            pipeline.ingest(SourceRecord("crm.users", 0, i, None, json.dumps(user).encode()))
        calls = len(personalize.calls)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert not await pipeline.drain(5)  # the items record can never be done...
        assert loop.time() - started < 2  # ...so the drain does not wait for it
        assert set(personalize.state[users_arn]) == {"u0", "u1", "u2"}  # ...but the users were delivered
        assert pipeline.tracker.to_commit() == {TopicPartition("crm.users", 0): 3, TP: 0}
        assert [arn for arn, _ in personalize.calls[calls:]] == [users_arn]  # no burst of probes while draining
    finally:
        await pipeline.stop()


def pipeline_with(
    personalize: FakePersonalize,
    producer: FakeProducer,
    *,
    personalize_settings: dict[str, object] | None = None,
    **retry: object,
) -> Pipeline:
    s = settings(personalize=personalize_settings, **retry)
    metrics = Metrics()
    return Pipeline(s, Sender(personalize, metrics, s.personalize.retry), producer, metrics)


async def test_exhausted_retries_dead_letter_when_configured() -> None:
    personalize, producer = FakePersonalize(), FakeProducer()
    personalize.fail_next = [client_error("ServiceUnavailable", 503)] * 3
    pipeline = pipeline_with(personalize, producer, max_attempts=3, on_exhausted="dead_letter")
    pipeline.start()
    try:
        pipeline.ingest(item("i1", 1.0, 0))
        assert await pipeline.drain(10)
        assert len(producer.sent) == 1
        headers = producer.headers_of(0)
        assert headers["ingestor.error.stage"] == "api"
        assert "retries exhausted" in headers["ingestor.error.reason"]
        assert pipeline.tracker.to_commit() == {TP: 1}
    finally:
        await pipeline.stop()


async def test_exhausted_retries_block_the_partition_and_recover() -> None:
    personalize, producer = FakePersonalize(), FakeProducer()
    personalize.fail_next = [client_error("ServiceUnavailable", 503)] * 4
    pipeline = pipeline_with(personalize, producer, max_attempts=2, max_delay_s=0.05)
    pipeline.start()
    try:
        pipeline.ingest(item("i1", 1.0, 0))
        await wait_until(lambda: pipeline.stalled is not None, timeout=5, what="the retry budget to run out")
        assert pipeline.tracker.to_commit() == {TP: 0}  # nothing committed past the undelivered record
        assert producer.sent == []  # and nothing dead-lettered
        assert await pipeline.drain(10)  # retried after max_delay_s; the service recovers by itself
        assert pipeline.stalled is None
        assert set(personalize.state[ITEMS_ARN]) == {"i1"}
        assert pipeline.tracker.to_commit() == {TP: 1}
    finally:
        await pipeline.stop()


async def test_a_dead_letter_write_that_raises_fails_the_pipeline_loudly(harness) -> None:
    pipeline, _, producer = harness
    failed = asyncio.Event()
    pipeline.on_failure = failed.set

    async def broken_send(*args: object, **kwargs: object) -> None:
        raise RuntimeError("producer bug")

    producer.send = broken_send  # type: ignore[method-assign]
    pipeline.ingest(SourceRecord("catalog.items", 0, 0, b"k", b"{not json"))
    await wait_until(failed.is_set, timeout=5, what="the failure to surface")
    assert isinstance(pipeline.failure, RuntimeError)
    assert pipeline.tracker.to_commit() == {TP: 0}  # never counted as done


async def test_revocation_fits_one_budget_and_drops_what_it_could_not_finish() -> None:
    personalize, producer = FakePersonalize(gate=asyncio.Event()), FakeProducer(hold=asyncio.Event())
    pipeline = pipeline_with(personalize, producer)
    pipeline.start()
    try:
        pipeline.ingest(item("i1", 1.0, 0))  # its call will hang
        pipeline.ingest(SourceRecord("catalog.items", 0, 1, b"k", b"{not json"))  # its DLQ write will hang
        await wait_until(lambda: personalize.in_flight == 1, timeout=5, what="the call to start")
        loop = asyncio.get_running_loop()
        started = loop.time()
        await pipeline.revoke({TP}, timeout_s=1.0)
        assert loop.time() - started < 1.8  # calls and DLQ writes share the budget (not 1 s each)
        assert personalize.state == {}
        assert pipeline.datasets[0].buffer.buffered == 0  # the abandoned call's record was released and dropped
        pipeline.forget({TP})
        assert pipeline.tracker.to_commit() == {}  # nothing committed for the revoked partition
    finally:
        producer.hold.set()
        await pipeline.stop()


async def test_retries_exhausted_mid_bisect_keep_what_was_already_accepted() -> None:
    personalize, producer = FakePersonalize(), FakeProducer()
    personalize.rejects = lambda r: r["itemId"] == "i7"  # the 10-record call is rejected and bisected

    def second_half_keeps_failing(arn: str, records: list[dict[str, str]]) -> None:
        if records[0]["itemId"] == "i5" and len(records) == 5:
            personalize.fail_next.append(client_error("ServiceUnavailable", 503))

    personalize.on_call = second_half_keeps_failing
    pipeline = pipeline_with(personalize, producer, max_attempts=2, on_exhausted="dead_letter")
    pipeline.start()
    try:
        for i in range(10):
            pipeline.ingest(item(f"i{i}", 1.0, i))
        assert await pipeline.drain(10)
        assert set(personalize.state[ITEMS_ARN]) == {f"i{i}" for i in range(5)}
        dead = sorted(int(producer.headers_of(n)["ingestor.source.offset"]) for n in range(len(producer.sent)))
        assert dead == [5, 6, 7, 8, 9]  # the accepted first half is not dead-lettered
        assert pipeline.tracker.to_commit() == {TP: 10}
    finally:
        await pipeline.stop()


async def test_a_stalled_dataset_stays_not_ready_while_another_succeeds() -> None:
    users_arn = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/USERS"
    s = Settings(
        kafka={"dead_letter_topic": "dlq"},
        personalize={
            "rate_limits": {"PutItems": 1000.0, "PutUsers": 1000.0},
            "retry": {"max_attempts": 1, "max_delay_s": 60},
        },
        routes=[
            {
                "topic": "catalog.items",
                "kind": "items",
                "dataset_arn": ITEMS_ARN,
                "schema": CONFIG / "schemas/items.avsc",
            },
            {"topic": "crm.users", "kind": "users", "dataset_arn": users_arn, "schema": CONFIG / "schemas/users.avsc"},
        ],
        batching={"linger_ms": 1},
    )
    personalize = FakePersonalize()
    personalize.on_call = lambda arn, _: (
        personalize.fail_next.append(client_error("ServiceUnavailable", 503)) if arn == ITEMS_ARN else None
    )
    metrics = Metrics()
    pipeline = Pipeline(s, Sender(personalize, metrics, s.personalize.retry), FakeProducer(), metrics)
    pipeline.start()
    try:
        pipeline.ingest(item("i1", 1.0, 0))
        await wait_until(lambda: pipeline.stalled is not None, timeout=5, what="the items dataset to stall")
        user = {"USER_ID": "u1", "MEMBERSHIP": "gold"}
        pipeline.ingest(SourceRecord("crm.users", 0, 0, None, json.dumps(user).encode()))
        await wait_until(lambda: users_arn in personalize.state, timeout=5, what="the user to be delivered")
        assert pipeline.stalled is not None  # a success on users does not make the stalled items route ready
    finally:
        await pipeline.stop()


async def test_dead_letters_are_logged_as_a_summary_not_one_line_per_record(harness, caplog) -> None:
    pipeline, _, _ = harness
    caplog.set_level("WARNING", logger="ingestor.deadletter")
    for off in range(20):
        pipeline.ingest(SourceRecord("catalog.items", 0, off, b"k", b"{not json"))
    assert await pipeline.drain(10)
    pipeline.dlq.report()  # the tail of the burst, as the periodic report and the shutdown do
    lines = [r.getMessage() for r in caplog.records if r.name == "ingestor.deadletter"]
    assert len(lines) == 2  # the first record at once, the other 19 in one summary
    assert lines[1].startswith("dead-lettered 19 record(s)") and "'decode': 19" in lines[1]
    pipeline.dlq.report()
    assert len([r for r in caplog.records if r.name == "ingestor.deadletter"]) == 2  # nothing new: no line


# ---------------------------------------------------------------------- on_fatal: hold

USERS_ARN = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/USERS"
USERS_TP = TopicPartition("crm.users", 0)


class FailingItems(FakePersonalize):
    """Items calls fail with ResourceNotFoundException while ``failing``; each takes ``latency`` seconds (so calls
    that could overlap do). ``items_max_in_flight`` counts only calls started while ``watching``; ``items_started``
    when each items call began (the loop's clock)."""

    def __init__(self, error: str = "ResourceNotFoundException") -> None:
        super().__init__()
        self.failing = True
        self.error = error
        self.watching = False
        self.latency = 0.005
        self.items_in_flight = 0
        self.items_max_in_flight = 0
        self.items_started: list[float] = []

    async def put_items(self, *, datasetArn: str, items: list[dict[str, str]]) -> dict[str, Any]:
        self.items_started.append(asyncio.get_running_loop().time())
        self.items_in_flight += 1
        if self.watching:
            self.items_max_in_flight = max(self.items_max_in_flight, self.items_in_flight)
        try:
            await asyncio.sleep(self.latency)  # the endpoint's latency, not a wait for a condition
            if self.failing:
                self.calls.append((datasetArn, items))
                raise client_error(self.error, message="no such dataset")
            return await super().put_items(datasetArn=datasetArn, items=items)
        finally:
            self.items_in_flight -= 1


def two_routes(**personalize: object) -> Settings:
    return Settings(
        kafka={"dead_letter_topic": "dlq"},
        personalize={
            "rate_limits": {"PutItems": 1000.0, "PutUsers": 1000.0},
            "retry": {"base_delay_s": 0.001, "max_delay_s": 0.01},
            "on_fatal": "hold",
            "fatal_retry_s": 0.2,
            **personalize,
        },
        routes=[
            {
                "topic": "catalog.items",
                "kind": "items",
                "dataset_arn": ITEMS_ARN,
                "schema": CONFIG / "schemas/items.avsc",
            },
            {"topic": "crm.users", "kind": "users", "dataset_arn": USERS_ARN, "schema": CONFIG / "schemas/users.avsc"},
        ],
        batching={"linger_ms": 1},
    )


def user(user_id: str, offset: int) -> SourceRecord:
    value = {"USER_ID": user_id, "AGE": 30, "MEMBERSHIP": "gold"}
    return SourceRecord("crm.users", 0, offset, None, json.dumps(value).encode())


async def test_hold_a_fatal_dataset_while_the_others_deliver_then_resume_after_a_probe_succeeds(caplog) -> None:
    caplog.set_level("DEBUG", logger="ingestor.pipeline")
    s = two_routes()
    assert s.personalize.on_fatal == "hold"
    personalize, producer, metrics = FailingItems(), FakeProducer(), Metrics()
    pipeline = Pipeline(s, Sender(personalize, metrics, s.personalize.retry), producer, metrics)
    failures: list[str] = []
    pipeline.on_failure = lambda: failures.append("stop requested")
    pipeline.start()
    try:
        for i in range(30):  # three calls of ten, in flight together: each meets the fatal error
            pipeline.ingest(item(f"i{i}", 1.0, i))
        await wait_until(lambda: pipeline.fatal is not None, timeout=5, what="the items dataset to be held")
        assert ITEMS_ARN in str(pipeline.fatal)
        await wait_until(lambda: personalize.items_in_flight == 0, timeout=5, what="the first calls to end")
        personalize.watching = True
        personalize.latency = 0.3  # a probe call outlasts fatal_retry_s: the next one waits for it all the same
        first_calls = len(personalize.items_started)
        for i in range(5):  # newer versions arrive while the dataset is held: they coalesce in the buffer
            pipeline.ingest(item(f"i{i}", 2.0, 30 + i))
        for i in range(50):  # the users dataset keeps delivering and committing meanwhile
            pipeline.ingest(user(f"u{i}", i))
        await wait_until(
            lambda: pipeline.tracker.to_commit().get(USERS_TP) == 50, timeout=5, what="every user committed"
        )
        assert set(personalize.state[USERS_ARN]) == {f"u{i}" for i in range(50)}
        await wait_until(
            lambda: len(personalize.items_started) >= first_calls + 3, timeout=10, what="three probe calls"
        )
        assert pipeline.fatal is not None  # still held: every probe failed
        assert pipeline.tracker.to_commit()[TP] == 0  # nothing committed past the first failing record
        assert producer.sent == []  # nothing dead-lettered
        assert failures == []  # the service was not told to stop
        assert metrics.datasets_held.labels("PutItems")._value.get() == 1
        assert metrics.datasets_held.labels("PutUsers")._value.get() == 0
        assert personalize.items_max_in_flight == 1  # held: one probe call at a time...
        probes = personalize.items_started[first_calls:]
        gaps = [b - a for a, b in itertools.pairwise(probes)]
        assert min(gaps) >= 0.3 + 0.2 - 1e-3, gaps  # ...fatal_retry_s after the previous one failed

        personalize.failing, personalize.latency = False, 0.005  # the dataset exists now: the next probe succeeds
        await wait_until(lambda: pipeline.tracker.to_commit().get(TP) == 35, timeout=5, what="every item committed")
        assert pipeline.fatal is None
        state = personalize.state[ITEMS_ARN]
        assert len(state) == 30 and all(json.loads(state[f"i{i}"])["price"] == 2.0 for i in range(5))
        assert producer.sent == []
        assert metrics.datasets_held.labels("PutItems")._value.get() == 0
        assert metrics.fatal_errors.labels("PutItems")._value.get() == 1
    finally:
        await pipeline.stop()
    records = [r for r in caplog.records if r.name == "ingestor.pipeline"]
    errors = [r.getMessage() for r in records if r.levelname == "ERROR"]
    assert len(errors) == 1 and ITEMS_ARN in errors[0] and "check that the dataset exists" in errors[0], errors
    assert not [r for r in records if r.levelname == "WARNING"]  # failed probes: debug only (no log storm)
    resumed = [r.getMessage() for r in records if r.levelname == "INFO" and "succeed again" in r.getMessage()]
    assert len(resumed) == 1 and resumed[0].startswith(f"calls to {ITEMS_ARN} succeed again after a fatal error")


async def test_a_held_dataset_dead_letters_nothing_even_when_a_probe_spends_its_retries() -> None:
    """on_exhausted: dead_letter does not apply to a held dataset: a probe answered only by 503s keeps it held and
    its records buffered; the next probe that gets through delivers them."""
    s = two_routes(retry={"max_attempts": 2, "base_delay_s": 0.001, "max_delay_s": 0.01, "on_exhausted": "dead_letter"})
    personalize, producer, metrics = FailingItems(), FakeProducer(), Metrics()
    pipeline = Pipeline(s, Sender(personalize, metrics, s.personalize.retry), producer, metrics)
    pipeline.start()
    try:
        pipeline.ingest(item("i1", 1.0, 0))
        await wait_until(lambda: pipeline.fatal is not None, timeout=5, what="the items dataset to be held")
        personalize.failing = False
        personalize.fail_next = [client_error("ServiceUnavailable", 503)] * 2  # the first probe spends its budget
        await wait_until(lambda: not personalize.fail_next, timeout=5, what="the probe's two attempts")
        await wait_until(lambda: pipeline.fatal is None, timeout=5, what="the second probe")
        assert producer.sent == []
        assert pipeline.metrics.api_retries.labels("PutItems", "error")._value.get() == 1
        await wait_until(lambda: pipeline.tracker.to_commit().get(TP) == 1, timeout=5, what="the item committed")
        assert set(personalize.state[ITEMS_ARN]) == {"i1"}
    finally:
        await pipeline.stop()


async def test_a_fatal_error_mid_bisect_keeps_what_was_settled_and_holds_the_rest() -> None:
    """A 10-record call is rejected (one bad record) and bisected; the first half is accepted, then the dataset
    fails fatally: the accepted half is done (committed), the rest is held, not dead-lettered; after the probe
    succeeds the bad record is narrowed down and dead-lettered as usual."""
    s = two_routes()
    personalize, producer, metrics = FakePersonalize(), FakeProducer(), Metrics()
    personalize.rejects = lambda r: r["itemId"] == "i7"
    fatal = [True]

    def second_half_is_fatal(arn: str, records: list[dict[str, str]]) -> None:
        if fatal[0] and records[0]["itemId"] == "i5":
            personalize.fail_next.append(client_error("AccessDeniedException", message="not allowed"))

    personalize.on_call = second_half_is_fatal
    pipeline = Pipeline(s, Sender(personalize, metrics, s.personalize.retry), producer, metrics)
    pipeline.start()
    try:
        for i in range(10):
            pipeline.ingest(item(f"i{i}", 1.0, i))
        await wait_until(lambda: pipeline.fatal is not None, timeout=5, what="the items dataset to be held")
        assert "AccessDeniedException" in str(pipeline.fatal)
        assert pipeline.tracker.to_commit() == {TP: 5}  # the accepted half, and nothing past it
        assert set(personalize.state[ITEMS_ARN]) == {f"i{i}" for i in range(5)}
        assert producer.sent == []
        fatal[0] = False
        await wait_until(lambda: pipeline.tracker.to_commit().get(TP) == 10, timeout=5, what="every item done")
        assert pipeline.fatal is None
        assert [producer.headers_of(n)["ingestor.source.offset"] for n in range(len(producer.sent))] == ["7"]
        assert set(personalize.state[ITEMS_ARN]) == {f"i{i}" for i in range(10)} - {"i7"}
    finally:
        await pipeline.stop()


async def test_a_held_dataset_whose_partitions_are_revoked_is_no_longer_held_here() -> None:
    """Nothing of it is left on this member to probe with: it would stay not ready for good. Whoever owns the
    partitions now meets the error (and holds the dataset) in its turn."""
    s = two_routes()
    personalize, metrics = FailingItems(), Metrics()
    pipeline = Pipeline(s, Sender(personalize, metrics, s.personalize.retry), FakeProducer(), metrics)
    pipeline.start()
    try:
        pipeline.ingest(item("i1", 1.0, 0))
        pipeline.ingest(user("u1", 0))
        await wait_until(lambda: pipeline.fatal is not None, timeout=5, what="the items dataset to be held")
        await pipeline.revoke({USERS_TP}, timeout_s=1.0)
        pipeline.forget({USERS_TP})
        assert pipeline.fatal is not None  # its records are still here
        await pipeline.revoke({TP}, timeout_s=1.0)
        pipeline.forget({TP})
        assert pipeline.fatal is None and pipeline.held_datasets == []
        assert metrics.datasets_held.labels("PutItems")._value.get() == 0
        pipeline.ingest(item("i2", 1.0, 0))  # assigned again: its next record is sent, and held again
        await wait_until(lambda: pipeline.fatal is not None, timeout=5, what="the items dataset to be held again")
        assert pipeline.tracker.to_commit() == {TP: 0}
    finally:
        await pipeline.stop()


def test_failed_probes_log_a_warning_at_most_every_ten_minutes_and_a_new_cause_at_error(caplog) -> None:
    from ingestor.errors import FatalRouteError
    from ingestor.pipeline import FATAL_REMINDER_S

    caplog.set_level("DEBUG", logger="ingestor.pipeline")
    s = two_routes(fatal_retry_s=60)
    metrics = Metrics()
    pipeline = Pipeline(s, Sender(FakePersonalize(), metrics, s.personalize.retry), FakeProducer(), metrics)
    ds = pipeline.datasets[0]
    missing = FatalRouteError(f"PutItems on {ITEMS_ARN} failed with ResourceNotFoundException")
    pipeline._held(ds, missing, 1000.0, probe=False)
    assert ds.resume_at == 1060.0
    pipeline._held(ds, missing, 1001.0, probe=False)  # another call of the same burst: nothing new
    for minute in range(1, 25):  # a probe a minute for 24 minutes
        pipeline._held(ds, missing, 1000.0 + 60 * minute, probe=True)
    assert ds.probes_failed == 24 and ds.resume_at == 1000.0 + 60 * 24 + 60
    denied = FatalRouteError(f"PutItems on {ITEMS_ARN} failed with AccessDeniedException")
    pipeline._held(ds, denied, 2500.0, probe=True)  # the dataset exists now, but access is denied
    assert ds.fatal is denied
    levels = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "ingestor.pipeline"]
    errors = [m for lvl, m in levels if lvl == "ERROR"]
    assert len(errors) == 2 and errors[0].startswith(f"fatal: {missing}; this dataset is held")
    assert errors[1] == f"fatal: {denied}; {ITEMS_ARN} stays held"
    warnings = [m for lvl, m in levels if lvl == "WARNING"]
    assert len(warnings) == 24 * 60 // FATAL_REMINDER_S  # at 10 and 20 minutes
    assert warnings[0].startswith(f"{ITEMS_ARN} still held after a fatal error, 10 probe call(s) failed in 600s")
    assert metrics.fatal_errors.labels("PutItems")._value.get() == 1
