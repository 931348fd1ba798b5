"""A realistic change stream of items and users (and, when asked, interaction events) for the demo, the tests and the
benchmarks.

Every generated event knows whether it is valid, so a run can be checked from the outside: the endpoint's final
state must equal the last valid event per id, and the dead-letter topic must hold exactly the invalid ones.
Shapes are mixed (API-shaped, flat column names, Debezium envelopes); a few ids are hot (updated very often).
Interaction events (``StreamSpec.events_share``, off by default) each count: a correct run delivers every valid one.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
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
    return {"schema": {"type": "struct"}, "payload": envelope} if rng.random() < 0.5 else envelope


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
            value, problem = _bad(rng, topic, record_id, row)
            yield Event(topic, record_id.encode(), value, record_id, None, problem)
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
