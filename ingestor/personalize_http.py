"""A lean PutItems / PutUsers / PutEvents client: the requests botocore sends, for a fraction of its CPU
(``personalize.http: direct``).

Profiling the service at high call rates (bench/bench_cpu.py) puts ~65 % of its CPU inside aiobotocore's
``_make_api_call``: event hooks, a shape-walking serialiser, endpoint rules, the User-Agent rebuilt twice, response
parsing — about 2 ms of CPU per call, which caps one process at a few hundred calls/s. Both operations are one
rest-json POST (``/items``, ``/users``) with a JSON body, so this client builds that body itself (orjson), signs it
with botocore's own SigV4 signer and the session's credentials (refreshed exactly as botocore refreshes them), and
sends it over one pooled aiohttp session.

Errors come back as botocore's ``ClientError`` with the same ``Error.Code`` / ``Message`` / ``HTTPStatusCode`` that
botocore's rest-json parser would give (code from ``x-amzn-ErrorType``, else the body), and missing credentials as
``NoCredentialsError``, so the sender classifies every outcome exactly as with the SDK client.

Carried over from botocore: the endpoint (resolved once by the SDK client: region, FIPS, dual-stack), the
credentials chain, the proxy environment variables (``HTTP(S)_PROXY``, ``NO_PROXY``) and a custom CA bundle
(``AWS_CA_BUNDLE`` or ``ca_bundle`` in the AWS config file; without one, the system's trust store). Not carried over:
botocore's ``proxies`` *client config*, which the ingestor never sets.
"""

from __future__ import annotations

import datetime
import ssl
from typing import Any

import aiohttp
import orjson
from aiohttp.helpers import get_env_proxy_for_url
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import ClientError, NoCredentialsError
from yarl import URL

from ingestor.errors import ConfigError

USER_AGENT = "personalize-ingestor/direct"
_PATHS = {"PutItems": "/items", "PutUsers": "/users", "PutEvents": "/events"}


class DirectPersonalizeClient:
    """``put_items`` / ``put_users`` / ``put_events`` with the SDK's keyword arguments; close with ``aclose``."""

    def __init__(
        self,
        endpoint_url: str,
        region: str,
        credentials: Any,
        *,
        signing_name: str = "personalize",
        max_connections: int = 16,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        ca_bundle: str | None = None,
    ) -> None:
        """``credentials``: botocore / aiobotocore credentials (possibly refreshable), or None (then every call
        raises NoCredentialsError, as the SDK does). ``ca_bundle``: a PEM file of CAs to trust instead of the
        system's (botocore's ``ca_bundle`` setting)."""
        self._base = endpoint_url.rstrip("/")
        self._region = region
        self._credentials = credentials
        self._signing_name = signing_name
        self._limit = max_connections
        self._timeout = aiohttp.ClientTimeout(sock_connect=connect_timeout_s, sock_read=read_timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._proxy: tuple[URL | None, aiohttp.BasicAuth | None] = (None, None)
        self._ssl: ssl.SSLContext | bool = True
        if ca_bundle:
            try:
                self._ssl = ssl.create_default_context(cafile=ca_bundle)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"the CA bundle {ca_bundle!r} (AWS_CA_BUNDLE, or ca_bundle in the AWS config file) cannot be "
                    f"loaded: {exc}; point it at a readable PEM file of CA certificates, or unset it"
                ) from exc

    async def put_items(self, **kwargs: Any) -> dict[str, Any]:
        return await self._post("PutItems", kwargs)

    async def put_users(self, **kwargs: Any) -> dict[str, Any]:
        return await self._post("PutUsers", kwargs)

    async def put_events(self, **kwargs: Any) -> dict[str, Any]:
        # rest-json sends timestamps in the body as Unix time (botocore's default for this protocol)
        events = [{**e, "sentAt": _unix_time(e["sentAt"])} for e in kwargs.get("eventList", ())]
        return await self._post("PutEvents", {**kwargs, "eventList": events})

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _post(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        if self._credentials is None:
            raise NoCredentialsError()
        frozen = await _frozen(self._credentials)
        url = self._base + _PATHS[operation]
        body = orjson.dumps(params)
        request = AWSRequest(
            method="POST", url=url, data=body, headers={"Content-Type": "application/json", "User-Agent": USER_AGENT}
        )
        SigV4Auth(frozen, self._signing_name, self._region).add_auth(request)
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._limit, ssl=self._ssl)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
            self._proxy = _env_proxy(self._base)
        proxy, proxy_auth = self._proxy
        headers = dict(request.headers.items())
        async with self._session.post(url, data=body, headers=headers, proxy=proxy, proxy_auth=proxy_auth) as response:
            raw = await response.read()
            if response.status < 300:
                return _parsed_output(raw)
            raise ClientError(_error_response(response.status, response.headers, raw), operation)


def _parsed_output(raw: bytes) -> dict[str, Any]:
    """A 2xx answer's body: these operations have no output, and botocore ignores a body it cannot parse."""
    try:
        parsed = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _unix_time(value: Any) -> Any:
    """Whole seconds, as botocore serialises a rest-json timestamp at its default precision (an int in the body)."""
    if isinstance(value, datetime.datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=datetime.UTC)
        return int(aware.timestamp())
    return value


def _env_proxy(base_url: str) -> tuple[URL | None, aiohttp.BasicAuth | None]:
    """HTTP(S)_PROXY / NO_PROXY from the environment, as botocore honours them: read once for the one endpoint.
    (aiohttp's ``trust_env`` reads them — and ~/.netrc — again on every request: a quarter of the CPU per call.)"""
    try:
        return get_env_proxy_for_url(URL(base_url))
    except LookupError:
        return None, None


async def _frozen(credentials: Any) -> Any:
    """aiobotocore's refreshable credentials freeze asynchronously; botocore's synchronously."""
    result = credentials.get_frozen_credentials()
    if hasattr(result, "__await__"):
        result = await result
    return result


def _error_response(status: int, headers: Any, raw: bytes) -> dict[str, Any]:
    """What botocore's rest-json parser makes of an error answer (code from x-amzn-ErrorType, else the body)."""
    try:
        body = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    code = headers.get("x-amzn-ErrorType") or body.get("code") or body.get("Code") or body.get("__type") or str(status)
    code = str(code).split(":", 1)[0].rsplit("#", 1)[-1]
    message = body.get("message", body.get("Message", ""))
    metadata = {"HTTPStatusCode": status, "HTTPHeaders": dict(headers)}
    if request_id := headers.get("x-amzn-RequestId"):
        metadata["RequestId"] = request_id
    return {"Error": {"Code": code, "Message": str(message)}, "ResponseMetadata": metadata}
