"""The unmodified AWS SDKs (boto3 and aioboto3 ``personalize-events``) against the running emulator."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import aioboto3
import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from ingestor.emulator import SyncEmulatorClient

pytestmark = pytest.mark.integration

SHOP = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/"
ITEMS, USERS, INTERACTIONS = SHOP + "ITEMS", SHOP + "USERS", SHOP + "INTERACTIONS"
# botocore's "max_attempts" counts retries (max_attempts=1 means two attempts); "total_max_attempts" counts all.
NO_RETRIES = Config(retries={"total_max_attempts": 1, "mode": "standard"})
CREDENTIALS = {"region_name": "us-east-1", "aws_access_key_id": "test", "aws_secret_access_key": "test"}

Call = Callable[..., Awaitable[dict[str, Any]]]
OpenClient = Callable[..., Awaitable[Call]]


@pytest.fixture(params=["boto3", "aioboto3"])
async def open_client(request: pytest.FixtureRequest) -> AsyncIterator[OpenClient]:
    """``call = await open_client(url)``; ``await call("put_items", ...)`` works the same for both SDKs."""
    async with AsyncExitStack() as stack:

        async def open_(url: str, config: Config = NO_RETRIES, service: str = "personalize-events") -> Call:
            if request.param == "boto3":
                client = boto3.client(service, endpoint_url=url, config=config, **CREDENTIALS)
                stack.callback(client.close)

                async def call(operation: str, **params: Any) -> dict[str, Any]:
                    # boto3 blocks: run it in a worker thread so the in-process emulator keeps serving.
                    result: dict[str, Any] = await asyncio.to_thread(getattr(client, operation), **params)
                    return result

                return call
            session = aioboto3.Session()
            aclient = await stack.enter_async_context(
                session.client(service, endpoint_url=url, config=config, **CREDENTIALS)
            )

            async def acall(operation: str, **params: Any) -> dict[str, Any]:
                result: dict[str, Any] = await getattr(aclient, operation)(**params)
                return result

            return acall

        yield open_


def item(item_id: str, **props: Any) -> dict[str, str]:
    return {"itemId": item_id, "properties": json.dumps({"price": 1.5, "creationTimestamp": 1700000000, **props})}


async def error_of(awaitable: Awaitable[Any]) -> tuple[str, int, str]:
    """(code, HTTP status, message) of the ClientError the call must raise."""
    with pytest.raises(ClientError) as info:
        await awaitable
    response = info.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Message"]


async def test_accepted_calls_are_stored_and_counted(emulator: Any, open_client: OpenClient) -> None:
    call = await open_client(emulator.url)
    response = await call("put_items", datasetArn=ITEMS, items=[item("i1"), item("i2", genres="a|b")])
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    await call("put_users", datasetArn=USERS, users=[{"userId": "u1", "properties": '{"membership": "gold"}'}])
    await call(
        "put_events",
        trackingId="shop-tracking-id",
        userId="u1",
        sessionId="s1",
        eventList=[{"eventType": "click", "itemId": "i1", "sentAt": 1700000000, "properties": '{"device": "ios"}'}],
    )
    assert await emulator.client.records(ITEMS) == {
        "i1": {"price": 1.5, "creationTimestamp": 1700000000},
        "i2": {"price": 1.5, "creationTimestamp": 1700000000, "genres": "a|b"},
    }
    assert await emulator.client.records(USERS) == {"u1": {"membership": "gold"}}
    [event] = await emulator.client.events(INTERACTIONS)
    assert (event["itemId"], event["sentAt"], event["properties"]) == ("i1", 1700000000, {"device": "ios"})
    stats = await emulator.client.stats()
    assert [stats["calls"][api]["ok"] for api in ("PutItems", "PutUsers", "PutEvents")] == [1, 1, 1]
    assert stats["records"]["PutItems"]["ok"] == 2 and stats["max_records_per_call"] == 2


async def test_a_schema_mismatch_rejects_the_call(emulator: Any, open_client: OpenClient) -> None:
    call = await open_client(emulator.url)
    code, status, message = await error_of(
        call("put_items", datasetArn=ITEMS, items=[item("ok"), item("bad", PRICE=2)])
    )
    assert (code, status) == ("InvalidInputException", 400)
    assert message.startswith("1 of 2 records did not match") and "'PRICE'" in message
    assert await emulator.client.records(ITEMS) == {}
    assert (await emulator.client.stats())["calls"]["PutItems"]["invalid_input"] == 1


async def test_request_limits_are_enforced_by_the_server(emulator: Any, open_client: OpenClient) -> None:
    call = await open_client(emulator.url, Config(parameter_validation=False, retries={"total_max_attempts": 1}))
    code, status, message = await error_of(
        call("put_items", datasetArn=ITEMS, items=[item(f"i{n}") for n in range(11)])
    )
    assert (code, status) == ("InvalidInputException", 400) and "got 11" in message
    code, _, message = await error_of(call("put_items", datasetArn=ITEMS, items=[item("x" * 257)]))
    assert code == "InvalidInputException" and "got 257" in message
    assert (await emulator.client.stats())["max_records_per_call"] == 11


async def test_an_unknown_dataset_is_not_found(emulator: Any, open_client: OpenClient) -> None:
    call = await open_client(emulator.url)
    code, status, _ = await error_of(call("put_items", datasetArn=SHOP + "NOPE", items=[item("i1")]))
    assert (code, status) == ("ResourceNotFoundException", 404)
    assert (await emulator.client.stats())["calls"]["PutItems"]["not_found"] == 1


async def test_the_quota_throttles_the_eleventh_call(start_emulator: Any, open_client: OpenClient) -> None:
    emulator = await start_emulator(quotas={"enabled": True}, clock=lambda: 0.0)  # time stands still
    call = await open_client(emulator.url)
    results = await asyncio.gather(
        *(call("put_items", datasetArn=ITEMS, items=[item(f"i{n}")]) for n in range(12)), return_exceptions=True
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 2
    assert all(isinstance(e, ClientError) and e.response["Error"]["Code"] == "ThrottlingException" for e in errors)
    assert len(await emulator.client.records(ITEMS)) == 10
    counts = (await emulator.client.stats())["calls"]["PutItems"]
    assert (counts["ok"], counts["throttled"]) == (10, 2)


async def test_the_quota_throttles_a_fast_client(start_emulator: Any, open_client: OpenClient) -> None:
    emulator = await start_emulator(quotas={"enabled": True})
    call = await open_client(emulator.url)
    # 30 calls need 2 seconds at 10/s (after a burst of 10); these are sent far faster than that.
    for n in range(30):
        try:
            await call("put_items", datasetArn=ITEMS, items=[item(f"i{n}")])
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "ThrottlingException"
            break
    else:
        pytest.fail("30 back-to-back calls were not throttled")


async def test_injected_5xx(start_emulator: Any, open_client: OpenClient) -> None:
    emulator = await start_emulator(faults={"fail_rate": 1.0})
    call = await open_client(emulator.url)
    seen = set()
    for n in range(8):
        code, status, _ = await error_of(call("put_items", datasetArn=ITEMS, items=[item(f"i{n}")]))
        seen.add((code, status))
    assert seen == {("InternalServerError", 500), ("ServiceUnavailable", 503)}  # seed 1234 draws both
    assert await emulator.client.records(ITEMS) == {}
    assert (await emulator.client.stats())["calls"]["PutItems"]["server_error"] == 8


async def test_an_unsigned_request_is_refused(emulator: Any, open_client: OpenClient) -> None:
    call = await open_client(emulator.url, Config(signature_version=UNSIGNED, retries={"total_max_attempts": 1}))
    code, status, _ = await error_of(call("put_items", datasetArn=ITEMS, items=[item("i1")]))
    assert (code, status) == ("MissingAuthenticationTokenException", 403)
    assert (await emulator.client.stats())["calls"]["PutItems"]["unauthorized"] == 1
    assert await emulator.client.records(ITEMS) == {}


@pytest.mark.parametrize(
    ("fault", "code"), [("throttle_rate", "ThrottlingException"), ("fail_rate", "ServiceUnavailable")]
)
async def test_botocore_retries_throttling_and_5xx(start_emulator: Any, fault: str, code: str) -> None:
    emulator = await start_emulator(faults={fault: 1.0, "fail_statuses": [503]})
    client = boto3.client(
        "personalize-events",
        endpoint_url=emulator.url,
        config=Config(retries={"total_max_attempts": 2, "mode": "standard"}),
        **CREDENTIALS,
    )
    try:
        with pytest.raises(ClientError) as info:
            await asyncio.to_thread(client.put_items, datasetArn=ITEMS, items=[item("i1")])
    finally:
        client.close()
    assert info.value.response["Error"]["Code"] == code
    assert info.value.response["ResponseMetadata"]["RetryAttempts"] == 1
    assert (await emulator.client.stats())["total_calls"] == 2


async def test_the_control_plane_answers_unknown_operation(emulator: Any, open_client: OpenClient) -> None:
    call = await open_client(emulator.url, service="personalize")
    code, status, _ = await error_of(call("list_datasets"))
    assert (code, status) == ("UnknownOperationException", 400)


async def test_concurrent_calls_are_counted_with_injected_latency(emulator: Any) -> None:
    await emulator.client.configure(faults={"latency_ms": 300})
    async with aioboto3.Session().client(
        "personalize-events", endpoint_url=emulator.url, config=NO_RETRIES, **CREDENTIALS
    ) as client:
        await asyncio.gather(*(client.put_items(datasetArn=ITEMS, items=[item(f"i{n}")]) for n in range(8)))
    stats = await emulator.client.stats()
    assert stats["max_concurrent_calls"] == 8 and stats["in_flight"] == 0


async def test_inspection_routes_reset_and_reconfigure(emulator: Any, open_client: OpenClient) -> None:
    call = await open_client(emulator.url)
    await call("put_items", datasetArn=ITEMS, items=[item("i1")])
    settings = await emulator.client.configure(faults={"throttle_rate": 1.0}, quotas={"put_items": 5})
    assert settings["faults"]["throttle_rate"] == 1.0 and settings["quotas"]["put_items"] == 5
    code, _, _ = await error_of(call("put_items", datasetArn=ITEMS, items=[item("i2")]))
    assert code == "ThrottlingException"
    sync_client = SyncEmulatorClient(emulator.url)
    assert (await asyncio.to_thread(sync_client.stats))["calls"]["PutItems"]["throttled"] == 1
    await asyncio.to_thread(sync_client.reset)
    assert await emulator.client.records(ITEMS) == {}
    assert (await emulator.client.stats())["total_calls"] == 0
    assert (await emulator.client.settings())["faults"]["throttle_rate"] == 1.0  # reset keeps the settings
