"""The pipeline's side of the schema: column names → camelCase request records, coercion, limits, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ingestor.errors import ConfigError, SchemaError
from ingestor.schema import DatasetSchema, camel_case

CONFIG = Path(__file__).parents[2] / "config"
ITEMS = DatasetSchema.load(CONFIG / "schemas/items.avsc", "ITEMS")
USERS = DatasetSchema.load(CONFIG / "schemas/users.avsc", "USERS")
BASE = {"PRICE": 9.5, "CREATION_TIMESTAMP": 1700000000}


@pytest.mark.parametrize(
    ("name", "key"),
    [("NUMBER_OF_RATINGS", "numberOfRatings"), ("ITEM_ID", "itemId"), ("genre", "genre"), ("IN_STOCK", "inStock")],
)
def test_camel_case(name: str, key: str) -> None:
    assert camel_case(name) == key


def test_request_record_has_camel_case_properties_as_a_compact_json_string() -> None:
    rec = ITEMS.build_record("i1", {**BASE, "GENRES": "a|b", "NUMBER_OF_RATINGS": "12"})
    assert rec["itemId"] == "i1"
    assert rec["properties"] == '{"price":9.5,"creationTimestamp":1700000000,"genres":"a|b","numberOfRatings":12}'


@pytest.mark.parametrize("spelling", ["NUMBER_OF_RATINGS", "number_of_ratings", "numberOfRatings"])
def test_column_names_in_any_case_or_camel_case_are_accepted(spelling: str) -> None:
    props = json.loads(ITEMS.build_record("i1", {**BASE, spelling: 3})["properties"])
    assert props["numberOfRatings"] == 3


def test_nullable_fields_may_be_null_or_missing_and_are_not_sent() -> None:
    rec = ITEMS.build_record("i1", {**BASE, "GENRES": None})
    assert "genres" not in json.loads(rec["properties"])


def test_user_without_properties_field_values_omits_properties() -> None:
    schema = DatasetSchema.from_avro({"type": "record", "fields": [{"name": "USER_ID", "type": "string"}]}, "USERS")
    assert schema.build_record("u1", {}) == {"userId": "u1"}


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"PRICE": 1.0}, "required field CREATION_TIMESTAMP"),
        ({**BASE, "PRICE": "cheap"}, "price (float) must be a number"),
        ({**BASE, "PRICE": True}, "must be a number, got a boolean"),
        ({**BASE, "NUMBER_OF_RATINGS": 1.5}, "must be an integer"),
        ({**BASE, "NUMBER_OF_RATINGS": 2**31}, "out of range for int"),
        ({**BASE, "COLOR": "red"}, "unknown field 'COLOR'"),
        ({**BASE, "price": 1.0}, "given twice"),
        ({**BASE, "GENRES": "x" * 1001}, "categorical value is 1001 characters"),
        ({**BASE, "DESCRIPTION": "x" * 20_001}, "over the textual limit"),
        ({**BASE, "IN_STOCK": "maybe"}, "must be true or false"),
        ({**BASE, "PRICE": float("nan")}, "finite"),
    ],
)
def test_mismatches_are_rejected_with_a_reason_naming_the_field(fields: dict[str, object], fragment: str) -> None:
    with pytest.raises(SchemaError) as info:
        ITEMS.build_record("i1", fields)
    assert fragment in str(info.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(SchemaError) as info:
        USERS.build_record("u1", {"AGE": "old", "COLOR": "red"})
    assert len(info.value.problems) == 3  # bad AGE, unknown COLOR, missing MEMBERSHIP


@pytest.mark.parametrize("record_id", ["", "x" * 257, 42])
def test_ids_must_be_1_to_256_character_strings(record_id: object) -> None:
    with pytest.raises(SchemaError, match="itemId"):
        ITEMS.build_record(record_id, BASE)


def test_properties_over_the_api_limit_are_rejected() -> None:
    many = {
        "type": "record",
        "fields": [{"name": "USER_ID", "type": "string"}] + [{"name": f"F{i}", "type": "string"} for i in range(30)],
    }
    schema = DatasetSchema.from_avro(many, "USERS")
    with pytest.raises(SchemaError, match="over the API limit of 24000"):
        schema.build_record("u1", {f"F{i}": "x" * 900 for i in range(30)})


@pytest.mark.parametrize(
    ("avro", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ({"type": "record", "fields": [{"name": "PRICE", "type": "float"}]}, "needs the field ITEM_ID"),
        ({"type": "record", "fields": [{"name": "ITEM_ID", "type": "string"}, {"name": "X", "type": "map"}]}, "type"),
        (
            {
                "type": "record",
                "fields": [{"name": "ITEM_ID", "type": "string"}, {"name": "X", "type": "int", "categorical": True}],
            },
            "must be string",
        ),
    ],
)
def test_bad_schemas_fail_with_a_message(avro: object, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        DatasetSchema.from_avro(avro, "ITEMS")  # type: ignore[arg-type]
