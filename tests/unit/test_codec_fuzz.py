"""Property tests for ingestor.codec: any input gives a Change or a DecodeError; valid records round-trip."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestor.codec import FORMATS, decode
from ingestor.errors import DecodeError
from ingestor.model import Change, Op, SourceRecord
from ingestor.schema import DatasetKind, camel_case

BOUNDED = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

kinds = st.sampled_from(list(DatasetKind))
formats = st.sampled_from(FORMATS)

# Text including lone surrogates (hypothesis leaves them out by default): they must never get through.
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
clean_text = st.text(max_size=40)
json_keys = st.one_of(
    clean_text,
    st.sampled_from(["ITEM_ID", "item_id", "itemId", "USER_ID", "userId", "user_id", "Item_Id", "ITEMID"]),
    st.sampled_from(["properties", "op", "before", "after", "schema", "payload", "source", "ts_ms"]),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # beyond 64 bits too
    st.floats(),  # NaN and infinities too (invalid JSON once encoded)
    any_text,
    st.sampled_from(["c", "u", "r", "d", "t", ""]),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(st.lists(children, max_size=5), st.dictionaries(json_keys, children, max_size=6)),
    max_leaves=30,
)


def dumps(value: Any, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def as_json_text(values: st.SearchStrategy[Any]) -> st.SearchStrategy[str]:
    return st.builds(lambda v, a: json.dumps(v, ensure_ascii=a), values, st.booleans())


def encoded(values: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return st.builds(dumps, values, st.booleans())


def check(record: SourceRecord, kind: DatasetKind, fmt: Any) -> Change | None:
    """decode either returns a well-formed Change or raises a DecodeError naming the record."""
    try:
        change = decode(record, kind, fmt)
    except DecodeError as exc:
        assert str(exc).startswith(f"{record.where}: ")
        assert len(str(exc)) < 400
        return None
    assert isinstance(change, Change)
    assert change.op in (Op.UPSERT, Op.DELETE)
    assert change.record_id is None or isinstance(change.record_id, str)
    if change.record_id is not None:
        change.record_id.encode("utf-8")  # no lone surrogates
    assert change.record_id is not None or change.op is Op.DELETE
    assert isinstance(change.fields, Mapping)
    for value in change.fields.values():
        assert not isinstance(value, (dict, list))
    return change


def record(key: bytes | None, value: bytes | None) -> SourceRecord:
    return SourceRecord("fuzz.topic", 1, 99, key, value)


# --------------------------------------------------------------------------- nothing but Change or DecodeError


@BOUNDED
@given(st.none() | st.binary(max_size=200), st.none() | st.binary(max_size=200), kinds, formats)
def test_arbitrary_bytes(key: bytes | None, value: bytes | None, kind: DatasetKind, fmt: str) -> None:
    check(record(key, value), kind, fmt)


@BOUNDED
@given(st.none() | encoded(json_values), st.none() | encoded(json_values), kinds, formats)
def test_arbitrary_json(key: bytes | None, value: bytes | None, kind: DatasetKind, fmt: str) -> None:
    check(record(key, value), kind, fmt)


envelopes = st.fixed_dictionaries(
    {"op": json_values, "before": json_values, "after": json_values},
    optional={"source": json_values, "ts_ms": json_values},
)
wrapped = st.builds(
    lambda payload, schema: {"schema": schema, "payload": payload}, json_values | envelopes, json_values
) | st.builds(lambda payload: {"payload": payload}, json_values | envelopes)  # the schema stripped
api_like = st.fixed_dictionaries(
    {}, optional={"itemId": json_values, "userId": json_values, "properties": json_values | as_json_text(json_values)}
)


@BOUNDED
@given(st.none() | encoded(json_values | wrapped), encoded(envelopes | wrapped | api_like), kinds, formats)
def test_near_miss_shapes(key: bytes | None, value: bytes, kind: DatasetKind, fmt: str) -> None:
    check(record(key, value), kind, fmt)


def nest(depth: int, opener: str, inner: str = "1") -> str:
    closer = {"[": "]", '{"a":': "}"}[opener]
    return opener * depth + inner + closer * depth


@BOUNDED
@given(
    st.integers(1, 50_000),
    st.sampled_from(["[", '{"a":']),
    st.sampled_from(["value", "field", "properties", "key", "after"]),
    st.booleans(),
    kinds,
    formats,
)
def test_nesting_bombs(depth: int, opener: str, where: str, close: bool, kind: DatasetKind, fmt: str) -> None:
    bomb = nest(depth, opener) if close else opener * depth
    key: bytes | None = b"k"
    if where == "value":
        value = bomb.encode()
    elif where == "field":
        value = ('{"ITEM_ID": "i", "USER_ID": "u", "A": ' + bomb + "}").encode()
    elif where == "properties":
        value = json.dumps({"itemId": "i", "userId": "u", "properties": bomb}).encode()
    elif where == "after":
        value = ('{"op": "c", "after": ' + bomb + "}").encode()
    else:
        key, value = bomb.encode(), b"{}"
    check(record(key, value), kind, fmt)


@settings(max_examples=20, deadline=None, database=None)
@given(st.integers(0, 3_000_000), st.sampled_from(["a", "é", "✓", "\\u00e9", "\\ud800", '"']), kinds, formats)
def test_huge_strings(size: int, char: str, kind: DatasetKind, fmt: str) -> None:
    big = (char * (size // len(char))).encode()
    for key, value in [
        (b"k", b'{"ITEM_ID": "i", "USER_ID": "u", "A": "' + big + b'"}'),
        (b'"' + big + b'"', b'{"A": 1}'),
        (b"k", b'{"itemId": "i", "userId": "u", "properties": "' + big + b'"}'),
        (b"k", big),
    ]:
        check(record(key, value), kind, fmt)


# --------------------------------------------------------------------------- valid records round-trip

ids = st.one_of(st.text(min_size=1, max_size=30), st.integers(-(2**63), 2**63 - 1))
field_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=50),
)
RESERVED = {"properties", "op", "before", "after", "schema", "payload"}


def columns(kind: DatasetKind) -> st.SearchStrategy[dict[str, Any]]:
    """Column names that are neither the id (in any spelling) nor a key that changes the detected shape."""
    names = st.text(min_size=1, max_size=20).filter(
        lambda k: k != kind.id_key and camel_case(k) != kind.id_key and k not in RESERVED
    )
    return st.dictionaries(names, field_values, max_size=8)


def spellings(kind: DatasetKind) -> st.SearchStrategy[str]:
    return st.sampled_from([kind.id_field, kind.id_field.lower(), kind.id_key, kind.id_field.title()])


def as_id(raw: str | int) -> str:
    return raw if isinstance(raw, str) else str(raw)


# No wrapper, or each wrapper the codec removes: Kafka Connect's (with a schema or a null one), the schema stripped.
wrappers = st.sampled_from(
    [
        lambda v: v,
        lambda v: {"schema": {"type": "struct"}, "payload": v},
        lambda v: {"schema": None, "payload": v},
        lambda v: {"payload": v},
    ]
)


@BOUNDED
@given(
    kinds,
    ids,
    st.dictionaries(st.text(max_size=20), field_values, max_size=8),
    st.integers(0, 3),
    st.sampled_from(["auto", "api"]),
    wrappers,
)
def test_api_round_trip(
    kind: DatasetKind, rid: str | int, props: dict[str, Any], form: int, fmt: str, wrap: Any
) -> None:
    value: dict[str, Any] = {kind.id_key: rid}
    if form == 1:
        value["properties"] = props
    elif form == 2:
        value["properties"] = json.dumps(props)
    elif form == 3:
        value["properties"] = None
    expected = props if form in (1, 2) else {}
    got = decode(record(b"key-loses", dumps(wrap(value), True)), kind, fmt)  # type: ignore[arg-type]
    assert got == Change(Op.UPSERT, as_id(rid), expected)


@BOUNDED
@given(
    kinds,
    ids,
    st.data(),
    st.sampled_from(["auto", "flat"]),
    st.none() | st.binary(max_size=20),
    wrappers,
)
def test_flat_round_trip(
    kind: DatasetKind, rid: str | int, data: st.DataObject, fmt: str, key: bytes | None, wrap: Any
) -> None:
    row = data.draw(columns(kind))
    spelling = data.draw(spellings(kind))
    value: dict[str, Any] = {spelling: rid, **row}
    got = decode(record(key, dumps(wrap(value), False)), kind, fmt)  # type: ignore[arg-type]
    assert got == Change(Op.UPSERT, as_id(rid), row)


@BOUNDED
@given(
    kinds,
    ids,
    st.data(),
    st.sampled_from(["c", "u", "r", "d"]),
    st.sampled_from(["auto", "debezium"]),
    wrappers,
    st.none() | st.binary(max_size=20),
)
def test_debezium_round_trip(
    kind: DatasetKind, rid: str | int, data: st.DataObject, op: str, fmt: str, wrap: Any, key: bytes | None
) -> None:
    fields = data.draw(columns(kind))
    row = {data.draw(spellings(kind)): rid, **fields}
    env: dict[str, Any] = {"op": op, "source": {"db": "x"}, "ts_ms": 1}
    if op == "d":
        env.update(before=row, after=None)
        expected = Change(Op.DELETE, as_id(rid), {})
    else:
        env.update(before=data.draw(st.none() | st.just(row)), after=row)
        expected = Change(Op.UPSERT, as_id(rid), fields)
    assert decode(record(key, dumps(wrap(env), True)), kind, fmt) == expected  # type: ignore[arg-type]


@BOUNDED
@given(kinds, ids, st.data(), st.integers(0, 6))
def test_id_from_key_round_trip(kind: DatasetKind, rid: str | int, data: st.DataObject, form: int) -> None:
    row = data.draw(columns(kind))
    if form == 0:  # plain text key
        key = data.draw(st.text(min_size=1, max_size=30).filter(lambda t: t.lstrip()[:1] not in set('"{[-0123456789')))
        expected = key
        key_bytes = key.encode()
    else:
        key_json: Any = {
            1: rid,
            2: {kind.id_field: rid, "tenant": "t"},
            3: {"pk": rid},
            4: {"schema": {"type": "struct"}, "payload": {kind.id_key: rid}},
            5: {"payload": {kind.id_key: rid}},
            6: {"schema": None, "payload": rid},
        }[form]
        expected = as_id(rid)
        key_bytes = dumps(key_json, data.draw(st.booleans()))
    assert decode(record(key_bytes, dumps(row, True)), kind) == Change(Op.UPSERT, expected, row)
    assert decode(record(key_bytes, None), kind) == Change(Op.DELETE, expected, {})
