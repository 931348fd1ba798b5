"""Property-based fuzzing of the record path: hostile keys and values (random bytes, deep JSON, huge strings, wrong
types, unicode, every input shape) followed by a valid record. Each fuzzed record is dead-lettered or delivered (or
skipped as a delete), the worker never crashes, and the valid record behind them still flows and is committed.

The properties run the real Pipeline against the in-memory fakes (fast); one smoke run sends a fixed hostile set
through the real broker and the local endpoint with the whole service.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka import TopicPartition as KafkaTP
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from ingestor.app import EXIT_OK, Service
from ingestor.codec import decode
from ingestor.config import Settings
from ingestor.deadletter import H_OFFSET, H_TOPIC
from ingestor.errors import RecordError
from ingestor.kafka_tools import create_topics
from ingestor.metrics import Metrics
from ingestor.model import Op, SourceRecord, TopicPartition
from ingestor.pipeline import Pipeline
from ingestor.sender import Sender
from tests.chaos.harness import CONFIG, ITEMS_ARN, USERS_ARN, GroupOffsets, caught_up, read_dlq
from tests.conftest import wait_until
from tests.fakes import FakePersonalize, FakeProducer

ITEMS, USERS = "catalog.items", "crm.users"
ROUTES = [
    {"topic": ITEMS, "kind": "items", "dataset_arn": ITEMS_ARN, "schema": CONFIG / "schemas/items.avsc"},
    {"topic": USERS, "kind": "users", "dataset_arn": USERS_ARN, "schema": CONFIG / "schemas/users.avsc"},
]
SETTINGS = Settings(
    kafka={"dead_letter_topic": "dlq"},
    personalize={
        "rate_limits": {"PutItems": 10_000.0, "PutUsers": 10_000.0},
        "retry": {"base_delay_s": 0.001, "max_delay_s": 0.01},
    },
    routes=ROUTES,
    batching={"linger_ms": 1},
)
SCHEMAS = {r.topic: r.load_schema() for r in SETTINGS.routes}
SENTINEL = "sentinel-ok"  # the valid record's id: the fuzzed ids never take it (see _ids)

# ---------------------------------------------------------------------- strategies

_ids = st.one_of(
    st.text(max_size=12),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=200, max_size=300),  # over the 256-character limit
    st.integers(-(2**70), 2**70),
    st.sampled_from(["i1", "i2", "u1", "item-0", " ", "\u0000", "\ud7ff", "🦄", "1.5", "true", "null"]),
).filter(lambda v: v != SENTINEL)
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=20)
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
_columns = st.sampled_from(
    ["ITEM_ID", "item_id", "itemId", "USER_ID", "userId", "PRICE", "price", "GENRES", "NUMBER_OF_RATINGS",
     "IN_STOCK", "DESCRIPTION", "CREATION_TIMESTAMP", "creationTimestamp", "AGE", "GENDER", "MEMBERSHIP", "COLOR"]
)  # fmt: skip
_good_values = {
    "PRICE": st.floats(0, 1e6, allow_nan=False),
    "GENRES": st.sampled_from(["drama", "a|b", "x" * 1001, ""]),
    "NUMBER_OF_RATINGS": st.integers(-(2**40), 2**40),
    "IN_STOCK": st.booleans(),
    "DESCRIPTION": st.text(max_size=30),
    "CREATION_TIMESTAMP": st.integers(0, 2**64),
    "AGE": st.integers(-5, 2**33),
    "GENDER": st.sampled_from(["f", "m", "x"]),
    "MEMBERSHIP": st.sampled_from(["gold", "free", ""]),
}


@st.composite
def _rows(draw: st.DrawFn) -> dict[str, Any]:
    """A row that is often almost right: mostly well-typed known columns, some wrong types and unknown columns."""
    row: dict[str, Any] = {}
    if draw(st.booleans()):
        row[draw(st.sampled_from(["ITEM_ID", "USER_ID", "item_id", "userId"]))] = draw(_ids)
    for name, values in _good_values.items():
        if draw(st.integers(0, 3)) > 0:
            row[name] = draw(values | _json) if draw(st.integers(0, 4)) == 0 else draw(values)
    for _ in range(draw(st.integers(0, 2))):
        row[draw(_columns | st.text(max_size=8))] = draw(_json)
    return row


def _deep(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    if kind == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    inner = json.dumps(json.loads(_deep(min(depth, 900), "object")))  # deep JSON inside properties
    return json.dumps({"itemId": "deep", "properties": inner}).encode()


_deep_values = st.builds(_deep, st.integers(1, 5000), st.sampled_from(["list", "object", "properties"]))
_huge_values = st.builds(
    lambda n, field, rid: json.dumps(
        {"ITEM_ID": rid, "PRICE": 1.0, "CREATION_TIMESTAMP": 1, field: "é" * n}, ensure_ascii=False
    ).encode(),
    st.integers(1_000, 400_000),
    st.sampled_from(["DESCRIPTION", "GENRES", "NOPE"]),
    _ids,
)


@st.composite
def _shaped(draw: st.DrawFn) -> bytes:
    """A row in one of the accepted shapes (flat, API, Debezium, Connect-wrapped), often subtly wrong."""
    row = draw(_rows())
    shape = draw(st.sampled_from(["flat", "api", "api-str", "debezium", "connect", "anything"]))
    value: Any
    if shape == "flat":
        value = row
    elif shape in ("api", "api-str"):
        props = {k: v for k, v in row.items() if k not in ("ITEM_ID", "USER_ID", "item_id", "userId")}
        value = {draw(st.sampled_from(["itemId", "userId", "ITEM_ID"])): draw(_ids)}
        if draw(st.booleans()):
            value["properties"] = json.dumps(props) if shape == "api-str" else props
    elif shape == "debezium":
        op = draw(st.sampled_from(["c", "u", "r", "d"]) | _json)
        value = {"op": op, "before": draw(st.none() | _rows() | _json), "after": row if draw(st.booleans()) else None}
    elif shape == "connect":  # a wrapper (Kafka Connect's, or the schema stripped) around a row or anything
        payload = row if draw(st.booleans()) else draw(_json)
        value = {"payload": payload} if draw(st.booleans()) else {"schema": draw(_json), "payload": payload}
    else:
        value = draw(_json)
    text = json.dumps(value, ensure_ascii=draw(st.booleans()))
    return text.encode("utf-8", "surrogatepass")  # lone surrogates from st.text become invalid UTF-8


_values = st.one_of(
    st.none(),  # a tombstone
    st.binary(max_size=64),
    _shaped(),
    _deep_values,
    _huge_values,
    st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
)
_keys = st.one_of(
    st.none(),
    st.binary(max_size=24),
    _ids.map(lambda v: str(v).encode("utf-8", "surrogatepass")),
    _json.map(lambda v: json.dumps(v).encode()),
)


@st.composite
def _nearly_valid(draw: st.DrawFn) -> tuple[str, bytes | None, bytes | None]:
    """A well-formed record of a few hot ids in any accepted shape (often delivered), sometimes with one bad field."""
    topic = draw(st.sampled_from([ITEMS, USERS]))
    rid = draw(st.sampled_from(["a", "b", "ключ", "🦄", "x" * 256]))
    if topic == ITEMS:
        row: dict[str, Any] = {"ITEM_ID": rid, "PRICE": draw(_good_values["PRICE"]), "CREATION_TIMESTAMP": 1}
        optional = ["GENRES", "NUMBER_OF_RATINGS", "IN_STOCK", "DESCRIPTION"]
        id_field, id_key = "ITEM_ID", "itemId"
    else:
        row = {"USER_ID": rid, "MEMBERSHIP": draw(_good_values["MEMBERSHIP"])}
        optional = ["AGE", "GENDER"]
        id_field, id_key = "USER_ID", "userId"
    for name in optional:
        if draw(st.booleans()):
            row[name] = draw(_good_values[name])
    if draw(st.integers(0, 5)) == 0:
        row[draw(_columns)] = draw(_json)
    shape = draw(st.sampled_from(["flat", "api", "debezium", "keyed"]))
    value: Any = row
    if shape == "api":
        props = {k[0].lower() + k.title().replace("_", "")[1:]: v for k, v in row.items() if k != id_field}
        value = {id_key: rid, "properties": json.dumps(props) if draw(st.booleans()) else props}
    elif shape == "debezium":
        value = {"before": None, "after": row, "op": draw(st.sampled_from("cur")), "source": {"db": "shop"}}
    elif shape == "keyed":  # the id only in the key
        value = {k: v for k, v in row.items() if k != id_field}
    wrapper = draw(st.sampled_from(["none", "none", "schema", "null schema", "payload only"]))
    if wrapper == "schema":  # Kafka Connect's JSON converter with schemas
        value = {"schema": {"type": "struct"}, "payload": value}
    elif wrapper == "null schema":
        value = {"schema": None, "payload": value}
    elif wrapper == "payload only":  # the schema stripped
        value = {"payload": value}
    key = draw(st.sampled_from([rid, json.dumps(rid), json.dumps({id_field: rid})])).encode()
    return topic, key, json.dumps(value).encode()


_records = st.lists(
    st.tuples(st.sampled_from([ITEMS, USERS]), _keys, _values) | _nearly_valid(), min_size=1, max_size=10
)


# ---------------------------------------------------------------------- the oracle


def expected_outcome(rec: SourceRecord) -> tuple[str, str | None, dict[str, str] | None]:
    """("dlq" | "delete" | "upsert", id, API record) as the codec and schema define them."""
    schema = SCHEMAS[rec.topic]
    try:
        change = decode(rec, schema.kind)
        if change.op is Op.DELETE:
            return "delete", change.record_id, None
        return "upsert", change.record_id, schema.build_record(change.record_id, change.fields)
    except RecordError:
        return "dlq", None, None


def valid_item(offset: int) -> SourceRecord:
    value = {"ITEM_ID": SENTINEL, "PRICE": 9.5, "CREATION_TIMESTAMP": 1_700_000_000}
    return SourceRecord(ITEMS, 0, offset, SENTINEL.encode(), json.dumps(value).encode())


# ---------------------------------------------------------------------- the property, against the fakes


async def _run_fuzzed(records: list[tuple[str, bytes | None, bytes | None]]) -> None:
    personalize, producer = FakePersonalize(), FakeProducer()
    metrics = Metrics()
    pipeline = Pipeline(SETTINGS, Sender(personalize, metrics, SETTINGS.personalize.retry), producer, metrics)
    pipeline.start()
    try:
        # One partition per topic; the valid record comes last on the items partition.
        offsets = {ITEMS: 0, USERS: 0}
        fed: list[SourceRecord] = []
        for topic, key, value in records:
            rec = SourceRecord(topic, 0, offsets[topic], key, value)
            offsets[topic] += 1
            fed.append(rec)
            pipeline.ingest(rec)
        pipeline.ingest(valid_item(offsets[ITEMS]))
        offsets[ITEMS] += 1
        assert await pipeline.drain(10), f"not drained: {pipeline.tracker.pending_by_partition()}"
        assert pipeline.failure is None, repr(pipeline.failure)
        assert pipeline.fatal is None

        # Everything is done, so all of it commits — including the valid record behind the fuzz.
        want = {TopicPartition(t, 0): n for t, n in offsets.items() if n}
        assert pipeline.tracker.to_commit() == want
        assert json.loads(personalize.state[ITEMS_ARN][SENTINEL]) == {"price": 9.5, "creationTimestamp": 1_700_000_000}

        # Each fuzzed record: dead-lettered, or delivered (the last upsert of each id is what the endpoint holds).
        dead = {(h[H_TOPIC], int(h[H_OFFSET])) for h in (dict((k, v.decode()) for k, v in s[3]) for s in producer.sent)}
        assert all(s[0] == "dlq" for s in producer.sent)
        last: dict[tuple[str, str], dict[str, str]] = {}
        for rec in fed:
            outcome, rid, request = expected_outcome(rec)
            in_dlq = (rec.topic, rec.offset) in dead
            if outcome == "dlq":
                assert in_dlq, f"{rec.where} (key {rec.key!r}) should be dead-lettered"
            else:
                assert not in_dlq, f"{rec.where} is {outcome} of {rid!r} but was dead-lettered"
            if outcome == "upsert" and request is not None and rid is not None:
                last[(rec.topic, rid)] = request
        for (topic, rid), request in last.items():
            arn = ITEMS_ARN if topic == ITEMS else USERS_ARN
            assert personalize.state.get(arn, {}).get(rid) == request.get("properties", ""), rid
        assert len(producer.sent) == len(dead), "a record was dead-lettered twice"
    finally:
        await pipeline.stop()


@settings(
    max_examples=60,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
@given(_records)
def test_fuzzed_records_never_block_the_valid_one(records: list[tuple[str, bytes | None, bytes | None]]) -> None:
    asyncio.run(_run_fuzzed(records))


# ---------------------------------------------------------------------- a smoke run on the real broker


def hostile_set(seed: int) -> list[tuple[str, bytes | None, bytes | None]]:
    rng = random.Random(seed)
    item = {"ITEM_ID": "i-ok", "PRICE": 1.5, "CREATION_TIMESTAMP": 1}
    return [
        (ITEMS, b"k", b"{not json"),
        (ITEMS, None, bytes(rng.randrange(256) for _ in range(64))),
        (ITEMS, b"\xff\xfe", b'{"PRICE": 1.0, "CREATION_TIMESTAMP": 1}'),  # the id would come from a bad key
        (ITEMS, b"deep", _deep(3000, "list")),
        (ITEMS, b"deep", _deep(2000, "object")),
        (ITEMS, b"deep", _deep(800, "properties")),
        (ITEMS, b"huge", json.dumps({**item, "DESCRIPTION": "x" * 300_000}).encode()),
        (ITEMS, b"huge-ok", json.dumps({**item, "ITEM_ID": "huge-ok", "DESCRIPTION": "é" * 1000}).encode()),
        (ITEMS, b"t", json.dumps({**item, "PRICE": "1.5"}).encode()),
        (ITEMS, b"t", json.dumps({**item, "PRICE": [1]}).encode()),
        (ITEMS, b"t", json.dumps({**item, "ITEM_ID": 1.5}).encode()),
        (ITEMS, b"t", json.dumps({**item, "ITEM_ID": "x" * 300}).encode()),
        (ITEMS, b"t", json.dumps({**item, "CREATION_TIMESTAMP": 2**70}).encode()),
        (ITEMS, "ключ-🦄".encode(), json.dumps({**item, "ITEM_ID": "ключ-🦄", "GENRES": "драма|🎬"}).encode()),
        (ITEMS, b"lone", b'{"ITEM_ID": "\\ud800", "PRICE": 1, "CREATION_TIMESTAMP": 1}'),
        (ITEMS, b"nul", json.dumps({**item, "ITEM_ID": "a\u0000b"}).encode()),
        (ITEMS, b"dbz", json.dumps({"op": "x", "after": item}).encode()),
        (ITEMS, b"dbz", json.dumps({"op": "d", "before": None}).encode()),
        (ITEMS, b"wrap", json.dumps({"schema": {}, "payload": [1, 2]}).encode()),
        (ITEMS, b"wrap", json.dumps({"payload": "not a row"}).encode()),
        (ITEMS, b"wrap", json.dumps({"payload": {"op": "u", "after": {**item, "ITEM_ID": "i-wrap"}}}).encode()),
        (ITEMS, b"wrap", json.dumps({"schema": None, "payload": {**item, "ITEM_ID": "i-null-schema"}}).encode()),
        (ITEMS, b"", None),  # a tombstone with an empty key
        (USERS, b"u", json.dumps({"USER_ID": "u-1", "AGE": "old", "MEMBERSHIP": "gold"}).encode()),
        (USERS, b"u", json.dumps({"userId": "u-2", "properties": '{"membership": "gold", "age": 1e400}'}).encode()),
        (USERS, b"u", json.dumps({"userId": "u-3", "properties": {"membership": ["gold"]}}).encode()),
        (USERS, b"", b""),
    ]


# Records too large for the DLQ producer (1 MB) even once their value is truncated: the key or the headers are huge.
HUGE_KEY = (USERS, b"k" * 1_048_600, b'{"MEMBERSHIP": "gold"}', [])  # the id would be the (far too long) key
HUGE_HEADERS = (USERS, b"u-4", b'{"MEMBERSHIP": 1}', [("trace", b"t" * 1_048_600), ("small", b"s")])


@pytest.mark.integration
@pytest.mark.timeout(90)
async def test_hostile_records_on_the_real_broker(broker, unique, emulator, seed) -> None:
    suffix = unique("fuzz")
    topics = {ITEMS: f"{ITEMS}-{suffix}", USERS: f"{USERS}-{suffix}"}
    dlq = f"dlq-{suffix}"
    bootstrap = broker.bootstrap_servers
    await create_topics(bootstrap, {topics[ITEMS]: 1, topics[USERS]: 1, dlq: 1})
    records = [
        *((t, k, v, []) for t, k, v in hostile_set(seed)),
        HUGE_KEY,
        HUGE_HEADERS,
        (ITEMS, SENTINEL.encode(), valid_item(0).value, []),
    ]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        metas = [await (await producer.send(topics[t], key=k, value=v, headers=h)) for t, k, v, h in records]
    finally:
        await producer.stop()
    placed = [  # under the route names the oracle knows
        SourceRecord(t, m.partition, m.offset, k, v, tuple(h)) for (t, k, v, h), m in zip(records, metas, strict=True)
    ]
    ends = {KafkaTP(m.topic, m.partition): m.offset for m in metas}

    settings_ = Settings.load(
        CONFIG / "ingestor.yaml",
        kafka={
            "bootstrap_servers": bootstrap,
            "group_id": f"ingestor-{suffix}",
            "dead_letter_topic": dlq,
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 500,
            "commit_interval_s": 0.2,
        },
        personalize={"endpoint_url": emulator.url, "aws_access_key_id": "t", "aws_secret_access_key": "t"},
        routes=[{**r, "topic": topics[r["topic"]]} for r in ROUTES],
        metrics={"host": "127.0.0.1", "port": 0},
    )
    service = Service(settings_, registry=CollectorRegistry())
    run = asyncio.create_task(service.run())
    try:
        async with GroupOffsets(bootstrap, f"ingestor-{suffix}") as offsets:

            async def committed_all() -> bool:
                assert not run.done(), run
                return caught_up(await offsets.read(ends), ends)

            await wait_until(committed_all, timeout=60, what="every record committed")
        assert service.pipeline is not None and service.pipeline.failure is None
    finally:
        service.stop_requested.set()
        assert await asyncio.wait_for(run, 30) == EXIT_OK

    stored = {ITEMS: await emulator.client.records(ITEMS_ARN), USERS: await emulator.client.records(USERS_ARN)}
    assert stored[ITEMS][SENTINEL] == {"price": 9.5, "creationTimestamp": 1_700_000_000}
    for wrapped_id in ("i-wrap", "i-null-schema"):  # wrapped values are delivered, not dead-lettered
        assert stored[ITEMS][wrapped_id] == {"price": 1.5, "creationTimestamp": 1}, wrapped_id
    dead = {(d.topic, d.offset): d for d in await read_dlq(bootstrap, dlq)}
    for rec in placed:
        outcome, rid, _ = expected_outcome(rec)
        letter = dead.get((topics[rec.topic], rec.offset))
        if outcome == "dlq":
            assert letter is not None, f"{rec.where} (key {rec.key!r}) should be in the DLQ"
        elif outcome == "delete":
            assert letter is None, f"{rec.where} is a delete but was dead-lettered: {letter}"
        elif letter is not None:  # the endpoint may still reject what the ingestor's checks let through
            assert letter.stage == "api", letter
        else:
            assert rid in stored[rec.topic], f"{rec.where} ({rid!r}) neither delivered nor dead-lettered"
    assert {d.stage for d in dead.values()} >= {"decode", "validate"}
    # Too large for the DLQ even with the value truncated: still dead-lettered, with what was cut said in headers.
    huge_key, huge_headers = (dead[(topics[USERS], p.offset)] for p in placed[-3:-1])
    assert huge_key.headers["ingestor.key.truncated"] == str(len(HUGE_KEY[1]))
    assert huge_headers.headers["ingestor.source.headers.dropped"] == "2"
    assert "trace" not in huge_headers.headers
