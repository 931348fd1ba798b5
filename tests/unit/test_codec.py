"""ingestor.codec: every input shape, detection rule, key form and error message."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ingestor.codec import decode
from ingestor.errors import DecodeError
from ingestor.model import Change, Op, SourceRecord
from ingestor.sample import ITEMS_TOPIC, USERS_TOPIC, StreamSpec, generate
from ingestor.schema import DatasetKind, DatasetSchema

ITEMS = DatasetKind.ITEMS
USERS = DatasetKind.USERS


def rec(
    value: Any = None, key: Any = None, *, topic: str = "catalog.items", partition: int = 0, offset: int = 17
) -> SourceRecord:
    """A record; dict/list/str values and dict keys are JSON-encoded, bytes are taken as they are."""

    def enc(x: Any) -> bytes | None:
        if x is None or isinstance(x, bytes):
            return x
        if isinstance(x, str):
            return x.encode()
        return json.dumps(x).encode()

    return SourceRecord(topic, partition, offset, enc(key), enc(value))


def fails(record: SourceRecord, *fragments: str, kind: DatasetKind = ITEMS, fmt: str = "auto") -> str:
    with pytest.raises(DecodeError) as info:
        decode(record, kind, fmt)  # type: ignore[arg-type]
    message = str(info.value)
    assert message.startswith(f"{record.where}: "), message
    for fragment in fragments:
        assert fragment in message, message
    assert info.value.stage == "decode"
    return message


# The wrappers a value may come in (Kafka Connect's JSON converter with a schema, a null schema, the schema stripped).
WRAPPERS = {
    "schema": lambda v: {"schema": {"type": "struct", "fields": []}, "payload": v},
    "null schema": lambda v: {"schema": None, "payload": v},
    "payload only": lambda v: {"payload": v},
}


def envelope(op: str, before: Any = None, after: Any = None, *, wrapped: bool = False) -> dict[str, Any]:
    env = {"before": before, "after": after, "op": op, "source": {"db": "shop", "table": "items"}, "ts_ms": 1}
    return WRAPPERS["schema"](env) if wrapped else env


# --------------------------------------------------------------------------- API shape


class TestApiShape:
    def test_properties_object(self) -> None:
        got = decode(rec({"itemId": "i1", "properties": {"price": 9.5, "genres": "a|b"}}), ITEMS)
        assert got == Change(Op.UPSERT, "i1", {"price": 9.5, "genres": "a|b"})

    def test_properties_json_string(self) -> None:
        got = decode(rec({"itemId": "i1", "properties": json.dumps({"price": 9.5})}), ITEMS)
        assert got == Change(Op.UPSERT, "i1", {"price": 9.5})

    @pytest.mark.parametrize("value", [{"itemId": "i1"}, {"itemId": "i1", "properties": None}])
    def test_missing_or_null_properties_mean_no_fields(self, value: dict[str, Any]) -> None:
        assert decode(rec(value), ITEMS) == Change(Op.UPSERT, "i1", {})

    def test_users(self) -> None:
        got = decode(rec({"userId": "u1", "properties": {"age": 3}}), USERS)
        assert got == Change(Op.UPSERT, "u1", {"age": 3})

    def test_integer_id(self) -> None:
        assert decode(rec({"itemId": 42, "properties": {}}), ITEMS).record_id == "42"

    def test_id_from_key_when_value_has_none(self) -> None:
        assert decode(rec({"properties": {"a": 1}}, key="k1"), ITEMS) == Change(Op.UPSERT, "k1", {"a": 1})

    def test_properties_string_not_json(self) -> None:
        fails(rec({"itemId": "i1", "properties": "{oops"}), "properties is not valid JSON: ")

    def test_properties_string_holding_a_list(self) -> None:
        fails(
            rec({"itemId": "i1", "properties": "[1, 2]"}),
            "properties must be a JSON object, got a string holding a list",
        )

    @pytest.mark.parametrize(("props", "name"), [([1], "a list"), (3, "an integer"), (True, "a boolean")])
    def test_properties_of_the_wrong_type(self, props: Any, name: str) -> None:
        fails(
            rec({"itemId": "i1", "properties": props}),
            f"properties must be a JSON object or a string holding one, got {name}",
        )

    def test_nested_property_value(self) -> None:
        fails(rec({"itemId": "i1", "properties": {"a": {"b": 1}}}), "properties must hold only scalar values", "'a'")

    def test_unexpected_keys(self) -> None:
        fails(
            rec({"itemId": "i1", "properties": {}, "extra": 1}), "only itemId and properties", "unexpected key 'extra'"
        )

    def test_no_id_anywhere(self) -> None:
        fails(rec({"properties": {}}), "no item id: the value has no ITEM_ID/itemId and the key is empty")


# --------------------------------------------------------------------------- flat shape


class TestFlatShape:
    @pytest.mark.parametrize("spelling", ["ITEM_ID", "item_id", "itemId", "Item_Id", "_ITEM__ID_"])
    def test_id_spellings(self, spelling: str) -> None:
        got = decode(rec({spelling: "i1", "PRICE": 9.5, "GENRES": "a|b"}), ITEMS)
        assert got == Change(Op.UPSERT, "i1", {"PRICE": 9.5, "GENRES": "a|b"})

    @pytest.mark.parametrize("spelling", ["ITEMID", "itemid", "ITEM_I_D"])
    def test_not_id_spellings_stay_fields(self, spelling: str) -> None:
        assert decode(rec({spelling: "x"}, key="k"), ITEMS) == Change(Op.UPSERT, "k", {spelling: "x"})

    def test_fields_are_kept_unchanged(self) -> None:
        row = {"ITEM_ID": "i1", "PRICE": "9.5", "numberOfRatings": 3, "IN_STOCK": False, "BRAND": None, "Ünïcode": "✓"}
        got = decode(rec(row), ITEMS)
        assert got.record_id == "i1"
        assert dict(got.fields) == {k: v for k, v in row.items() if k != "ITEM_ID"}

    def test_users_and_interactions_use_user_id(self) -> None:
        assert decode(rec({"USER_ID": "u1", "AGE": 3}), USERS) == Change(Op.UPSERT, "u1", {"AGE": 3})
        got = decode(rec({"USER_ID": "u1", "ITEM_ID": "i1", "EVENT_TYPE": "click"}), DatasetKind.INTERACTIONS)
        assert got == Change(Op.UPSERT, "u1", {"ITEM_ID": "i1", "EVENT_TYPE": "click"})

    def test_id_only_row(self) -> None:
        assert decode(rec({"ITEM_ID": "i1"}), ITEMS) == Change(Op.UPSERT, "i1", {})

    def test_two_spellings_with_one_value(self) -> None:
        assert decode(rec({"ITEM_ID": "7", "item_id": 7, "A": 1}), ITEMS) == Change(Op.UPSERT, "7", {"A": 1})

    def test_two_spellings_with_different_values(self) -> None:
        fails(rec({"ITEM_ID": "a", "itemId": "b"}), "item id is given twice", "ITEM_ID='a'", "itemId='b'")

    def test_nested_field_value(self) -> None:
        fails(
            rec({"ITEM_ID": "i1", "GENRES": ["a", "b"]}),
            "the value must hold only scalar values",
            "'GENRES' holds a list",
        )

    def test_no_id_anywhere(self) -> None:
        fails(rec({"PRICE": 1}), "no item id: the value has no ITEM_ID/itemId and the key is empty")
        fails(rec({"AGE": 1}), "no user id: the value has no USER_ID/userId", kind=USERS)


# --------------------------------------------------------------------------- Debezium


class TestDebezium:
    @pytest.mark.parametrize("op", ["c", "u", "r"])
    @pytest.mark.parametrize("wrapped", [False, True])
    def test_upserts(self, op: str, wrapped: bool) -> None:
        value = envelope(op, before={"ITEM_ID": "old"}, after={"ITEM_ID": "i1", "PRICE": 2}, wrapped=wrapped)
        assert decode(rec(value), ITEMS) == Change(Op.UPSERT, "i1", {"PRICE": 2})

    @pytest.mark.parametrize("wrapped", [False, True])
    def test_delete_takes_the_id_from_before(self, wrapped: bool) -> None:
        value = envelope("d", before={"item_id": 5, "PRICE": 2}, wrapped=wrapped)
        assert decode(rec(value, key="ignored"), ITEMS) == Change(Op.DELETE, "5", {})

    @pytest.mark.parametrize("before", [None, {"PRICE": 2}])
    def test_delete_falls_back_to_the_key(self, before: Any) -> None:
        assert decode(rec(envelope("d", before=before), key={"ITEM_ID": 9}), ITEMS) == Change(Op.DELETE, "9", {})

    def test_delete_without_any_id(self) -> None:
        fails(rec(envelope("d")), "no item id: the Debezium 'before' row has no ITEM_ID/itemId and the key is empty")

    def test_upsert_id_from_debezium_key(self) -> None:
        key = {"schema": {"type": "struct"}, "payload": {"id": 11}}
        assert decode(rec(envelope("c", after={"PRICE": 1}), key=key), ITEMS) == Change(Op.UPSERT, "11", {"PRICE": 1})

    def test_upsert_without_any_id(self) -> None:
        fails(rec(envelope("c", after={"PRICE": 1})), "no item id: the Debezium 'after' row has no ITEM_ID/itemId")

    @pytest.mark.parametrize("op", ["c", "u", "r"])
    def test_upsert_without_after(self, op: str) -> None:
        fails(rec(envelope(op, before={"ITEM_ID": "i1"}, after=None)), f"Debezium op '{op}' has no 'after' row")

    def test_after_not_an_object(self) -> None:
        fails(rec(envelope("u", after=[1])), "Debezium 'after' must be a JSON object, got a list")

    def test_before_not_an_object(self) -> None:
        fails(rec(envelope("d", before="x")), "Debezium 'before' must be a JSON object or null, got a string")

    def test_nested_after_value(self) -> None:
        fails(rec(envelope("c", after={"ITEM_ID": "i", "X": {}})), "'after' row must hold only scalar values")

    @pytest.mark.parametrize(
        ("op", "shown"),
        [("t", "'t'"), ("m", "'m'"), (1, "an integer"), (None, "null"), (["c"], "a list"), ({"c": 1}, "an object")],
    )
    def test_unknown_op(self, op: Any, shown: str) -> None:
        fails(rec(envelope(op, after={"ITEM_ID": "i1"})), f"unknown Debezium op {shown} (expected c, u, r or d)")

    def test_id_of_the_wrong_type_in_before(self) -> None:
        fails(
            rec(envelope("d", before={"ITEM_ID": 1.5})), "'before' ITEM_ID must be a string or an integer, got a float"
        )


# --------------------------------------------------------------------------- wrappers


# shape → (a value in that shape, the formats that accept it)
INNER: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "debezium": (envelope("u", after={"ITEM_ID": "i1", "A": 1}), ("auto", "debezium")),
    "flat": ({"ITEM_ID": "i1", "A": 1}, ("auto", "flat")),
    "api": ({"itemId": "i1", "properties": {"A": 1}}, ("auto", "api")),
    "api, properties string": ({"itemId": "i1", "properties": '{"A": 1}'}, ("auto", "api")),
}


class TestWrappers:
    def test_the_debezium_envelope_wrapped_only_in_payload(self) -> None:
        # The shape that was dead-lettered with "'payload' holds an object" (issue 9, part 1).
        value = {"payload": {"before": None, "after": {"ITEM_ID": "i1", "A": 1}, "op": "u", "source": {}, "ts_ms": 1}}
        for fmt in ("auto", "debezium"):
            assert decode(rec(value), ITEMS, fmt) == Change(Op.UPSERT, "i1", {"A": 1})

    @pytest.mark.parametrize("wrapper", WRAPPERS)
    @pytest.mark.parametrize("shape", INNER)
    def test_every_wrapper_around_every_shape_in_every_format_that_reads_it(self, wrapper: str, shape: str) -> None:
        inner, formats = INNER[shape]
        for fmt in formats:
            got = decode(rec(WRAPPERS[wrapper](inner), key="ignored"), ITEMS, fmt)  # type: ignore[arg-type]
            assert got == Change(Op.UPSERT, "i1", {"A": 1}), (fmt, got)

    @pytest.mark.parametrize("wrapper", WRAPPERS)
    def test_wrapped_debezium_delete(self, wrapper: str) -> None:
        value = WRAPPERS[wrapper](envelope("d", before={"ITEM_ID": "i1", "A": 1}))
        assert decode(rec(value, key="k"), ITEMS) == Change(Op.DELETE, "i1", {})
        assert decode(rec(WRAPPERS[wrapper](envelope("d")), key="k"), ITEMS) == Change(Op.DELETE, "k", {})

    @pytest.mark.parametrize("wrapper", WRAPPERS)
    @pytest.mark.parametrize("fmt", ["auto", "api", "flat", "debezium"])
    def test_a_null_payload_is_a_tombstone(self, wrapper: str, fmt: str) -> None:
        got = decode(rec(WRAPPERS[wrapper](None), key="k"), ITEMS, fmt)  # type: ignore[arg-type]
        assert got == Change(Op.DELETE, "k", {})

    @pytest.mark.parametrize(("payload", "name"), [([1], "a list"), ("x", "a string"), (3, "an integer")])
    def test_a_payload_that_is_not_an_object(self, payload: Any, name: str) -> None:
        for schema in ({}, None):
            fails(
                rec({"schema": schema, "payload": payload}),
                f'the payload of a {{"schema", "payload"}} wrapper must be a JSON object or null, got {name}',
            )
        message = fails(
            rec({"payload": payload}, key="k"),
            "a value whose only key is 'payload' is a wrapper, so the payload must be a JSON object or null, "
            f"got {name}",
        )
        assert "put the id column in the row too" in message

    def test_a_column_named_payload_next_to_the_id_is_a_column(self) -> None:
        assert decode(rec({"ITEM_ID": "i1", "payload": "p"}), ITEMS) == Change(Op.UPSERT, "i1", {"payload": "p"})
        assert decode(rec({"ITEM_ID": "i1", "payload": None}), ITEMS, "flat") == Change(
            Op.UPSERT, "i1", {"payload": None}
        )
        value = {"payload": "p", "schema": "s", "A": 1}  # more than the wrapper's keys: a row
        assert decode(rec(value, key="k"), ITEMS) == Change(Op.UPSERT, "k", {"payload": "p", "schema": "s", "A": 1})

    def test_a_payload_object_next_to_other_keys_is_not_a_wrapper(self) -> None:
        fails(rec({"ITEM_ID": "i1", "payload": {"A": 1}}), "'payload' holds an object")
        fails(rec({"schema": None, "payload": {"ITEM_ID": "i1"}, "extra": 1}), "'payload' holds an object")

    def test_only_one_wrapper_is_removed(self) -> None:
        fails(rec({"payload": {"payload": {"ITEM_ID": "i1"}}}, key="k"), "'payload' holds an object")

    @pytest.mark.parametrize("wrapper", WRAPPERS)
    def test_a_wrapped_value_with_the_id_only_in_the_key(self, wrapper: str) -> None:
        key = WRAPPERS[wrapper]({"ITEM_ID": "k1"})
        assert decode(rec(WRAPPERS[wrapper]({"A": 1}), key=key), ITEMS) == Change(Op.UPSERT, "k1", {"A": 1})


# --------------------------------------------------------------------------- detection and forced formats


class TestDetection:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ({"itemId": "i1", "properties": {"a": 1}}, Change(Op.UPSERT, "i1", {"a": 1})),  # has properties → api
            ({"itemId": "i1"}, Change(Op.UPSERT, "i1", {})),  # lone id key → api
            ({"ITEM_ID": "i1", "a": 1}, Change(Op.UPSERT, "i1", {"a": 1})),  # → flat
            ({"itemId": "i1", "a": 1}, Change(Op.UPSERT, "i1", {"a": 1})),  # id key plus columns → flat
            (envelope("c", after={"ITEM_ID": "i1"}), Change(Op.UPSERT, "i1", {})),  # op + after → debezium
            ({"op": "d", "before": {"ITEM_ID": "i1"}}, Change(Op.DELETE, "i1", {})),  # op + before → debezium
            ({"ITEM_ID": "i1", "op": "c"}, Change(Op.UPSERT, "i1", {"op": "c"})),  # op alone is a column → flat
            ({"ITEM_ID": "i1", "after": "x"}, Change(Op.UPSERT, "i1", {"after": "x"})),  # no op → flat
        ],
    )
    def test_auto(self, value: dict[str, Any], expected: Change) -> None:
        assert decode(rec(value), ITEMS) == expected
        assert decode(rec(value), ITEMS, "auto") == expected

    @pytest.mark.parametrize(
        ("fmt", "value"),
        [
            ("api", {"itemId": "i1", "properties": {"a": 1}}),
            ("flat", {"ITEM_ID": "i1", "a": 1}),
            ("debezium", envelope("u", after={"ITEM_ID": "i1", "a": 1})),
            ("debezium", envelope("u", after={"ITEM_ID": "i1", "a": 1}, wrapped=True)),
        ],
    )
    def test_forced_format_accepts_its_shape(self, fmt: str, value: dict[str, Any]) -> None:
        assert decode(rec(value), ITEMS, fmt) == Change(Op.UPSERT, "i1", {"a": 1})  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("fmt", "value", "fragment"),
        [
            ("api", {"ITEM_ID": "i1", "PRICE": 1}, "unexpected key 'PRICE'"),
            ("api", envelope("c", after={"ITEM_ID": "i1"}), "unexpected keys 'after', 'before', 'op'"),
            ("flat", {"itemId": "i1", "properties": {"a": 1}}, "'properties' holds an object"),
            ("flat", envelope("c", after={"ITEM_ID": "i1"}), "'after' holds an object"),
            ("debezium", {"ITEM_ID": "i1", "PRICE": 1}, "not a Debezium change event: no 'op' field"),
            ("debezium", {"itemId": "i1", "properties": {}}, "not a Debezium change event: no 'op' field"),
        ],
    )
    def test_forced_format_rejects_other_shapes(self, fmt: str, value: dict[str, Any], fragment: str) -> None:
        fails(rec(value), fragment, fmt=fmt)

    @pytest.mark.parametrize("fmt", ["auto", "api", "flat", "debezium"])
    def test_tombstone_in_every_format(self, fmt: str) -> None:
        assert decode(rec(None, key="k"), ITEMS, fmt) == Change(Op.DELETE, "k", {})  # type: ignore[arg-type]

    def test_unknown_format_is_a_programming_error(self) -> None:
        with pytest.raises(ValueError, match="unknown format 'xml'"):
            decode(rec({"ITEM_ID": "i1"}), ITEMS, "xml")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- tombstones and keys


class TestTombstone:
    def test_with_text_key(self) -> None:
        assert decode(rec(None, key="i1"), ITEMS) == Change(Op.DELETE, "i1", {})

    @pytest.mark.parametrize("key", [None, b""])
    def test_without_key(self, key: bytes | None) -> None:
        assert decode(rec(None, key=key), ITEMS) == Change(Op.DELETE, None, {})

    def test_with_json_object_key(self) -> None:
        assert decode(rec(None, key={"USER_ID": 3}), USERS) == Change(Op.DELETE, "3", {})

    def test_with_a_key_that_has_no_id(self) -> None:
        assert decode(rec(None, key=[1, 2]), ITEMS) == Change(Op.DELETE, None, {})
        assert decode(rec(None, key={"a": 1, "b": 2}), ITEMS) == Change(Op.DELETE, None, {})

    def test_with_invalid_utf8_key(self) -> None:
        fails(rec(None, key=b"\xffk"), "key is not valid UTF-8")


class TestKeys:
    @pytest.mark.parametrize(
        ("key", "expected"),
        [
            (b"i1", "i1"),  # plain text
            (b"item one", "item one"),
            ("ключ-✓".encode(), "ключ-✓"),
            (b'"i1"', "i1"),  # JSON string
            (b'"with \\"quotes\\""', 'with "quotes"'),
            (b"42", "42"),  # JSON number
            (b" 42 ", "42"),
            (b"-7", "-7"),
            (b"1.5", "1.5"),  # a float is kept as written
            (b"true", "true"),
            (b"null", "null"),
            (b"007", "007"),  # not JSON: text
            (b'{"broken', '{"broken'),
            (b'{"ITEM_ID": "k1"}', "k1"),  # JSON object: the id column
            (b'{"item_id": 5, "tenant": "t"}', "5"),
            (b'{"itemId": "k1", "x": 1}', "k1"),
            (b'{"id": "k1"}', "k1"),  # exactly one field
            (b'{"id": 12}', "12"),
            (b'{"schema": {"type": "struct"}, "payload": {"id": 12}}', "12"),  # Debezium key
            (b'{"schema": {"type": "struct"}, "payload": {"ITEM_ID": "k", "other": 1}}', "k"),
            (b'{"schema": {"type": "string"}, "payload": "k"}', "k"),
            (b'{"schema": {"type": "int64"}, "payload": 12}', "12"),
            (b'{"schema": null, "payload": {"id": 12}}', "12"),
            (b'{"payload": {"id": 12}}', "12"),  # the schema stripped
            (b'{"payload": "k"}', "k"),
        ],
    )
    def test_key_forms(self, key: bytes, expected: str) -> None:
        assert decode(rec({"PRICE": 1}, key=key), ITEMS) == Change(Op.UPSERT, expected, {"PRICE": 1})

    @pytest.mark.parametrize(
        ("key", "fragment"),
        [
            (b'{"a": 1, "b": 2}', 'the key \'{"a": 1, "b": 2}\' has no ITEM_ID/itemId field'),
            (b"[1, 2]", "the key is a JSON list"),
            (b'{"schema": {}, "payload": null}', "the key's payload is null"),
            (b'{"payload": null}', "the key's payload is null"),
            (b'{"schema": {"type": "double"}, "payload": 1.5}', "the key's payload is a float"),
            (b'{"payload": [1]}', "the key's payload is a list"),
        ],
    )
    def test_keys_without_an_id(self, key: bytes, fragment: str) -> None:
        fails(rec({"PRICE": 1}, key=key), "no item id: the value has no ITEM_ID/itemId and", fragment)

    @pytest.mark.parametrize(
        ("key", "fragment"),
        [
            (b'{"ITEM_ID": 1.5}', "key field ITEM_ID must be a string or an integer, got a float (1.5)"),
            (b'{"id": [1]}', "key field 'id' must be a string or an integer, got a list"),
            (b'{"id": true}', "key field 'id' must be a string or an integer, got a boolean (True)"),
        ],
    )
    def test_key_ids_of_the_wrong_type(self, key: bytes, fragment: str) -> None:
        fails(rec({"PRICE": 1}, key=key), fragment)

    def test_invalid_utf8_key(self) -> None:
        fails(rec({"PRICE": 1}, key=b"ab\xc3"), "key is not valid UTF-8 (unexpected end of data at byte 2)")

    def test_key_is_not_read_when_the_value_has_the_id(self) -> None:
        assert decode(rec({"ITEM_ID": "v"}, key=b"\xff"), ITEMS).record_id == "v"


class TestPrecedence:
    @pytest.mark.parametrize(
        "value",
        [
            {"ITEM_ID": "v", "A": 1},
            {"itemId": "v", "properties": {"A": 1}},
            envelope("u", after={"ITEM_ID": "v", "A": 1}),
            envelope("u", after={"ITEM_ID": "v", "A": 1}, wrapped=True),
        ],
    )
    @pytest.mark.parametrize("key", [b"k", b'"k"', b'{"ITEM_ID": "k"}', b"99"])
    def test_value_id_wins_over_key(self, value: dict[str, Any], key: bytes) -> None:
        assert decode(rec(value, key=key), ITEMS) == Change(Op.UPSERT, "v", {"A": 1})

    def test_value_id_wins_for_debezium_delete(self) -> None:
        assert decode(rec(envelope("d", before={"ITEM_ID": "v"}), key=b"k"), ITEMS) == Change(Op.DELETE, "v", {})


# --------------------------------------------------------------------------- ids


class TestIds:
    @pytest.mark.parametrize(
        ("raw", "expected"),
        [("i1", "i1"), (0, "0"), (-5, "-5"), (2**63 - 1, str(2**63 - 1)), ("", ""), ("x" * 1000, "x" * 1000)],
    )
    def test_strings_and_integers(self, raw: Any, expected: str) -> None:
        assert decode(rec({"ITEM_ID": raw}), ITEMS).record_id == expected

    @pytest.mark.parametrize(
        ("raw", "name"),
        [(1.5, "a float (1.5)"), (True, "a boolean (True)"), (None, "null"), ({"a": 1}, "an object"), ([1], "a list")],
    )
    def test_other_types_are_rejected(self, raw: Any, name: str) -> None:
        fails(rec({"ITEM_ID": raw}, key="k"), f"ITEM_ID must be a string or an integer, got {name}")
        fails(rec({"itemId": raw, "properties": {}}), f"itemId must be a string or an integer, got {name}")


# --------------------------------------------------------------------------- broken values


class TestBrokenValues:
    def test_invalid_json(self) -> None:
        fails(rec(b'{"ITEM_ID": "i1" "PRICE": 1}'), "value is not valid JSON: ", "line 1 column 18")

    def test_invalid_utf8(self) -> None:
        fails(rec(b'{"ITEM_ID": "\xff"}'), "value is not valid UTF-8 (invalid start byte at byte 13)")

    def test_empty(self) -> None:
        fails(rec(b""), "value is empty")

    @pytest.mark.parametrize(
        ("value", "name"), [(b"[1]", "a list"), (b'"x"', "a string"), (b"3", "an integer"), (b"null", "null")]
    )
    def test_not_an_object(self, value: bytes, name: str) -> None:
        fails(rec(value), f"value must be a JSON object, got {name}")

    @pytest.mark.parametrize(
        "value", [b"NaN", b'{"ITEM_ID": "i", "A": NaN}', b'{"ITEM_ID": "\\ud800"}', b"\xef\xbb\xbf{}"]
    )
    def test_not_strict_json(self, value: bytes) -> None:
        fails(rec(value), "value is not valid JSON: ")

    @pytest.mark.parametrize("depth", [100, 2000, 100_000])
    def test_nesting_bombs(self, depth: int) -> None:
        fails(rec(b"[" * depth + b"]" * depth))
        fails(rec(b'{"ITEM_ID": "i", "A": ' + b"[" * depth + b"]" * depth + b"}"))
        fails(rec(b"[" * depth))
        fails(rec({"itemId": "i", "properties": "[" * depth}), "properties")

    def test_huge_value(self) -> None:
        big = "x" * 5_000_000
        assert decode(rec({"ITEM_ID": "i", "TEXT": big}), ITEMS).fields == {"TEXT": big}
        message = fails(rec(b'{"ITEM_ID": "' + big.encode()), "value is not valid JSON")
        assert len(message) < 200

    def test_messages_are_short(self) -> None:
        long = "z" * 10_000
        for record in [
            rec(envelope(long, after={"ITEM_ID": "i"})),
            rec({"PRICE": 1}, key={"a": long, "b": long}),
            rec({"ITEM_ID": "i", long: [1]}),
            rec({"itemId": "i", "properties": {}, long: 1}),
        ]:
            assert len(fails(record)) < 250

    def test_messages_name_the_record(self) -> None:
        record = rec(b"nope", topic="users.cdc", partition=3, offset=123456)
        assert fails(record).startswith("users.cdc/3@123456: value is not valid JSON")


# --------------------------------------------------------------------------- the sample stream


def _shape_of(value: dict[str, Any]) -> tuple[str, str]:
    wrapper = "none"
    if "payload" in value and set(value) <= {"schema", "payload"}:
        wrapper = "payload only" if len(value) == 1 else "null schema" if value["schema"] is None else "schema"
        value = value["payload"]
    if "op" in value:
        return "debezium", wrapper
    if "properties" in value:
        return ("api, properties string" if isinstance(value["properties"], str) else "api"), wrapper
    return "flat", wrapper


def test_the_sample_stream_carries_every_promised_shape_and_each_decodes_to_its_expected_record() -> None:
    """The demo and the integration/chaos tests run sample streams end to end: every shape the README promises must
    be in them, and each valid event must decode and validate to exactly what the run will expect."""
    config = Path(__file__).parents[2] / "config" / "schemas"
    schemas = {
        ITEMS_TOPIC: DatasetSchema.load(config / "items.avsc", ITEMS),
        USERS_TOPIC: DatasetSchema.load(config / "users.avsc", USERS),
    }
    seen: set[tuple[str, str]] = set()
    for n, event in enumerate(generate(3000, StreamSpec(seed=11))):
        if not event.valid:
            continue
        assert event.value is not None
        seen.add(_shape_of(json.loads(event.value)))
        schema = schemas[event.topic]
        change = decode(SourceRecord(event.topic, 0, n, event.key, event.value), schema.kind)
        assert change.op is Op.UPSERT and change.record_id == event.record_id, event
        built = schema.build_record(change.record_id, change.fields)
        assert json.loads(built["properties"]) == event.expected, event
    promised = {("flat", "none"), ("api", "none"), ("api, properties string", "none")}
    promised |= {("debezium", wrapper) for wrapper in ("none", *WRAPPERS)}
    assert promised <= seen, promised - seen
