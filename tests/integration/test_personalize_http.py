"""``personalize.http: direct``: the lean client sends what the SDK sends and reports errors the way the SDK does."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
from pathlib import Path
from typing import Any

import aioboto3
import aiohttp
import pytest
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError, NoCredentialsError

from ingestor.errors import ConfigError
from ingestor.personalize_http import DirectPersonalizeClient

pytestmark = pytest.mark.integration

ITEMS = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/ITEMS"
MISSING = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/NOPE"
CREDS = Credentials("AKIDTEST", "secret", "token")
ITEM = {"itemId": "i1", "properties": '{"price": 9.5, "creationTimestamp": 1700000000}'}
BAD = {"itemId": "i2", "properties": '{"price": "cheap", "creationTimestamp": 1700000000}'}


@pytest.fixture
async def direct(emulator: Any) -> Any:
    client = DirectPersonalizeClient(emulator.url, "us-east-1", CREDS)
    yield client
    await client.aclose()


async def test_accepted_records_are_stored(direct: DirectPersonalizeClient, emulator: Any) -> None:
    assert await direct.put_items(datasetArn=ITEMS, items=[ITEM]) == {}
    assert (await emulator.client.records(ITEMS))["i1"] == {"price": 9.5, "creationTimestamp": 1700000000}


@pytest.mark.parametrize(
    ("params", "quotas"),
    [
        ({"datasetArn": ITEMS, "items": [ITEM, BAD]}, None),  # InvalidInputException
        ({"datasetArn": MISSING, "items": [ITEM]}, None),  # ResourceNotFoundException
        ({"datasetArn": ITEMS, "items": [ITEM]}, {"enabled": True, "put_items": 1}),  # throttled (2nd call)
    ],
)
async def test_errors_match_the_sdk(start_emulator: Any, params: dict[str, Any], quotas: Any) -> None:
    emulator = await start_emulator(**({"quotas": quotas} if quotas else {}))
    direct = DirectPersonalizeClient(emulator.url, "us-east-1", CREDS)
    config = Config(retries={"total_max_attempts": 1, "mode": "standard"})
    session = aioboto3.Session()
    try:
        async with session.client(
            "personalize-events",
            endpoint_url=emulator.url,
            config=config,
            region_name="us-east-1",
            aws_access_key_id="a",
            aws_secret_access_key="b",
        ) as sdk:
            errors = []
            for call in (sdk.put_items, direct.put_items):
                if quotas:
                    await emulator.client.reset()  # a full bucket: the first call passes, the second is throttled
                    await call(**params)
                with pytest.raises(ClientError) as caught:
                    await call(**params)
                errors.append(caught.value.response)
    finally:
        await direct.aclose()
    sdk_error, direct_error = errors
    assert direct_error["Error"] == sdk_error["Error"]
    assert direct_error["ResponseMetadata"]["HTTPStatusCode"] == sdk_error["ResponseMetadata"]["HTTPStatusCode"]


async def test_no_credentials_is_the_sdks_error() -> None:
    with pytest.raises(NoCredentialsError):
        await DirectPersonalizeClient("http://127.0.0.1:1", "us-east-1", None).put_items(datasetArn=ITEMS, items=[])


async def test_the_request_on_the_wire_carries_a_valid_sigv4_signature(unused_tcp_port: int) -> None:
    """Recompute the signature over what the server received: any header or body changed after signing fails."""
    seen: list[tuple[str, dict[str, str], bytes]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((str(request.url), dict(request.headers), await request.read()))
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/items", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    direct = DirectPersonalizeClient(f"http://127.0.0.1:{unused_tcp_port}", "eu-west-1", CREDS)
    try:
        await direct.put_items(datasetArn=ITEMS, items=[ITEM])
    finally:
        await direct.aclose()
        await runner.cleanup()
    url, headers, body = seen[0]
    authorization = headers["Authorization"]
    signed = authorization.split("SignedHeaders=")[1].split(",")[0].split(";")
    assert "/eu-west-1/personalize/aws4_request" in authorization
    assert {"host", "x-amz-date", "content-type", "x-amz-security-token"} <= set(signed)
    lower = {k.lower(): v for k, v in headers.items()}
    replay = AWSRequest(method="POST", url=url, data=body, headers={h: lower[h] for h in signed})
    replay.context["timestamp"] = lower["x-amz-date"]
    signer = SigV4Auth(CREDS.get_frozen_credentials(), "personalize", "eu-west-1")
    expected = signer.signature(signer.string_to_sign(replay, signer.canonical_request(replay)), replay)
    assert authorization.endswith(f"Signature={expected}")


async def test_an_accepted_call_with_a_body_that_is_not_json_is_accepted(unused_tcp_port: int) -> None:
    """botocore ignores a 2xx body it cannot parse (PutItems has no output); raising here crashed the service."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="<html>OK</html>", content_type="text/html")

    app = web.Application()
    app.router.add_post("/items", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    direct = DirectPersonalizeClient(f"http://127.0.0.1:{unused_tcp_port}", "us-east-1", CREDS)
    try:
        assert await direct.put_items(datasetArn=ITEMS, items=[ITEM]) == {}
    finally:
        await direct.aclose()
        await runner.cleanup()


async def test_put_events_sends_what_the_sdk_sends(direct: DirectPersonalizeClient, emulator: Any) -> None:
    import datetime

    interactions = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/INTERACTIONS"
    sent_at = datetime.datetime(2023, 11, 14, 22, 13, 20, tzinfo=datetime.UTC)
    event = {"eventId": "e1", "eventType": "click", "itemId": "i1", "sentAt": sent_at}
    session = aioboto3.Session()
    async with session.client(
        "personalize-events",
        endpoint_url=emulator.url,
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
        region_name="us-east-1",
        aws_access_key_id="a",
        aws_secret_access_key="b",
    ) as sdk:
        await sdk.put_events(trackingId="shop-tracking-id", userId="u1", sessionId="s1", eventList=[event])
    await direct.put_events(
        trackingId="shop-tracking-id", userId="u1", sessionId="s1", eventList=[{**event, "eventId": "e2"}]
    )
    stored = await emulator.client.events(interactions)
    by_id = {e.get("eventId"): e for e in stored}
    assert set(by_id) >= {"e1", "e2"}
    sdk_event, direct_event = by_id["e1"], by_id["e2"]
    own = {"eventId", "seq", "accepted_at"}  # what differs by design, or is the endpoint's own bookkeeping
    assert {k: v for k, v in sdk_event.items() if k not in own} == {
        k: v for k, v in direct_event.items() if k not in own
    }
    assert direct_event["sentAt"] == int(sent_at.timestamp()) and isinstance(direct_event["sentAt"], int)


def test_sent_at_is_whole_seconds_as_botocore_serialises_it() -> None:
    """botocore writes a rest-json timestamp as an int (its default precision drops the fraction); 1700000000.0 in
    the body would be a different value to anything comparing the JSON."""
    from botocore.serialize import create_serializer
    from botocore.session import get_session

    from ingestor.personalize_http import _unix_time

    model = get_session().get_service_model("personalize-events").operation_model("PutEvents")
    serializer = create_serializer("rest-json", include_validation=False)
    for sent_at in (
        datetime.datetime(2023, 11, 14, 22, 13, 20, 987654, tzinfo=datetime.UTC),
        datetime.datetime(2023, 11, 14, 22, 13, 20),  # naive: UTC, as botocore reads it
        datetime.datetime(2023, 11, 14, 23, 13, 20, tzinfo=datetime.timezone(datetime.timedelta(hours=1))),
    ):
        params = {"trackingId": "t", "sessionId": "s", "eventList": [{"eventType": "click", "sentAt": sent_at}]}
        body = json.loads(serializer.serialize_to_request(params, model)["body"])
        assert _unix_time(sent_at) == body["eventList"][0]["sentAt"] == 1700000000
        assert type(_unix_time(sent_at)) is type(body["eventList"][0]["sentAt"])


def test_the_proxy_comes_from_the_environment_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from ingestor.personalize_http import _env_proxy

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    proxy, _ = _env_proxy("https://personalize-events.us-east-1.amazonaws.com")
    assert str(proxy) == "http://proxy.internal:3128"
    monkeypatch.setenv("NO_PROXY", "amazonaws.com")
    assert _env_proxy("https://personalize-events.us-east-1.amazonaws.com") == (None, None)
    assert _env_proxy("http://127.0.0.1:8099") == (None, None)  # no HTTP_PROXY for plain http


def _tls_files(folder: Path) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for 127.0.0.1 signed by it: (ca.pem, server.pem, server.key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def cert(subject: str, key: Any, issuer: str, signer: Any, *, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
            builder = builder.add_extension(san, critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_cert = cert("ingestor test CA", ca_key, "ingestor test CA", ca_key, ca=True)
    server_cert = cert("127.0.0.1", server_key, "ingestor test CA", ca_key, ca=False)
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


async def test_a_custom_ca_bundle_is_trusted_as_botocore_trusts_it(tmp_path: Path, unused_tcp_port: int) -> None:
    """AWS_CA_BUNDLE / ca_bundle (an endpoint behind a TLS-inspecting proxy or a private CA): trusted with it,
    refused without it."""
    ca, server_cert, server_key = _tls_files(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(server_cert, server_key)

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/items", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port, ssl_context=server_tls).start()
    url = f"https://127.0.0.1:{unused_tcp_port}"
    trusting = DirectPersonalizeClient(url, "us-east-1", CREDS, ca_bundle=str(ca))
    default = DirectPersonalizeClient(url, "us-east-1", CREDS)
    try:
        assert await trusting.put_items(datasetArn=ITEMS, items=[ITEM]) == {}
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await default.put_items(datasetArn=ITEMS, items=[ITEM])
    finally:
        await trusting.aclose()
        await default.aclose()
        await runner.cleanup()


def test_an_unreadable_ca_bundle_is_a_configuration_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError, match=r"AWS_CA_BUNDLE.*nope\.pem|nope\.pem.*AWS_CA_BUNDLE"):
        DirectPersonalizeClient("https://127.0.0.1:1", "us-east-1", CREDS, ca_bundle=str(missing))


def test_the_ca_bundle_is_botocores_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from ingestor.app import _ca_bundle, personalize_session
    from ingestor.config import Settings

    schema = Path(__file__).parents[2] / "config/schemas/items.avsc"
    settings = Settings(
        kafka={"dead_letter_topic": "dlq"},
        routes=[{"topic": "t", "kind": "items", "dataset_arn": ITEMS, "schema": schema}],
    )
    monkeypatch.setenv("AWS_CA_BUNDLE", str(tmp_path / "corp-ca.pem"))
    assert _ca_bundle(personalize_session(settings)) == str(tmp_path / "corp-ca.pem")
    monkeypatch.delenv("AWS_CA_BUNDLE")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    assert _ca_bundle(personalize_session(settings)) is None
