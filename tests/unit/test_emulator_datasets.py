"""What the endpoint accepts and stores, called in-process (``EmulatorService.handle``): one test per rule."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from ingestor.emulator import Api, ApiError, EmulatorConfig, EmulatorService, FaultConfig, Outcome

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "emulator.yaml"
SHOP = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/"
ITEMS, USERS, INTERACTIONS = SHOP + "ITEMS", SHOP + "USERS", SHOP + "INTERACTIONS"
TRACKING_ID = "shop-tracking-id"
AUTH = "AWS4-HMAC-SHA256 Credential=test/20240101/us-east-1/personalize/aws4_request, SignedHeaders=host, Signature=0"


@pytest.fixture
def service() -> EmulatorService:
    return EmulatorService(EmulatorConfig.load(EXAMPLE, quotas={"enabled": False}, faults=FaultConfig()))


def item(item_id: str = "i1", **props: Any) -> dict[str, Any]:
    return {"itemId": item_id, "properties": json.dumps({"price": 9.5, "creationTimestamp": 1700000000, **props})}


def user(user_id: str = "u1", **props: Any) -> dict[str, Any]:
    return {"userId": user_id, "properties": json.dumps({"membership": "gold", **props})}


def event(**fields: Any) -> dict[str, Any]:
    return {"eventType": "click", "itemId": "i1", "sentAt": 1700000000.5, **fields}


async def call(service: EmulatorService, api: Api, body: dict[str, Any], auth: str | None = AUTH) -> None:
    await service.handle(api, json.dumps(body).encode(), auth)


async def put_items(service: EmulatorService, *items: dict[str, Any], arn: str = ITEMS) -> None:
    await call(service, Api.PUT_ITEMS, {"datasetArn": arn, "items": list(items)})


async def put_users(service: EmulatorService, *users: dict[str, Any]) -> None:
    await call(service, Api.PUT_USERS, {"datasetArn": USERS, "users": list(users)})


async def put_events(service: EmulatorService, *events: dict[str, Any], tracking_id: str = TRACKING_ID) -> None:
    body = {"trackingId": tracking_id, "userId": "u1", "sessionId": "s1", "eventList": list(events)}
    await call(service, Api.PUT_EVENTS, body)


async def rejected(coro: Any, code: str = "InvalidInputException") -> str:
    """Await a call that must fail with ``code``; returns the error message."""
    with pytest.raises(ApiError) as info:
        await coro
    assert info.value.code == code, info.value.message
    return info.value.message


def stored(service: EmulatorService, arn: str = ITEMS) -> dict[str, Any]:
    return {rid: rec["properties"] for rid, rec in service.state()["datasets"][arn]["records"].items()}


def padded(total_chars: int, base: dict[str, Any], key: str) -> str:
    """``base`` plus a categorical ``key`` whose |-separated values (each under 1,000) pad the JSON to the size."""
    overhead = len(json.dumps({**base, key: ""}))
    filler = "|".join(["a" * 999] * (total_chars // 1000 + 1))[: total_chars - overhead]
    text = json.dumps({**base, key: filler})
    assert len(text) == total_chars
    return text


# ---------------------------------------------------------------------- accepted


async def test_a_matching_item_is_stored_with_its_properties(service: EmulatorService) -> None:
    await put_items(service, item("i1", genres="a|b"))
    assert stored(service) == {"i1": {"price": 9.5, "creationTimestamp": 1700000000, "genres": "a|b"}}


async def test_latest_write_wins_and_writes_are_counted(service: EmulatorService) -> None:
    await put_items(service, item("i1", price=1), item("i2"))
    await put_items(service, item("i1", price=2))
    records = service.state()["datasets"][ITEMS]["records"]
    assert records["i1"]["properties"]["price"] == 2
    assert records["i1"]["writes"] == 2 and records["i2"]["writes"] == 1
    assert records["i1"]["seq"] > records["i2"]["seq"]


async def test_each_write_reports_when_it_was_accepted() -> None:
    now = [1_800_000_000.25]
    config = EmulatorConfig.load(EXAMPLE, quotas={"enabled": False}, faults=FaultConfig())
    service = EmulatorService(config, wall_clock=lambda: now[0])
    await put_items(service, item("i1"), item("i2"))
    now[0] += 1.5
    await put_items(service, item("i1", price=2))
    records = service.state()["datasets"][ITEMS]["records"]
    assert records["i1"]["accepted_at"] == 1_800_000_001.75  # the latest write's acceptance
    assert records["i2"]["accepted_at"] == 1_800_000_000.25


async def test_stats_count_calls_and_records_by_dataset_group(service: EmulatorService) -> None:
    await put_items(service, item("i1"), item("i2"))
    with pytest.raises(ApiError):
        await put_items(service, item("i3", price="cheap"))
    assert service.stats.to_json()["by_group"] == {
        "shop": {"PutItems": {"calls": {"ok": 1, "invalid_input": 1}, "records": 2}}
    }


async def test_numeric_strings_are_accepted(service: EmulatorService) -> None:
    await put_items(service, item(price="9.99", creationTimestamp="1700000000", numberOfRatings="12", inStock="true"))
    assert stored(service)["i1"]["numberOfRatings"] == "12"  # stored as sent


async def test_null_is_accepted_for_nullable_fields(service: EmulatorService) -> None:
    await put_items(service, item(genres=None, numberOfRatings=None, description=None))
    await put_users(service, user(age=None, gender=None))
    assert stored(service, USERS)["u1"] == {"membership": "gold", "age": None, "gender": None}


async def test_a_matching_event_is_appended(service: EmulatorService) -> None:
    await put_events(service, event(properties=json.dumps({"device": "ios"}), eventValue=1.5))
    await put_events(service, event(eventId="e2"))
    dataset = service.state()["datasets"][INTERACTIONS]
    assert dataset["event_count"] == 2
    first, second = dataset["events"]
    assert first["properties"] == {"device": "ios"} and first["userId"] == "u1" and first["sessionId"] == "s1"
    assert second["eventId"] == "e2"


# ---------------------------------------------------------------------- rejected by the schema


async def test_keys_must_be_camel_case(service: EmulatorService) -> None:
    body = {"itemId": "i1", "properties": json.dumps({"PRICE": 1, "CREATION_TIMESTAMP": 1})}
    message = await rejected(put_items(service, body))
    assert "unknown property 'PRICE'" in message


async def test_unknown_keys_are_rejected(service: EmulatorService) -> None:
    assert "unknown property 'colour'" in await rejected(put_items(service, item(colour="red")))


async def test_required_fields_must_be_present(service: EmulatorService) -> None:
    body = {"itemId": "i1", "properties": json.dumps({"price": 1})}
    assert "creationTimestamp (long) is required but missing" in await rejected(put_items(service, body))


async def test_required_fields_are_required_even_without_properties(service: EmulatorService) -> None:
    assert "membership" in await rejected(put_users(service, {"userId": "u1"}))


async def test_null_is_rejected_for_required_fields(service: EmulatorService) -> None:
    assert "may not be null" in await rejected(put_items(service, item(price=None)))


@pytest.mark.parametrize(
    ("props", "problem"),
    [({"price": "cheap"}, "must be a number"), ({"numberOfRatings": 1.5}, "must be an integer"),
     ({"inStock": "yes"}, "true or false"), ({"genres": 7}, "must be a string")],
)  # fmt: skip
async def test_values_must_match_the_field_type(service: EmulatorService, props: dict[str, Any], problem: str) -> None:
    assert problem in await rejected(put_items(service, item(**props)))


async def test_categorical_values_are_at_most_1000_characters(service: EmulatorService) -> None:
    await put_items(service, item(genres="a" * 1000 + "|" + "b" * 1000))
    message = await rejected(put_items(service, item(genres="short|" + "a" * 1001)))
    assert "1001 characters" in message


async def test_textual_values_are_at_most_20000_characters(service: EmulatorService) -> None:
    await put_items(service, item(description="d" * 20_000))
    assert "textual limit" in await rejected(put_items(service, item(description="d" * 20_001)))


@pytest.mark.parametrize("length", [0, 257])
async def test_ids_are_1_to_256_characters(service: EmulatorService, length: int) -> None:
    message = await rejected(put_items(service, item("x" * length)))
    assert f"itemId must be 1-256 characters, got {length}" in message


async def test_an_id_of_256_characters_is_accepted(service: EmulatorService) -> None:
    await put_items(service, item("x" * 256))
    await put_users(service, user("y" * 256))


async def test_item_properties_are_at_most_32000_characters(service: EmulatorService) -> None:
    base = {"price": 1, "creationTimestamp": 1}
    await put_items(service, {"itemId": "i1", "properties": padded(32_000, base, "genres")})
    message = await rejected(put_items(service, {"itemId": "i2", "properties": padded(32_001, base, "genres")}))
    assert "properties must be 1-32000 characters, got 32001" in message


async def test_user_properties_are_at_most_24000_characters(service: EmulatorService) -> None:
    base = {"membership": "gold"}
    await put_users(service, {"userId": "u1", "properties": padded(24_000, base, "gender")})
    message = await rejected(put_users(service, {"userId": "u2", "properties": padded(24_001, base, "gender")}))
    assert "properties must be 1-24000 characters, got 24001" in message


async def test_event_properties_are_at_most_1024_characters(service: EmulatorService) -> None:
    await put_events(service, event(properties=padded(1024, {}, "device")))
    message = await rejected(put_events(service, event(properties=padded(1025, {}, "device"))))
    assert "properties must be 1-1024 characters, got 1025" in message


@pytest.mark.parametrize(
    ("properties", "problem"),
    [("{not json", "not valid JSON"), ("[1, 2]", "must be a JSON object"), ("", "1-32000 characters"),
     ({"price": 1}, "must be a string")],
)  # fmt: skip
async def test_properties_must_be_a_json_object_string(service: EmulatorService, properties: Any, problem: str) -> None:
    assert problem in await rejected(put_items(service, {"itemId": "i1", "properties": properties}))


@pytest.mark.parametrize(
    ("fields", "problem"),
    [({"sentAt": None}, "sentAt must be a timestamp"), ({"eventType": ""}, "eventType must be 1-256"),
     ({"itemId": None}, "itemId must be a string"), ({"eventValue": "high"}, "eventValue must be a number"),
     ({"impression": []}, "impression must have 1-25"), ({"recommendationId": "r" * 41}, "recommendationId"),
     ({"properties": json.dumps({"DEVICE": "ios"})}, "unknown property 'DEVICE'")],
)  # fmt: skip
async def test_events_must_match(service: EmulatorService, fields: dict[str, Any], problem: str) -> None:
    assert problem in await rejected(put_events(service, event(**fields)))


async def test_item_id_is_required_when_the_interactions_schema_requires_it(service: EmulatorService) -> None:
    body = {"eventType": "click", "sentAt": 1.0}
    assert "itemId is required by the interactions schema" in await rejected(put_events(service, body))


# ---------------------------------------------------------------------- whole calls


async def test_eleven_records_are_rejected(service: EmulatorService) -> None:
    message = await rejected(put_items(service, *(item(f"i{n}") for n in range(11))))
    assert "items must have 1-10 members, got 11" in message
    assert stored(service) == {}


async def test_an_empty_call_is_rejected(service: EmulatorService) -> None:
    assert "eventList must have 1-10 members, got 0" in await rejected(put_events(service))


async def test_one_bad_record_of_ten_rejects_the_whole_call(service: EmulatorService) -> None:
    records = [item(f"i{n}") for n in range(9)] + [item("bad", price="cheap")]
    message = await rejected(put_items(service, *records))
    assert message.startswith("1 of 10 records did not match the dataset schema")
    assert "itemId 'bad'" in message
    assert stored(service) == {}


async def test_the_message_summarises_many_failures(service: EmulatorService) -> None:
    message = await rejected(put_items(service, *(item(f"i{n}", price="x") for n in range(10))))
    assert message.startswith("10 of 10 records") and "(and 7 more)" in message


async def test_an_unknown_dataset_is_not_found(service: EmulatorService) -> None:
    await rejected(put_items(service, item(), arn=SHOP + "NOPE"), "ResourceNotFoundException")


async def test_an_unknown_tracking_id_is_not_found(service: EmulatorService) -> None:
    await rejected(put_events(service, event(), tracking_id="nope"), "ResourceNotFoundException")


async def test_a_malformed_arn_is_invalid_input(service: EmulatorService) -> None:
    assert "must match the pattern" in await rejected(put_items(service, item(), arn="shop/ITEMS"))


async def test_items_cannot_go_to_a_users_dataset(service: EmulatorService) -> None:
    assert "PutItems needs an ITEMS dataset" in await rejected(put_items(service, item(), arn=USERS))


async def test_a_body_that_is_not_json_is_invalid_input(service: EmulatorService) -> None:
    await rejected(service.handle(Api.PUT_ITEMS, b"{oops", AUTH))


async def test_an_unsigned_call_is_refused(service: EmulatorService) -> None:
    body = {"datasetArn": ITEMS, "items": [item()]}
    await rejected(call(service, Api.PUT_ITEMS, body, auth=None), "MissingAuthenticationTokenException")
    await rejected(call(service, Api.PUT_ITEMS, body, auth="Basic dGVzdA=="), "IncompleteSignatureException")
    assert stored(service) == {}


# ---------------------------------------------------------------------- stats, quotas, faults, reset


async def test_stats_count_calls_and_records_by_api_and_outcome(service: EmulatorService) -> None:
    await put_items(service, item("a"), item("b"))
    await rejected(put_items(service, item("c", price="x")))
    await rejected(put_items(service, item(), arn=SHOP + "NOPE"), "ResourceNotFoundException")
    await rejected(put_items(service, *(item(f"i{n}") for n in range(11))))
    stats = service.stats.to_json()
    assert set(stats["calls"]["PutItems"]) == {o.value for o in Outcome}
    assert stats["calls"]["PutItems"]["ok"] == 1 and stats["records"]["PutItems"]["ok"] == 2
    assert stats["calls"]["PutItems"]["invalid_input"] == 2 and stats["records"]["PutItems"]["invalid_input"] == 12
    assert stats["calls"]["PutItems"]["not_found"] == 1
    assert stats["max_records_per_call"] == 11 and stats["total_calls"] == 4 and stats["in_flight"] == 0


async def test_quota_throttles_the_eleventh_call_in_a_second() -> None:
    now = [0.0]
    service = EmulatorService(EmulatorConfig.load(EXAMPLE, faults=FaultConfig()), clock=lambda: now[0])
    for n in range(10):
        await put_items(service, item(f"i{n}"))
    await put_users(service, user())  # a different API has its own quota
    message = await rejected(put_items(service, item("late")), "ThrottlingException")
    assert "dataset group shop" in message
    now[0] = 0.1
    await put_items(service, item("later"))
    assert "late" not in stored(service) and service.stats.calls[Api.PUT_ITEMS][Outcome.THROTTLED] == 1


async def test_injected_faults_come_before_validation(service: EmulatorService) -> None:
    service.reconfigure({"faults": {"fail_rate": 1.0, "fail_statuses": [503]}})
    await rejected(put_items(service, item()), "ServiceUnavailable")
    service.reconfigure({"faults": {"fail_rate": 0.0, "throttle_rate": 1.0}})
    await rejected(put_items(service, item()), "ThrottlingException")
    assert stored(service) == {}
    counts = service.stats.calls[Api.PUT_ITEMS]
    assert (counts[Outcome.SERVER_ERROR], counts[Outcome.THROTTLED]) == (1, 1)


async def test_concurrent_calls_are_counted_while_latency_is_injected(service: EmulatorService) -> None:
    service.reconfigure({"faults": {"latency_ms": 20}})
    await asyncio.gather(*(put_items(service, item(f"i{n}")) for n in range(5)))
    assert service.stats.max_concurrent_calls == 5 and service.stats.in_flight == 0


async def test_reset_clears_data_and_counters(service: EmulatorService) -> None:
    await put_items(service, item())
    await put_events(service, event())
    service.reset()
    state = service.state()["datasets"]
    assert state[ITEMS]["records"] == {} and state[INTERACTIONS]["events"] == []
    assert service.stats.to_json()["total_calls"] == 0


async def test_reconfigure_rejects_unknown_sections(service: EmulatorService) -> None:
    from ingestor.errors import ConfigError

    with pytest.raises(ConfigError, match="datasets"):
        service.reconfigure({"datasets": []})
    assert service.reconfigure({"quotas": {"put_items": 5}, "seed": 3})["quotas"]["put_items"] == 5
