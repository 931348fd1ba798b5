"""A realistic change stream of items and users (and, when asked, interaction events) for the demo, the tests and the
benchmarks.

Every generated event knows whether it is valid, so a run can be checked from the outside: the endpoint's final
state must equal the last valid event per id, and the dead-letter topic must hold exactly the invalid ones.
Shapes are mixed (API-shaped, flat column names, Debezium envelopes bare or in each wrapper, see ``WRAPPERS``); a few
ids are hot (updated very often).
With ``StreamSpec.avro`` (see ``register_avro_schemas``) the values are Avro in the Confluent wire format instead:
plain rows of two schema versions (v2 adds an optional column), and Debezium envelopes with Avro keys, decimals and
timestamps in microseconds; the bad ones are garbage after the magic byte, an unknown schema id, an extra column
and a missing required one.
Interaction events (``StreamSpec.events_share``, off by default) each count: a correct run delivers every valid one.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ingestor.schema import camel_case

ITEMS_TOPIC = "catalog.items"
USERS_TOPIC = "crm.users"
EVENTS_TOPIC = "shop.events"
EVENT_TYPES = ["view", "click", "add-to-cart", "purchase"]
DEVICES = ["ios", "android", "web"]
GENRES = ["action", "comedy", "drama", "horror", "romance", "sci-fi", "documentary", "kids"]
MEMBERSHIPS = ["free", "silver", "gold", "platinum"]


@dataclass(frozen=True, slots=True)
class Event:
    topic: str
    key: bytes
    value: bytes | None
    record_id: str
    expected: dict[str, Any] | None  # the properties Personalize must hold if this is the last valid event; None = bad
    problem: str = ""  # why it is invalid

    @property
    def valid(self) -> bool:
        return self.expected is not None


@dataclass
class StreamSpec:
    items: int = 500
    users: int = 200
    hot_share: float = 0.3  # share of events that hit one of the few hot ids
    bad_share: float = 0.03
    seed: int = 7
    avro: AvroSchemas | None = None  # set: every value is Avro (Confluent wire format) with these writer schemas
    events_share: float = 0.0  # share of interaction events (EVENTS_TOPIC); 0 leaves the item/user stream unchanged


def _item(rng: random.Random, item_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Returns (flat row with column names, expected camelCase properties)."""
    price = round(rng.uniform(1, 200), 2)
    genres = "|".join(rng.sample(GENRES, rng.randint(1, 3)))
    ratings = rng.randint(0, 5000)
    created = 1_700_000_000 + rng.randint(0, 10_000_000)
    row: dict[str, Any] = {
        "ITEM_ID": item_id,
        "PRICE": price,
        "GENRES": genres,
        "NUMBER_OF_RATINGS": ratings,
        "CREATION_TIMESTAMP": created,
    }
    expected = {"price": price, "genres": genres, "numberOfRatings": ratings, "creationTimestamp": created}
    if rng.random() < 0.3:
        row["IN_STOCK"] = expected["inStock"] = rng.random() < 0.8
    return row, expected


def _user(rng: random.Random, user_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    age = rng.randint(18, 90)
    membership = rng.choice(MEMBERSHIPS)
    row: dict[str, Any] = {"USER_ID": user_id, "AGE": age, "MEMBERSHIP": membership}
    expected: dict[str, Any] = {"age": age, "membership": membership}
    if rng.random() < 0.5:
        row["GENDER"] = expected["gender"] = rng.choice(["f", "m", "x"])
    return row, expected


def _shape(rng: random.Random, row: dict[str, Any], id_field: str, id_key: str) -> dict[str, Any]:
    """Render a flat row as one of the accepted input shapes."""
    roll = rng.random()
    if roll < 0.4:
        return row
    props = {k: v for k, v in row.items() if k != id_field}
    if roll < 0.7:
        camel = {camel_case(k): v for k, v in props.items()}
        return {id_key: row[id_field], "properties": json.dumps(camel) if rng.random() < 0.5 else camel}
    envelope = {"before": None, "after": row, "op": rng.choice("cur"), "ts_ms": 1_700_000_000_000}
    return wrap(rng.choice(WRAPPERS), envelope)


# How a Debezium envelope arrives: bare (JSON converter without schemas), in Kafka Connect's wrapper with a schema or
# a null schema, or wrapped in a lone payload (the schema stripped). The codec accepts each.
WRAPPERS = ("none", "schema", "null schema", "payload only")


def wrap(wrapper: str, value: dict[str, Any]) -> dict[str, Any]:
    if wrapper == "schema":
        return {"schema": {"type": "struct", "optional": False, "name": "shop.Envelope"}, "payload": value}
    if wrapper == "null schema":
        return {"schema": None, "payload": value}
    if wrapper == "payload only":
        return {"payload": value}
    return value


def _bad(rng: random.Random, topic: str, record_id: str, good: dict[str, Any]) -> tuple[bytes, str]:
    kind = rng.randrange(5)
    if kind == 0:
        return b'{"broken json": ', "not valid JSON"
    if kind == 1:
        if topic == ITEMS_TOPIC:
            return json.dumps({**good, "PRICE": "expensive"}).encode(), "PRICE is not a number"
        return json.dumps({**good, "AGE": "old"}).encode(), "AGE is not an integer"
    if kind == 2:
        return json.dumps({**good, "COLOR": "red"}).encode(), "unknown field COLOR"
    if kind == 3:
        missing = "CREATION_TIMESTAMP" if topic == ITEMS_TOPIC else "MEMBERSHIP"
        return json.dumps({k: v for k, v in good.items() if k != missing}).encode(), f"{missing} missing"
    return json.dumps([record_id, "not an object"]).encode(), "value is a list"


def generate(count: int, spec: StreamSpec | None = None) -> Iterator[Event]:
    spec = spec or StreamSpec()
    rng = random.Random(spec.seed)
    hot_items = [f"item-{i}" for i in range(min(5, spec.items))]
    hot_users = [f"user-{i}" for i in range(min(3, spec.users))]
    for n in range(count):
        if spec.events_share and rng.random() < spec.events_share:
            yield _interaction(rng, spec, n)
            continue
        is_item = rng.random() < 0.65
        topic = ITEMS_TOPIC if is_item else USERS_TOPIC
        hot = rng.random() < spec.hot_share
        if is_item:
            record_id = rng.choice(hot_items) if hot else f"item-{rng.randrange(spec.items)}"
            row, expected = _item(rng, record_id)
            id_field, id_key = "ITEM_ID", "itemId"
        else:
            record_id = rng.choice(hot_users) if hot else f"user-{rng.randrange(spec.users)}"
            row, expected = _user(rng, record_id)
            id_field, id_key = "USER_ID", "userId"
        if rng.random() < spec.bad_share:
            if spec.avro is not None:
                value, problem = _avro_bad(rng, spec.avro, topic, row)
                key = spec.avro.encode("items-key", {"ITEM_ID": record_id}) if is_item else record_id.encode()
                yield Event(topic, key, value, record_id, None, problem)
                continue
            value, problem = _bad(rng, topic, record_id, row)
            yield Event(topic, record_id.encode(), value, record_id, None, problem)
            continue
        if spec.avro is not None:
            key, value, expected = _avro_value(rng, spec.avro, topic, row, expected)
            yield Event(topic, key, value, record_id, expected)
            continue
        value = json.dumps(_shape(rng, row, id_field, id_key), separators=(",", ":")).encode()
        yield Event(topic, record_id.encode(), value, record_id, expected)


def _interaction(rng: random.Random, spec: StreamSpec, n: int) -> Event:
    """One interaction event, keyed by its user; ``expected`` is what the endpoint stores (bar ids and seq)."""
    user_id = f"user-{rng.randrange(spec.users)}"
    item_id = f"item-{rng.randrange(spec.items)}"
    event_type, sent_at = rng.choice(EVENT_TYPES), 1_700_000_000 + n
    row: dict[str, Any] = {"USER_ID": user_id, "ITEM_ID": item_id, "EVENT_TYPE": event_type, "TIMESTAMP": sent_at}
    expected: dict[str, Any] = {"userId": user_id, "itemId": item_id, "eventType": event_type, "sentAt": sent_at}
    if event_type == "purchase":
        row["EVENT_VALUE"] = expected["eventValue"] = float(rng.randint(1, 200))
    if rng.random() < 0.5:
        row["DEVICE"] = rng.choice(DEVICES)
        expected["properties"] = {"device": row["DEVICE"]}
    if rng.random() < spec.bad_share:
        bad = rng.randrange(3)
        if bad == 0:
            del row["TIMESTAMP"]
            return Event(EVENTS_TOPIC, user_id.encode(), json.dumps(row).encode(), user_id, None, "TIMESTAMP missing")
        if bad == 1:
            row["COLOR"] = "red"
            return Event(EVENTS_TOPIC, user_id.encode(), json.dumps(row).encode(), user_id, None, "unknown field")
        return Event(EVENTS_TOPIC, user_id.encode(), b'{"USER_ID": ', user_id, None, "not valid JSON")
    roll = rng.random()
    if roll < 0.5:
        value: dict[str, Any] = row
    elif roll < 0.8:
        event = {"eventType": event_type, "sentAt": sent_at, "itemId": item_id}
        if "EVENT_VALUE" in row:
            event["eventValue"] = row["EVENT_VALUE"]
        if "DEVICE" in row:
            event["properties"] = json.dumps({"device": row["DEVICE"]})
        value = {"userId": user_id, "sessionId": user_id, "eventList": [event]}
    else:
        value = {"before": None, "after": row, "op": "c", "ts_ms": 1_700_000_000_000}
    return Event(EVENTS_TOPIC, user_id.encode(), json.dumps(value, separators=(",", ":")).encode(), user_id, expected)


@dataclass
class Expectation:
    """What a correct run leaves behind: the last valid event per (topic, id), and the invalid events."""

    latest: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # topic → id → properties
    invalid: list[Event] = field(default_factory=list)
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # interactions: topic → every valid event

    def add(self, event: Event) -> None:
        if event.expected is None:
            self.invalid.append(event)
        elif event.topic == EVENTS_TOPIC:
            self.events.setdefault(event.topic, []).append(event.expected)
        else:
            self.latest.setdefault(event.topic, {})[event.record_id] = event.expected

    def mismatches(self, topic: str, actual: dict[str, dict[str, Any]]) -> list[str]:
        """Ids whose stored properties differ from the last valid event (empty when the run is correct)."""
        want = self.latest.get(topic, {})
        out = [f"{rid}: missing" for rid in want if rid not in actual]
        out += [f"{rid}: unexpected" for rid in actual if rid not in want]
        out += [
            f"{rid}: has {actual[rid]}, want {props}"
            for rid, props in want.items()
            if rid in actual and not _same(actual[rid], props)
        ]
        return out

    def event_mismatches(self, topic: str, stored: list[dict[str, Any]]) -> list[str]:
        """Interactions: every valid event stored exactly once (compared without ids, seq and context)."""
        keys = ("userId", "itemId", "eventType", "sentAt", "eventValue", "properties")
        want = Counter(json.dumps(e, sort_keys=True) for e in self.events.get(topic, []))
        got = Counter(json.dumps({k: e[k] for k in keys if k in e}, sort_keys=True) for e in stored)
        missing, extra = want - got, got - want
        return [f"missing {e}" for e in missing.elements()] + [f"unexpected {e}" for e in extra.elements()]


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(
        a[k] == b[k] or (isinstance(a[k], (int, float)) and abs(float(a[k]) - float(b[k])) < 1e-6) for k in a
    )


# ---------------------------------------------------------------------- the same stream in Avro (Confluent wire format)

_NS = "dbserver.shop"
_TS_MILLIS = {"type": "long", "logicalType": "timestamp-millis"}
_DEBEZIUM_MICROS = {"type": "long", "connect.version": 1, "connect.name": "io.debezium.time.MicroTimestamp"}
_DECIMAL = {
    "type": "bytes",
    "scale": 2,
    "precision": 10,
    "connect.version": 1,
    "connect.parameters": {"scale": "2", "connect.decimal.precision": "10"},
    "connect.name": "org.apache.kafka.connect.data.Decimal",
    "logicalType": "decimal",
}


def _opt(name: str, avro_type: Any) -> dict[str, Any]:
    return {"name": name, "type": ["null", avro_type], "default": None}


def _items_row(name: str, *, in_stock: bool, debezium: bool = False, color: bool = False) -> dict[str, Any]:
    fields: list[dict[str, Any]] = [
        {"name": "ITEM_ID", "type": "string"},
        {"name": "PRICE", "type": _DECIMAL if debezium else "double"},
        _opt("GENRES", "string"),
        _opt("NUMBER_OF_RATINGS", "int"),
        _opt("CREATION_TIMESTAMP", _DEBEZIUM_MICROS if debezium else _TS_MILLIS),
    ]
    if in_stock:
        fields.append(_opt("IN_STOCK", "boolean"))  # schema evolution: an optional column added later
    if color:
        fields.append(_opt("COLOR", "string"))  # a column the Personalize schema does not have
    return {"type": "record", "name": name, "namespace": f"{_NS}.items", "fields": fields}


def _users_row(name: str, *, color: bool = False) -> dict[str, Any]:
    fields: list[dict[str, Any]] = [
        {"name": "USER_ID", "type": "string"},
        _opt("AGE", "int"),
        _opt("MEMBERSHIP", "string"),  # nullable in the database, required by Personalize
        _opt("GENDER", "string"),
    ]
    if color:
        fields.append(_opt("COLOR", "string"))
    return {"type": "record", "name": name, "namespace": f"{_NS}.users", "fields": fields}


def _envelope(row: dict[str, Any]) -> dict[str, Any]:
    """A Debezium change event (io.debezium.connector.postgresql), as the Avro converter writes it."""
    source = {
        "type": "record",
        "name": "Source",
        "namespace": "io.debezium.connector.postgresql",
        "fields": [
            {"name": "connector", "type": "string"},
            {"name": "db", "type": "string"},
            {"name": "table", "type": "string"},
            {"name": "lsn", "type": ["null", "long"], "default": None},
        ],
    }
    return {
        "type": "record",
        "name": "Envelope",
        "namespace": row["namespace"],
        "fields": [
            {"name": "before", "type": ["null", row], "default": None},
            {"name": "after", "type": ["null", "Value"], "default": None},
            {"name": "source", "type": source},
            {"name": "op", "type": "string"},
            {"name": "ts_ms", "type": ["null", "long"], "default": None},
        ],
        "connect.name": f"{row['namespace']}.Envelope",
    }


_KEY = {"type": "record", "name": "Key", "namespace": f"{_NS}.items", "fields": [{"name": "ITEM_ID", "type": "string"}]}

# name → (topic, key or value, writer schema); subjects are "<topic>-value" / "<topic>-key" (TopicNameStrategy)
AVRO_WRITER_SCHEMAS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "items-v1": (ITEMS_TOPIC, "value", _items_row("Value", in_stock=False)),
    "items-v2": (ITEMS_TOPIC, "value", _items_row("Value", in_stock=True)),
    "items-debezium": (ITEMS_TOPIC, "value", _envelope(_items_row("Value", in_stock=True, debezium=True))),
    "items-color": (ITEMS_TOPIC, "value", _items_row("Value", in_stock=True, color=True)),
    "items-key": (ITEMS_TOPIC, "key", _KEY),
    "users": (USERS_TOPIC, "value", _users_row("Value")),
    "users-debezium": (USERS_TOPIC, "value", _envelope(_users_row("Value"))),
    "users-color": (USERS_TOPIC, "value", _users_row("Value", color=True)),
}
UNKNOWN_SCHEMA_ID = 999_999


@dataclass(frozen=True)
class AvroSchemas:
    """The registered writer schemas: name → (schema id, parsed schema)."""

    by_name: dict[str, tuple[int, Any]]

    def encode(self, name: str, datum: Any) -> bytes:
        from ingestor.avro import encode

        sid, parsed = self.by_name[name]
        return encode(sid, parsed, datum)


async def register_avro_schemas(registry_url: str) -> AvroSchemas:
    """Register the sample's writer schemas (idempotent) with the registry at ``registry_url``."""
    from fastavro import parse_schema

    from ingestor.config import SchemaRegistrySettings
    from ingestor.registry import RegistryClient

    out: dict[str, tuple[int, Any]] = {}
    async with RegistryClient(SchemaRegistrySettings(url=registry_url)) as client:
        for name, (topic, part, schema) in AVRO_WRITER_SCHEMAS.items():
            sid = await client.register(f"{topic}-{part}", json.dumps(schema))
            out[name] = (sid, parse_schema(json.loads(json.dumps(schema))))
    return AvroSchemas(out)


def _avro_value(
    rng: random.Random, avro: AvroSchemas, topic: str, row: dict[str, Any], expected: dict[str, Any]
) -> tuple[bytes, bytes, dict[str, Any]]:
    """(key, value, expected) of a valid Avro event; ``expected`` adjusted to what the writer schema carries."""
    roll = rng.random()
    if topic == ITEMS_TOPIC:
        key = avro.encode("items-key", {"ITEM_ID": row["ITEM_ID"]})  # one key format per topic: one partition per id
        created = row["CREATION_TIMESTAMP"]
        row = {**row, "CREATION_TIMESTAMP": created * 1000 + rng.randrange(1000)}  # millis; expected: seconds
        if roll < 0.6:
            name = "items-v1" if roll < 0.3 else "items-v2"
            if name == "items-v1":
                row.pop("IN_STOCK", None)
                expected = {k: v for k, v in expected.items() if k != "inStock"}
            return key, avro.encode(name, row), expected
        row["CREATION_TIMESTAMP"] = created * 1_000_000 + rng.randrange(1_000_000)  # Debezium MicroTimestamp
        row["PRICE"] = Decimal(f"{row['PRICE']:.2f}")
        env = {"before": None, "after": row, "source": _SOURCE, "op": rng.choice("cur"), "ts_ms": 1_700_000_000_000}
        return key, avro.encode("items-debezium", env), expected
    key = row["USER_ID"].encode()
    if roll < 0.5:
        return key, avro.encode("users", row), expected
    env = {"before": None, "after": row, "source": _SOURCE, "op": rng.choice("cur"), "ts_ms": 1_700_000_000_000}
    return key, avro.encode("users-debezium", env), expected


_SOURCE = {"connector": "postgresql", "db": "shop", "table": "t", "lsn": 1}


def _avro_bad(rng: random.Random, avro: AvroSchemas, topic: str, row: dict[str, Any]) -> tuple[bytes, str]:
    kind = rng.randrange(4)
    items = topic == ITEMS_TOPIC
    plain = "items-v2" if items else "users"
    if kind == 0:
        sid = avro.by_name[plain][0]
        return bytes([0]) + sid.to_bytes(4, "big") + b"\x07garbage!", "not Avro after the magic byte"
    if kind == 1:
        return avro.encode(plain, row)[:1] + UNKNOWN_SCHEMA_ID.to_bytes(4, "big") + b"\x02x", "unknown schema id"
    if kind == 2:
        good = {**row, "CREATION_TIMESTAMP": row["CREATION_TIMESTAMP"] * 1000} if items else row
        return avro.encode("items-color" if items else "users-color", {**good, "COLOR": "red"}), "unknown COLOR"
    missing = "CREATION_TIMESTAMP" if items else "MEMBERSHIP"
    return avro.encode(plain, {**row, missing: None}), f"{missing} missing"
