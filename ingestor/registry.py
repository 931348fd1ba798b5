"""A small async client of a Confluent-compatible Schema Registry (the REST subset an Avro consumer needs).

``schema(id)`` fetches a writer schema by its global id (``GET /schemas/ids/{id}``); ``version(subject, version)``
fetches a schema it references (``GET /subjects/{subject}/versions/{version}``); ``register(subject, schema)``
registers one (``POST /subjects/{subject}/versions``, for producers: the demo, tests, benchmarks). One aiohttp session
for the service's lifetime, with basic auth or a bearer token (read from its mounted file on every request, so a
rotated token is picked up), TLS options and a per-request timeout. Answers are mapped to two errors:

* :class:`SchemaNotFound`: the registry says the id does not exist (HTTP 404 with Confluent's ``error_code`` 40403).
  Permanent: records with this id are dead-lettered.
* :class:`RegistryUnavailable`: anything else (connection refused, timeout, 5xx, 401/403, a 404 without that code —
  usually a wrong ``url``). Transient: the caller retries with back-off; records wait, nothing is dead-lettered.
"""

from __future__ import annotations

import base64
import json
import ssl
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp

from ingestor.config import SchemaRegistrySettings
from ingestor.errors import IngestorError

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
SCHEMA_NOT_FOUND = 40403  # Confluent's error_code for an unknown schema id
SUBJECT_NOT_FOUND, VERSION_NOT_FOUND = 40401, 40402  # ... for an unknown subject / version (schema references)


class RegistryError(IngestorError):
    """A Schema Registry request failed."""


class SchemaNotFound(RegistryError):
    """The registry answered that the schema id does not exist: records carrying it can never be decoded."""


class RegistryUnavailable(RegistryError):
    """The registry could not answer now (down, slow, refusing our credentials): try again later."""


@dataclass(frozen=True, slots=True)
class RegisteredSchema:
    schema_id: int
    text: str  # the schema as the registry stores it (JSON text for Avro)
    schema_type: str = "AVRO"
    references: tuple[dict[str, Any], ...] = ()


def ssl_context(settings: SchemaRegistrySettings) -> ssl.SSLContext | bool | None:
    """The TLS setup for aiohttp: None (defaults), False (no verification) or a context with our files."""
    if not settings.url.startswith("https://"):
        return None
    if settings.ssl_cafile is None and settings.ssl_certfile is None:
        return None if settings.ssl_verify else False
    ctx = ssl.create_default_context(cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None)
    if settings.ssl_certfile is not None and settings.ssl_keyfile is not None:
        ctx.load_cert_chain(str(settings.ssl_certfile), str(settings.ssl_keyfile))
    if not settings.ssl_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class RegistryClient:
    """One client per service; the HTTP session opens on first use, inside the running loop."""

    def __init__(self, settings: SchemaRegistrySettings) -> None:
        self.settings = settings
        self.base_url = settings.url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=settings.request_timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _headers(self) -> dict[str, str]:
        """Accept + Authorization (basic or bearer); secrets from the settings or read from their mounted files."""
        s = self.settings
        headers = {"Accept": CONTENT_TYPE}
        if s.basic_auth_user:
            if s.basic_auth_password is not None:
                password = s.basic_auth_password.get_secret_value()
            else:
                assert s.basic_auth_password_file is not None  # the settings check requires one of them
                password = s.basic_auth_password_file.read_text(encoding="utf-8").strip()
            pair = f"{s.basic_auth_user}:{password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        elif s.bearer_token is not None:
            headers["Authorization"] = f"Bearer {s.bearer_token.get_secret_value()}"
        elif s.bearer_token_file is not None:
            headers["Authorization"] = f"Bearer {s.bearer_token_file.read_text(encoding='utf-8').strip()}"
        return headers

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        if self._session is None:
            tls = ssl_context(self.settings)
            connector = aiohttp.TCPConnector(ssl=True if tls is None else tls, limit=8)
            self._session = aiohttp.ClientSession(timeout=self._timeout, connector=connector)
        url = self.base_url + path
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = self._headers()
            if data is not None:
                headers["Content-Type"] = CONTENT_TYPE
            async with self._session.request(method, url, data=data, headers=headers) as resp:
                text = await resp.text()
                try:
                    payload = json.loads(text) if text else None
                except json.JSONDecodeError:
                    payload = text
                return resp.status, payload
        except TimeoutError as exc:  # asyncio's (the total timeout) and aiohttp's ServerTimeoutError alike
            raise RegistryUnavailable(
                f"schema registry {self.base_url}: {method} {path} got no answer within "
                f"{self.settings.request_timeout_s:g} s (schema_registry.request_timeout_s)"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise RegistryUnavailable(f"schema registry {self.base_url}: {type(exc).__name__}: {exc}") from exc

    async def schema(self, schema_id: int) -> RegisteredSchema:
        """The writer schema with this id. Raises SchemaNotFound or RegistryUnavailable."""
        status, payload = await self._request("GET", f"/schemas/ids/{schema_id}")
        if status == 200 and isinstance(payload, dict) and isinstance(payload.get("schema"), str):
            return _registered(schema_id, payload)
        if status == 404 and isinstance(payload, dict) and payload.get("error_code") == SCHEMA_NOT_FOUND:
            raise SchemaNotFound(f"schema id {schema_id} is not in the schema registry (404, error 40403)")
        raise RegistryUnavailable(_describe(self.base_url, f"GET /schemas/ids/{schema_id}", status, payload))

    async def version(self, subject: str, version: int | str) -> RegisteredSchema:
        """A subject's schema version (a schema reference). Raises SchemaNotFound or RegistryUnavailable."""
        path = f"/subjects/{quote(subject, safe='')}/versions/{version}"
        status, payload = await self._request("GET", path)
        if status == 200 and isinstance(payload, dict) and isinstance(payload.get("schema"), str):
            return _registered(int(payload.get("id") or 0), payload)
        codes = (SUBJECT_NOT_FOUND, VERSION_NOT_FOUND)
        if status == 404 and isinstance(payload, dict) and payload.get("error_code") in codes:
            raise SchemaNotFound(f"subject {subject!r} version {version} is not in the schema registry")
        raise RegistryUnavailable(_describe(self.base_url, f"GET {path}", status, payload))

    async def register(
        self, subject: str, schema: str | dict[str, Any], references: list[dict[str, Any]] | None = None
    ) -> int:
        """Register an Avro schema under a subject (idempotent: the same schema keeps its id); returns the id."""
        text = schema if isinstance(schema, str) else json.dumps(schema)
        body: dict[str, Any] = {"schema": text}
        if references:
            body["references"] = references
        status, payload = await self._request("POST", f"/subjects/{quote(subject, safe='')}/versions", body)
        if status == 200 and isinstance(payload, dict) and isinstance(payload.get("id"), int):
            return int(payload["id"])
        raise RegistryUnavailable(_describe(self.base_url, f"POST /subjects/{subject}/versions", status, payload))


def _registered(schema_id: int, payload: dict[str, Any]) -> RegisteredSchema:
    refs = payload.get("references") or ()
    if not isinstance(refs, list | tuple) or not all(isinstance(r, dict) for r in refs):
        refs = ()
    return RegisteredSchema(schema_id, payload["schema"], str(payload.get("schemaType") or "AVRO"), tuple(refs))


def _describe(base_url: str, request: str, status: int, payload: Any) -> str:
    message = payload.get("message") if isinstance(payload, dict) else payload
    hint = ""
    if status in (401, 403):
        hint = "; check schema_registry.basic_auth_* / bearer_token"
    elif status == 404:
        hint = "; is schema_registry.url the registry's base URL?"
    return f"schema registry {base_url}: {request} answered HTTP {status}: {str(message)[:200]}{hint}"
