"""The pipeline with Avro records against fakes: records wait for their writer schema in order, per partition,
uncommitted and never dead-lettered for a registry outage; an unknown id is dead-lettered at stage decode."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from fastavro import parse_schema

from ingestor.avro import encode
from ingestor.config import Settings
from ingestor.metrics import Metrics
from ingestor.model import SourceRecord, TopicPartition
from ingestor.pipeline import Pipeline
from ingestor.registry import RegisteredSchema, RegistryUnavailable, SchemaNotFound
from ingestor.sender import Sender
from tests.conftest import wait_until
from tests.fakes import FakePersonalize, FakeProducer

CONFIG = Path(__file__).parents[2] / "config"
ITEMS_ARN = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/ITEMS"
TOPIC = "catalog.items"
P0, P1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
V1 = {
    "type": "record",
    "name": "Value",
    "fields": [
        {"name": "ITEM_ID", "type": "string"},
        {"name": "PRICE", "type": "double"},
        {"name": "CREATION_TIMESTAMP", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ],
}
V2 = {**V1, "fields": [*V1["fields"], {"name": "IN_STOCK", "type": ["null", "boolean"], "default": None}]}


class GatedRegistry:
    """Answers schema fetches; ``down`` makes them fail (an outage) until it is cleared."""

    def __init__(self, schemas: dict[int, dict[str, Any]]) -> None:
        self.schemas = schemas
        self.down = False
        self.calls: list[int] = []

    async def schema(self, schema_id: int) -> RegisteredSchema:
        self.calls.append(schema_id)
        await asyncio.sleep(0)
        if self.down:
            raise RegistryUnavailable("schema registry http://registry: ClientConnectorError: refused")
        if schema_id not in self.schemas:
            raise SchemaNotFound(f"schema id {schema_id} is not in the schema registry (404, error 40403)")
        return RegisteredSchema(schema_id, json.dumps(self.schemas[schema_id]))


def settings(fmt: str = "avro") -> Settings:
    return Settings(
        kafka={"dead_letter_topic": "dlq"},
        personalize={"rate_limits": {"PutItems": 1000.0, "PutUsers": 1000.0}},
        routes=[
            {
                "topic": TOPIC,
                "kind": "items",
                "dataset_arn": ITEMS_ARN,
                "schema": CONFIG / "schemas/items.avsc",
                "format": fmt,
            }
        ],
        batching={"linger_ms": 5},
        schema_registry={"url": "http://registry:8081", "retry_base_delay_s": 0.01, "retry_max_delay_s": 0.02},
    )


def avro_item(sid: int, item_id: str, price: float, partition: int, offset: int, **extra: Any) -> SourceRecord:
    schema = V2 if sid == 2 else V1
    datum = {"ITEM_ID": item_id, "PRICE": price, "CREATION_TIMESTAMP": 1_700_000_000_000, **extra}
    value = encode(sid, parse_schema(json.loads(json.dumps(schema))), datum)
    return SourceRecord(TOPIC, partition, offset, item_id.encode(), value)


def json_item(item_id: str, price: float, partition: int, offset: int) -> SourceRecord:
    value = {"ITEM_ID": item_id, "PRICE": price, "CREATION_TIMESTAMP": 1_700_000_000}
    return SourceRecord(TOPIC, partition, offset, item_id.encode(), json.dumps(value).encode())


@pytest.fixture
async def harness():
    personalize, producer, registry = FakePersonalize(), FakeProducer(), GatedRegistry({1: V1, 2: V2})
    s = settings("auto")
    metrics = Metrics()
    pipeline = Pipeline(s, Sender(personalize, metrics, s.personalize.retry), producer, metrics, registry=registry)
    pipeline.start()
    yield pipeline, personalize, producer, registry
    await pipeline.stop()


def prices(personalize: FakePersonalize) -> dict[str, Any]:
    return {k: json.loads(v) for k, v in personalize.state.get(ITEMS_ARN, {}).items()}


async def test_records_wait_for_their_schema_in_order_while_other_partitions_flow(harness) -> None:
    pipeline, personalize, producer, registry = harness
    registry.down = True
    # Partition 0: an Avro v1 record (schema not cached, registry down), then a JSON update of the same id (must not
    # overtake it), then v2 records. Partition 1: JSON only, flows at once.
    pipeline.ingest(avro_item(1, "a", 1.0, 0, 0))
    pipeline.ingest(json_item("a", 2.0, 0, 1))
    pipeline.ingest(avro_item(2, "b", 3.0, 0, 2, IN_STOCK=True))
    for i in range(5):
        pipeline.ingest(json_item(f"p1-{i}", 9.0, 1, i))
    await wait_until(lambda: pipeline.tracker.to_commit().get(P1) == 5, timeout=5, what="partition 1 to commit")
    await wait_until(lambda: len(registry.calls) >= 3, timeout=5, what="fetches retried")
    assert pipeline.held.count == 3 and pipeline.buffered == 3  # held records count as buffered (backpressure)
    assert pipeline.tracker.to_commit().get(P0) == 0  # nothing of partition 0 is committed while it waits
    assert pipeline.registry_problem is not None and "refused" in pipeline.registry_problem
    assert set(prices(personalize)) == {f"p1-{i}" for i in range(5)}
    assert pipeline.metrics.waiting_for_schema._value.get() == 3

    registry.down = False  # the registry is back: the held records flow, in order
    await wait_until(lambda: pipeline.held.count == 0, timeout=5, what="the held records to be released")
    assert await pipeline.drain(5)
    assert producer.sent == []  # nothing dead-lettered for the outage
    state = prices(personalize)
    assert state["a"] == {"price": 2.0, "creationTimestamp": 1_700_000_000}  # the later JSON update won
    assert state["b"] == {"price": 3.0, "creationTimestamp": 1_700_000_000, "inStock": True}  # evolved schema
    assert pipeline.tracker.to_commit().get(P0) == 3
    assert pipeline.held.count == 0 and pipeline.registry_problem is None
    assert sorted(set(registry.calls)) == [1, 2]


async def test_an_unknown_id_or_garbage_is_dead_lettered_at_decode_with_the_schema_id(harness) -> None:
    pipeline, personalize, producer, _ = harness
    unknown = SourceRecord(TOPIC, 0, 0, b"x", b"\x00\x00\x00\x00\x63" + b"\x02x")
    garbage = SourceRecord(TOPIC, 0, 1, b"y", b"\x00\x00\x00\x00\x01" + b"\xff\xff\xff\xff\x0f")
    pipeline.ingest(unknown)
    pipeline.ingest(garbage)
    pipeline.ingest(avro_item(1, "ok", 1.0, 0, 2))
    assert await pipeline.drain(5)
    assert [r[2] for r in producer.sent] == [unknown.value, garbage.value]
    h0, h1 = producer.headers_of(0), producer.headers_of(1)
    assert (
        h0["ingestor.error.stage"] == "decode"
        and "schema id 99 is not in the schema registry" in h0["ingestor.error.reason"]
    )
    assert h1["ingestor.error.stage"] == "decode" and "does not decode with schema id 1" in h1["ingestor.error.reason"]
    assert "catalog.items/0@1" in h1["ingestor.error.reason"]
    assert set(prices(personalize)) == {"ok"}
    assert pipeline.tracker.to_commit() == {P0: 3}


async def test_a_drain_does_not_wait_for_records_held_by_an_unavailable_registry(harness) -> None:
    pipeline, personalize, _, registry = harness
    registry.down = True
    pipeline.ingest(json_item("a", 1.0, 1, 0))
    pipeline.ingest(avro_item(1, "b", 1.0, 0, 0))
    await wait_until(lambda: pipeline.schemas.failing is not None, timeout=5, what="the fetch to fail")
    assert not await pipeline.drain(5)  # returns at once: the rest waits for the registry
    assert pipeline.tracker.to_commit() == {P1: 1, P0: 0} and set(prices(personalize)) == {"a"}


async def test_revocation_drops_held_records_uncommitted(harness) -> None:
    pipeline, _, producer, registry = harness
    registry.down = True
    pipeline.ingest(avro_item(1, "a", 1.0, 0, 0))
    pipeline.ingest(json_item("b", 1.0, 0, 1))
    assert pipeline.held.count == 2
    await pipeline.revoke({P0}, timeout_s=1.0)
    assert pipeline.held.count == 0
    assert pipeline.tracker.to_commit() == {P0: 0}  # the next owner reads them again
    pipeline.forget({P0})
    registry.down = False
    await wait_until(lambda: not pipeline.schemas._fetching, timeout=5, what="the fetch to finish")
    assert pipeline.buffered == 0 and producer.sent == []


async def test_a_schema_that_fails_to_compile_unexpectedly_dead_letters_its_records_instead_of_holding_forever(
    harness,
) -> None:
    pipeline, personalize, producer, registry = harness
    real = registry.schema

    async def schema(schema_id: int) -> RegisteredSchema:
        if schema_id == 7:  # nested too deep for the JSON parser: RecursionError, not a ValueError
            return RegisteredSchema(7, "[" * 100_000 + "]" * 100_000)
        return await real(schema_id)

    registry.schema = schema
    bad = SourceRecord(TOPIC, 0, 0, b"x", b"\x00\x00\x00\x00\x07" + b"\x02x")
    pipeline.ingest(bad)
    pipeline.ingest(json_item("after", 1.0, 0, 1))
    assert await pipeline.drain(5)
    assert [r[2] for r in producer.sent] == [bad.value]
    assert "schema id 7" in producer.headers_of(0)["ingestor.error.reason"]
    assert set(prices(personalize)) == {"after"} and pipeline.held.count == 0
    assert pipeline.failure is None
