"""Avro decoding (Confluent wire format): shapes, logical types, keys, bad bytes, the schema cache, the registry."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from fastavro import parse_schema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestor.avro import AvroDecoder, encode
from ingestor.config import SchemaRegistrySettings, Settings
from ingestor.errors import ConfigError, DecodeError, RecordError
from ingestor.model import Op, SourceRecord
from ingestor.registry import RegisteredSchema, RegistryClient, RegistryUnavailable, SchemaNotFound
from ingestor.sample import ITEMS_TOPIC, UNKNOWN_SCHEMA_ID, StreamSpec, generate, register_avro_schemas
from ingestor.schema import DatasetKind, DatasetSchema
from ingestor.schema_cache import SchemaPending, WriterSchemas
from tests.conftest import wait_until

CONFIG = Path(__file__).parents[2] / "config"
ITEMS = DatasetKind.ITEMS
ROW = {
    "type": "record",
    "name": "Value",
    "namespace": "shop.items",
    "fields": [
        {"name": "ITEM_ID", "type": ["null", "string"], "default": None},
        {"name": "PRICE", "type": "double"},
        {"name": "CREATION_TIMESTAMP", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ],
}


def envelope(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "record",
        "name": "Envelope",
        "namespace": "shop.items",
        "fields": [
            {"name": "before", "type": ["null", row], "default": None},
            {"name": "after", "type": ["null", "Value"], "default": None},
            {"name": "op", "type": "string"},
        ],
    }


def decoder(*schemas: tuple[int, dict[str, Any] | str]) -> AvroDecoder:
    cache = WriterSchemas(None)
    for sid, schema in schemas:
        cache.add(RegisteredSchema(sid, schema if isinstance(schema, str) else json.dumps(schema)))
    return AvroDecoder(cache)


def wire(sid: int, schema: dict[str, Any], datum: Any) -> bytes:
    return encode(sid, parse_schema(json.loads(json.dumps(schema))), datum)


def rec(value: bytes | None, key: bytes | None = None, offset: int = 5) -> SourceRecord:
    return SourceRecord("shop.items", 2, offset, key, value)


# ---------------------------------------------------------------------- shapes and logical types


def test_a_plain_row_maps_to_the_same_change_as_json_with_millis_as_epoch_seconds() -> None:
    d = decoder((7, ROW))
    change = d.decode(
        rec(wire(7, ROW, {"ITEM_ID": "i1", "PRICE": 9.5, "CREATION_TIMESTAMP": 1_700_000_000_999})), ITEMS
    )
    assert change.op is Op.UPSERT and change.record_id == "i1"
    assert change.fields == {"PRICE": 9.5, "CREATION_TIMESTAMP": 1_700_000_000}
    schema = DatasetSchema.load(CONFIG / "schemas/items.avsc", ITEMS)
    assert json.loads(schema.build_record(change.record_id, change.fields)["properties"]) == {
        "price": 9.5,
        "creationTimestamp": 1_700_000_000,
    }


def test_auto_format_detects_the_magic_byte_and_still_reads_json() -> None:
    d = decoder((7, ROW))
    avro = d.decode(rec(wire(7, ROW, {"ITEM_ID": "a", "PRICE": 1.0, "CREATION_TIMESTAMP": 0})), ITEMS, "auto")
    as_json = d.decode(rec(b'{"ITEM_ID": "a", "PRICE": 1.0, "CREATION_TIMESTAMP": 0}'), ITEMS, "auto")
    assert avro == as_json


def test_debezium_envelope_with_decimal_micros_date_uuid_zoned_and_variable_scale() -> None:
    row = {
        "type": "record",
        "name": "Value",
        "fields": [
            {"name": "item_id", "type": "long"},
            {"name": "PRICE", "type": {"type": "bytes", "logicalType": "decimal", "precision": 8, "scale": 2}},
            {"name": "A", "type": ["null", {"type": "long", "connect.name": "io.debezium.time.MicroTimestamp"}]},
            {"name": "B", "type": {"type": "int", "logicalType": "date"}},
            {"name": "C", "type": {"type": "string", "logicalType": "uuid"}},
            {"name": "D", "type": {"type": "string", "connect.name": "io.debezium.time.ZonedTimestamp"}},
            {
                "name": "E",
                "type": {
                    "type": "record",
                    "name": "VariableScaleDecimal",
                    "namespace": "io.debezium.data",
                    "connect.name": "io.debezium.data.VariableScaleDecimal",
                    "fields": [{"name": "scale", "type": "int"}, {"name": "value", "type": "bytes"}],
                },
            },
            {"name": "F", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        ],
    }
    schema = {**envelope(row), "namespace": "shop"}
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    after = {
        "item_id": 42,
        "PRICE": Decimal("19.99"),
        "A": 1_700_000_000_123_456,
        "B": 19_000,
        "C": str(u),
        "D": "2023-11-14T22:13:20Z",
        "E": {"scale": 3, "value": (-12345).to_bytes(2, "big", signed=True)},
        "F": 1_700_000_001_500_000,
    }
    change = decoder((3, schema)).decode(rec(wire(3, schema, {"before": None, "after": after, "op": "r"})), ITEMS)
    assert change.record_id == "42"  # integer ids become their decimal form, as in JSON
    assert change.fields == {
        "PRICE": 19.99,
        "A": 1_700_000_000,
        "B": 19_000 * 86_400,
        "C": str(u),
        "D": 1_700_000_000,
        "E": -12.345,
        "F": 1_700_000_001,
    }


def test_debezium_delete_takes_the_id_of_the_before_row_and_unknown_ops_are_decode_errors() -> None:
    schema = envelope(ROW)
    d = decoder((4, schema))
    before = {"ITEM_ID": "gone", "PRICE": 1.0, "CREATION_TIMESTAMP": 0}
    change = d.decode(rec(wire(4, schema, {"before": before, "after": None, "op": "d"})), ITEMS)
    assert (change.op, change.record_id) == (Op.DELETE, "gone")
    with pytest.raises(DecodeError, match=r"shop.items/2@5: unknown Debezium op 't'.*schema id 4"):
        d.decode(rec(wire(4, schema, {"before": None, "after": None, "op": "t"})), ITEMS)
    with pytest.raises(DecodeError, match="has no 'after' row"):
        d.decode(rec(wire(4, schema, {"before": None, "after": None, "op": "u"})), ITEMS)


def test_the_id_comes_from_an_avro_or_text_key_when_the_row_has_none() -> None:
    key_schema = {"type": "record", "name": "Key", "fields": [{"name": "ITEM_ID", "type": "string"}]}
    d = decoder((7, ROW), (8, key_schema), (9, '"string"'), (10, {"type": "record", "name": "K", "fields": []}))
    value = wire(7, ROW, {"ITEM_ID": None, "PRICE": 2.0, "CREATION_TIMESTAMP": 0})
    assert d.decode(rec(value, wire(8, key_schema, {"ITEM_ID": "from-key"})), ITEMS).record_id == "from-key"
    assert d.decode(rec(value, encode(9, parse_schema("string"), "k2")), ITEMS).record_id == "k2"
    assert d.decode(rec(value, b'{"ITEM_ID": 17}'), ITEMS).record_id == "17"
    assert d.decode(rec(value, b"plain-text"), ITEMS).record_id == "plain-text"
    with pytest.raises(DecodeError, match="no id: the value has no ITEM_ID/itemId"):
        d.decode(rec(value, None), ITEMS)
    with pytest.raises(DecodeError, match="no id"):
        d.decode(rec(value, encode(10, parse_schema({"type": "record", "name": "K", "fields": []}), {})), ITEMS)


def test_a_tombstone_under_format_avro_is_a_delete_of_the_key() -> None:
    change = decoder().decode(rec(None, b"i9"), ITEMS, "avro")
    assert (change.op, change.record_id) == (Op.DELETE, "i9")


def test_a_tombstone_with_an_avro_key_is_a_delete_of_the_key_id() -> None:
    # Debezium writes a tombstone after each delete, keyed like the delete: an Avro key record. Read as text, an
    # integer id >= 64 is not valid UTF-8 (zigzag varint bytes >= 0x80): the tombstone was dead-lettered.
    key_schema = {"type": "record", "name": "Key", "fields": [{"name": "ITEM_ID", "type": "long"}]}
    d = decoder((8, key_schema))
    key = wire(8, key_schema, {"ITEM_ID": 1000})
    change = d.decode(rec(None, key), ITEMS, "avro")
    assert (change.op, change.record_id) == (Op.DELETE, "1000")


# ---------------------------------------------------------------------- bad records


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (
            b"\x00\x00\x00\x00\x07\x07garbage!",
            r"shop.items/2@5: the value does not decode with schema id 7: IndexError: a union",
        ),
        (None, r"the value has 3 bytes left after the Avro record of schema id 7"),
        (b'{"ITEM_ID": "x"}', r"not in the Confluent Avro wire format \(first byte 0x7b"),
        (b"\x00\x00\x07", r"not in the Confluent Avro wire format"),
    ],
)
def test_undecodable_bytes_are_decode_errors_naming_the_schema_id(value: bytes | None, fragment: str) -> None:
    d = decoder((7, ROW))
    if value is None:
        value = wire(7, ROW, {"ITEM_ID": "a", "PRICE": 1.0, "CREATION_TIMESTAMP": 0}) + b"abc"
    with pytest.raises(DecodeError, match=fragment) as info:
        d.decode(rec(value), ITEMS, "avro")
    assert info.value.stage == "decode"


def test_nested_values_and_non_record_schemas_are_decode_errors() -> None:
    nested = {
        "type": "record",
        "name": "N",
        "fields": [{"name": "ITEM_ID", "type": "string"}, {"name": "TAGS", "type": {"type": "array", "items": "int"}}],
    }
    d = decoder((1, nested), (2, '"string"'))
    with pytest.raises(DecodeError, match="only scalar values, but 'TAGS' holds a list"):
        d.decode(rec(wire(1, nested, {"ITEM_ID": "a", "TAGS": [1]})), ITEMS)
    with pytest.raises(DecodeError, match=r"schema \(id 2\) is not an Avro record"):
        d.decode(rec(encode(2, parse_schema("string"), "x")), ITEMS)


def test_magic_byte_without_a_registry_is_a_decode_error_saying_so() -> None:
    with pytest.raises(DecodeError, match=r"schema id 7.*no schema_registry is configured"):
        decoder().decode(rec(wire(7, ROW, {"ITEM_ID": "a", "PRICE": 1.0, "CREATION_TIMESTAMP": 0})), ITEMS)


def test_schemas_that_are_not_plain_avro_are_dead_lettered_not_retried() -> None:
    cache = WriterSchemas(None)
    with pytest.raises(ValueError, match="PROTOBUF schema, not Avro"):
        cache.add(RegisteredSchema(5, "syntax = 'proto3';", "PROTOBUF"))
    with pytest.raises(ValueError, match="references other schemas, which were not resolved"):
        cache.add(RegisteredSchema(6, json.dumps(ROW), references=({"name": "x", "subject": "s", "version": 1},)))


# ---------------------------------------------------------------------- the cache and its fetches


class FakeRegistry:
    def __init__(self, schemas: dict[int, dict[str, Any]], failures: int = 0) -> None:
        self.schemas, self.failures, self.calls = schemas, failures, 0

    async def schema(self, schema_id: int) -> RegisteredSchema:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise RegistryUnavailable("registry down")
        if schema_id not in self.schemas:
            raise SchemaNotFound(f"schema id {schema_id} is not in the schema registry (404, error 40403)")
        return RegisteredSchema(schema_id, json.dumps(self.schemas[schema_id]))


async def test_a_missing_schema_is_fetched_once_with_back_off_and_unknown_ids_become_decode_errors() -> None:
    registry = FakeRegistry({7: ROW}, failures=3)
    cache = WriterSchemas(registry, base_delay_s=0.001, max_delay_s=0.004)
    resolved: list[int] = []
    cache.on_resolved = lambda: resolved.append(len(cache))
    d = AvroDecoder(cache)
    value = wire(7, ROW, {"ITEM_ID": "a", "PRICE": 1.0, "CREATION_TIMESTAMP": 0})
    for _ in range(3):  # asked three times while fetching: one fetch
        with pytest.raises(SchemaPending):
            d.decode(rec(value), ITEMS)
    await wait_until(lambda: resolved, timeout=5, what="the fetch to end")
    assert registry.calls == 4 and cache.failing is None  # three failures, then the answer
    assert d.decode(rec(value), ITEMS).record_id == "a"

    unknown = bytes([0]) + UNKNOWN_SCHEMA_ID.to_bytes(4, "big") + b"\x02x"
    with pytest.raises(SchemaPending):
        d.decode(rec(unknown), ITEMS)
    await wait_until(lambda: len(resolved) == 2, timeout=5, what="the 404")
    with pytest.raises(DecodeError, match=f"schema id {UNKNOWN_SCHEMA_ID} is not in the schema registry"):
        d.decode(rec(unknown), ITEMS)
    assert registry.calls == 5  # the unknown id is remembered for a while


def test_the_cache_is_bounded_least_recently_used_first() -> None:
    cache = WriterSchemas(None, max_size=2)
    for sid in (1, 2):
        cache.add(RegisteredSchema(sid, json.dumps(ROW)))
    cache.get(1, rec(b""), "the value")  # 1 is now the most recently used
    cache.add(RegisteredSchema(3, json.dumps(ROW)))
    assert len(cache) == 2
    with pytest.raises(DecodeError, match="no schema_registry"):  # 2 was evicted (and there is no registry)
        cache.get(2, rec(b""), "the value")
    assert cache.get(1, rec(b""), "the value").schema_id == 1


# ---------------------------------------------------------------------- the registry client and the local registry


async def test_the_sample_avro_stream_decodes_to_its_expected_properties(emulator) -> None:
    schemas = await register_avro_schemas(emulator.url)
    assert schemas.by_name == (await register_avro_schemas(emulator.url)).by_name  # registration is idempotent
    async with RegistryClient(SchemaRegistrySettings(url=emulator.url)) as client:
        cache = WriterSchemas(client)
        for sid, _ in schemas.by_name.values():
            cache.add(await client.schema(sid))
        with pytest.raises(SchemaNotFound):
            await client.schema(UNKNOWN_SCHEMA_ID)
    d = AvroDecoder(cache)
    cache.source = None  # an uncached id must not be fetched now: the unknown id is a decode error
    validators = {
        kind: DatasetSchema.load(CONFIG / f"schemas/{kind.value.lower()}.avsc", kind)
        for kind in (DatasetKind.ITEMS, DatasetKind.USERS)
    }
    events = list(generate(600, StreamSpec(items=50, users=20, bad_share=0.1, seed=3, avro=schemas)))
    assert sum(not e.valid for e in events) > 20
    for i, e in enumerate(events):
        kind = DatasetKind.ITEMS if e.topic == ITEMS_TOPIC else DatasetKind.USERS
        r = SourceRecord(e.topic, 0, i, e.key, e.value)
        if e.valid:
            change = d.decode(r, kind, "avro")
            built = validators[kind].build_record(change.record_id, change.fields)
            assert change.record_id == e.record_id
            assert json.loads(built["properties"]) == pytest.approx(e.expected), e
        else:
            with pytest.raises(RecordError):
                validators[kind].build_record(*(lambda c: (c.record_id, c.fields))(d.decode(r, kind, "avro")))


async def test_schema_references_are_resolved_through_subject_versions(emulator) -> None:
    async with RegistryClient(SchemaRegistrySettings(url=emulator.url)) as client:
        await client.register("shop.items.Value", ROW)
        ref = [{"name": "shop.items.Value", "subject": "shop.items.Value", "version": 1}]
        env = {
            **envelope(ROW),
            "fields": [{**f, "type": ["null", "shop.items.Value"]} for f in envelope(ROW)["fields"][:2]],
        }
        env["fields"].append({"name": "op", "type": "string"})
        sid = await client.register("shop.items-value", env, ref)
        with pytest.raises(RegistryUnavailable, match="422"):  # a reference to nothing
            await client.register("x-value", env, [{**ref[0], "version": 9}])
        assert (await client.schema(sid)).references == tuple(ref)
        cache = WriterSchemas(client)
        resolved: list[bool] = []
        cache.on_resolved = lambda: resolved.append(True)
        full = {**envelope(ROW)}
        after = {"ITEM_ID": "r1", "PRICE": 3.5, "CREATION_TIMESTAMP": 1_700_000_000_000}
        value = wire(sid, full, {"before": None, "after": after, "op": "c"})
        with pytest.raises(SchemaPending):
            AvroDecoder(cache).decode(rec(value), ITEMS)
        await wait_until(lambda: resolved, timeout=10, what="the schema and its reference to be fetched")
        change = AvroDecoder(cache).decode(rec(value), ITEMS)
    assert change.record_id == "r1" and change.fields == {"PRICE": 3.5, "CREATION_TIMESTAMP": 1_700_000_000}


async def test_local_registry_rest_subset(emulator) -> None:
    import aiohttp

    async with RegistryClient(SchemaRegistrySettings(url=emulator.url + "/")) as client:
        v1 = await client.register("s-value", ROW)
        v2 = await client.register("s-value", {**ROW, "fields": [*ROW["fields"], {"name": "X", "type": "int"}]})
        assert await client.register("other-value", ROW) == v1  # same schema, same id
        assert json.loads((await client.schema(v2)).text)["fields"][-1]["name"] == "X"
        with pytest.raises(RegistryUnavailable, match="HTTP 422"):
            await client.register("s-value", '{"type": "nonsense"}')
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{emulator.url}/subjects") as r:
            assert await r.json(content_type=None) == ["other-value", "s-value"]
        async with http.get(f"{emulator.url}/subjects/s-value/versions") as r:
            assert await r.json(content_type=None) == [1, 2]
        async with http.get(f"{emulator.url}/subjects/s-value/versions/latest") as r:
            assert (await r.json(content_type=None))["id"] == v2
        async with http.get(f"{emulator.url}/subjects/nope/versions/1") as r:
            assert r.status == 404 and (await r.json(content_type=None))["error_code"] == 40401
        async with http.post(f"{emulator.url}/_emulator/registry", json={"down": True}) as r:
            assert (await r.json())["down"] is True
    async with RegistryClient(SchemaRegistrySettings(url=emulator.url)) as client:
        with pytest.raises(RegistryUnavailable, match="HTTP 503"):
            await client.schema(v1)


async def test_registry_client_sends_credentials_and_maps_answers(tmp_path: Path, unused_tcp_port: int) -> None:
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        if request.match_info["id"] == "1":
            return web.json_response({"schema": json.dumps(ROW)})
        return web.json_response({"error_code": 404, "message": "HTTP 404 Not Found"}, status=404)

    app = web.Application()
    app.add_routes([web.get("/prefix/schemas/ids/{id}", handler)])
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    url = f"http://127.0.0.1:{unused_tcp_port}/prefix"
    token = tmp_path / "token"
    token.write_text("t0k3n\n")
    try:
        basic = SchemaRegistrySettings(url=url, basic_auth_user="u", basic_auth_password="p")
        async with RegistryClient(basic) as client:
            assert (await client.schema(1)).schema_id == 1
            with pytest.raises(RegistryUnavailable, match=r"HTTP 404.*is schema_registry.url the registry's base URL"):
                await client.schema(2)  # a 404 without error_code 40403: a wrong URL, not an unknown id
        async with RegistryClient(SchemaRegistrySettings(url=url, bearer_token_file=token)) as client:
            await client.schema(1)
    finally:
        await runner.cleanup()
    assert seen == ["Basic dTpw", "Basic dTpw", "Bearer t0k3n"]
    async with RegistryClient(SchemaRegistrySettings(url=url, request_timeout_s=2)) as client:
        with pytest.raises(RegistryUnavailable, match="ClientConnectorError"):
            await client.schema(1)  # nothing listens any more


# ---------------------------------------------------------------------- settings


def test_format_avro_needs_a_schema_registry_section() -> None:
    route = {
        "topic": "t",
        "kind": "items",
        "dataset_arn": "arn:aws:personalize:us-east-1:1:dataset/shop/ITEMS",
        "schema": CONFIG / "schemas/items.avsc",
        "format": "avro",
    }
    with pytest.raises(ConfigError, match=r"format avro, which needs a schema_registry section"):
        Settings.load(None, routes=[route])
    s = Settings.load(None, routes=[route], schema_registry={"url": "https://registry:8081"})
    assert s.schema_registry is not None and s.schema_registry.request_timeout_s == 10.0


@pytest.mark.parametrize(
    ("section", "fragment"),
    [
        ({"url": "registry:8081"}, "must start with http"),
        ({"url": "https://u:secret@registry:8081"}, "must not hold credentials"),
        ({"url": "http://r", "basic_auth_user": "u"}, "needs basic_auth_password"),
        ({"url": "http://r", "basic_auth_password": "p"}, "needs basic_auth_user"),
        ({"url": "http://r", "basic_auth_user": "u", "basic_auth_password": "p", "bearer_token": "t"}, "not both"),
        ({"url": "http://r", "bearer_token_file": "/nonexistent/token"}, "bearer_token_file: no such file"),
    ],
)
def test_bad_registry_settings_name_the_key(section: dict[str, Any], fragment: str) -> None:
    route = {"topic": "t", "kind": "items", "dataset_arn": "arn:aws:personalize:us-east-1:1:dataset/shop/ITEMS"}
    with pytest.raises(ConfigError, match="schema_registry") as info:
        Settings.load(None, routes=[{**route, "schema": CONFIG / "schemas/items.avsc"}], schema_registry=section)
    assert fragment in str(info.value)


def test_registry_secrets_come_from_the_environment_and_are_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGESTOR_SCHEMA_REGISTRY__URL", "https://registry:8081")
    monkeypatch.setenv("INGESTOR_SCHEMA_REGISTRY__BASIC_AUTH_USER", "svc")
    monkeypatch.setenv("INGESTOR_SCHEMA_REGISTRY__BASIC_AUTH_PASSWORD", "s3cret")
    route = {"topic": "t", "kind": "items", "dataset_arn": "arn:aws:personalize:us-east-1:1:dataset/shop/ITEMS"}
    s = Settings.load(None, routes=[{**route, "schema": CONFIG / "schemas/items.avsc", "format": "avro"}])
    assert s.schema_registry is not None and s.schema_registry.basic_auth_user == "svc"
    assert "s3cret" not in repr(s)


# ---------------------------------------------------------------------- fuzzing: garbage never escapes as a surprise


def test_arrays_of_zero_size_items_are_refused_as_a_poison_guard() -> None:
    bad = {"type": "record", "name": "R", "fields": [{"name": "X", "type": {"type": "array", "items": "null"}}]}
    with pytest.raises(ValueError, match="schema id 4: arrays of zero-size items"):
        WriterSchemas(None).add(RegisteredSchema(4, json.dumps(bad)))


_FUZZ_ROW = {
    "type": "record",
    "name": "Value",
    "fields": [
        {"name": "ITEM_ID", "type": ["null", "string", "long"]},
        {"name": "PRICE", "type": {"type": "bytes", "logicalType": "decimal", "precision": 8, "scale": 2}},
        {"name": "T", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "TAGS", "type": {"type": "array", "items": "string"}},
        {"name": "M", "type": {"type": "map", "values": ["null", "double"]}},
        {"name": "E", "type": {"type": "enum", "name": "E", "symbols": ["A", "B"]}},
        {"name": "F", "type": {"type": "fixed", "name": "F", "size": 3}},
    ],
}
_FUZZ = decoder((1, _FUZZ_ROW), (2, envelope(ROW)), (3, '"string"'))


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sid=st.sampled_from([1, 2, 3]),
    body=st.binary(max_size=64),
    key=st.one_of(st.none(), st.binary(max_size=12), st.binary(max_size=12).map(lambda b: b"\x00\x00\x00\x00\x03" + b)),
)
def test_any_bytes_after_the_header_give_a_change_or_a_decode_error(sid: int, body: bytes, key: bytes | None) -> None:
    value = b"\x00" + sid.to_bytes(4, "big") + body
    try:
        change = _FUZZ.decode(rec(value, key), ITEMS, "avro")
    except DecodeError as exc:
        assert str(exc).startswith("shop.items/2@5: ")
    else:
        assert isinstance(change.record_id, str) and change.op in (Op.UPSERT, Op.DELETE)


def test_tls_options_become_the_client_ssl_setup() -> None:
    import ssl

    from ingestor.registry import ssl_context

    assert ssl_context(SchemaRegistrySettings(url="http://r:8081")) is None
    assert ssl_context(SchemaRegistrySettings(url="https://r")) is None  # the system's trust store
    assert ssl_context(SchemaRegistrySettings(url="https://r", ssl_verify=False)) is False
    bundle = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
    if not bundle.is_file():
        pytest.skip("no CA bundle on this machine")
    ctx = ssl_context(SchemaRegistrySettings(url="https://r", ssl_cafile=bundle, ssl_verify=False))
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname
    ctx = ssl_context(SchemaRegistrySettings(url="https://r", ssl_cafile=bundle))
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.get_ca_certs()


async def test_https_registry_with_a_private_ca_verification_off_and_a_bad_certificate(
    tmp_path: Path, unused_tcp_port: int
) -> None:
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"schema": json.dumps(ROW)})

    app = web.Application()
    app.add_routes([web.get("/schemas/ids/{id}", handler)])
    runner = web.AppRunner(app)
    await runner.setup()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port, ssl_context=server_tls).start()
    url = f"https://127.0.0.1:{unused_tcp_port}"
    try:
        async with RegistryClient(SchemaRegistrySettings(url=url, ssl_cafile=cert)) as client:
            assert (await client.schema(1)).schema_id == 1
        async with RegistryClient(SchemaRegistrySettings(url=url, ssl_verify=False)) as client:
            assert (await client.schema(1)).schema_id == 1
        async with RegistryClient(SchemaRegistrySettings(url=url)) as client:  # not signed by a trusted CA
            with pytest.raises(RegistryUnavailable, match=r"(?i)certificate"):
                await client.schema(1)
    finally:
        await runner.cleanup()
