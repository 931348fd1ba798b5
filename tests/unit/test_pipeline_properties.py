"""Property: whatever the stream, rejections and timing, Personalize ends with the last acceptable record per id.

Random streams of updates over a few ids in every input shape (some records unacceptable to the API), random call
latencies so calls complete out of order, several calls in flight. Checked: no id is ever in two calls at once; the
final state per id is its last acceptable record; only unacceptable records are dead-lettered; everything is
committed.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestor.config import Settings
from ingestor.metrics import Metrics
from ingestor.model import SourceRecord, TopicPartition
from ingestor.pipeline import Pipeline
from ingestor.sender import Sender
from tests.fakes import FakeProducer, client_error

CONFIG = Path(__file__).parents[2] / "config"
ARN = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/ITEMS"


class RacyPersonalize:
    """Accepts calls after a random delay; rejects a call holding a record whose price is negative (as a schema the
    endpoint had changed would); fails the test if one id is in two calls at once."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.state: dict[str, dict[str, Any]] = {}
        self.in_flight: set[str] = set()
        self.overlaps: list[str] = []

    async def put_items(self, *, datasetArn: str, items: list[dict[str, str]]) -> dict[str, Any]:
        ids = [r["itemId"] for r in items]
        self.overlaps += [i for i in ids if i in self.in_flight]
        self.in_flight |= set(ids)
        try:
            await asyncio.sleep(self.rng.random() * 0.003)
            props = [json.loads(r["properties"]) for r in items]
            if any(p["price"] < 0 for p in props):
                raise client_error("InvalidInputException", message="1 records do not match")
            for rid, p in zip(ids, props, strict=True):
                self.state[rid] = p
            return {}
        finally:
            self.in_flight -= set(ids)

    put_users = put_items


SHAPES = ("flat", "api", "api, properties string", "debezium")
WRAPPERS = ("none", "schema", "null schema", "payload only")


def _shaped(shape: str, wrapper: str, record_id: str, price: float) -> dict[str, Any]:
    """The same update in each input shape the README promises, bare or in each wrapper the codec removes."""
    row = {"ITEM_ID": record_id, "PRICE": price, "CREATION_TIMESTAMP": 1}
    props = {"price": price, "creationTimestamp": 1}
    value: dict[str, Any] = {
        "flat": row,
        "api": {"itemId": record_id, "properties": props},
        "api, properties string": {"itemId": record_id, "properties": json.dumps(props)},
        "debezium": {"before": None, "after": row, "op": "u", "source": {"db": "shop"}, "ts_ms": 1},
    }[shape]
    if wrapper == "schema":
        return {"schema": {"type": "struct"}, "payload": value}
    if wrapper == "null schema":
        return {"schema": None, "payload": value}
    if wrapper == "payload only":
        return {"payload": value}
    return value


Update = tuple[int, bool, str, str]  # (id, acceptable, shape, wrapper)
updates = st.lists(
    st.tuples(st.integers(0, 5), st.booleans(), st.sampled_from(SHAPES), st.sampled_from(WRAPPERS)),
    min_size=1,
    max_size=60,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=updates, seed=st.integers(0, 2**16))
def test_last_acceptable_record_wins(stream: list[Update], seed: int) -> None:
    asyncio.run(_scenario(stream, seed))


async def _scenario(stream: list[Update], seed: int) -> None:
    s = Settings(
        kafka={"dead_letter_topic": "dlq"},
        personalize={"rate_limits": {"PutItems": 10_000.0}, "max_in_flight": 4, "retry": {"base_delay_s": 0.001}},
        routes=[{"topic": "t", "kind": "items", "dataset_arn": ARN, "schema": CONFIG / "schemas/items.avsc"}],
        batching={"linger_ms": 1, "max_records": 3},
    )
    api, producer, metrics = RacyPersonalize(random.Random(seed)), FakeProducer(), Metrics()
    pipeline = Pipeline(s, Sender(api, metrics, s.personalize.retry), producer, metrics)
    pipeline.start()
    expected: dict[str, float] = {}
    bad_offsets: set[tuple[int, int]] = set()
    offsets = [0, 0, 0, 0]
    rng = random.Random(seed)
    try:
        for n, (rid, acceptable, shape, wrapper) in enumerate(stream):
            record_id = f"i{rid}"
            partition = rid % 4  # one id, one partition (keyed), as Kafka producers do
            price = float(n) if acceptable else -1.0
            value = _shaped(shape, wrapper, record_id, price)
            pipeline.ingest(SourceRecord("t", partition, offsets[partition], None, json.dumps(value).encode()))
            if acceptable:
                expected[record_id] = price
            else:
                bad_offsets.add((partition, offsets[partition]))
            offsets[partition] += 1
            if rng.random() < 0.3:
                await asyncio.sleep(rng.random() * 0.002)  # let calls start and finish in between
        assert await pipeline.drain(30)
    finally:
        await pipeline.stop()
    assert api.overlaps == []
    assert {rid: p["price"] for rid, p in api.state.items()} == expected
    dead = {
        (int(h["ingestor.source.partition"]), int(h["ingestor.source.offset"]))
        for h in (producer.headers_of(i) for i in range(len(producer.sent)))
    }
    assert dead <= bad_offsets  # no shape is dead-lettered at decode
    assert pipeline.tracker.to_commit() == {TopicPartition("t", p): o for p, o in enumerate(offsets) if o}
