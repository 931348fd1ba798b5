"""The HTTP face of the emulator: Personalize Events' rest-json wire format, a control-plane stub, inspection.

* ``POST /items`` (PutItems), ``POST /users`` (PutUsers), ``POST /events`` (PutEvents): 200 with ``{}`` on
  success; errors carry the code in ``x-amzn-ErrorType`` and ``{"message": ...}`` in the body, as botocore parses.
* ``POST /`` with ``X-Amz-Target: AmazonPersonalize.<Operation>``: the JSON 1.1 control plane, dispatched through
  ``CONTROL_PLANE`` (operation name → handler): dataset import jobs (``imports.OPERATIONS``), the datasets' schemas
  (``schemas.OPERATIONS``) and data deletion jobs (``deletions.OPERATIONS``); add a module's operations to serve more.
* ``GET /_emulator/state``, ``GET /_emulator/stats``, ``POST /_emulator/reset``, ``GET|POST /_emulator/config``:
  unauthenticated inspection and run-time configuration for tests, demos and people.
* ``/schemas/...``, ``/subjects/...``: a local Schema Registry (``schema_registry.url`` = the emulator's URL) and
  ``GET|POST /_emulator/registry`` to start and end an emulated registry outage (see ``registry.py``).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ingestor.emulator.client import EmulatorClient
from ingestor.emulator.config import Api, EmulatorConfig
from ingestor.emulator.deletions import OPERATIONS as DELETION_JOB_OPERATIONS
from ingestor.emulator.errors import ApiError, invalid_input, unknown_operation
from ingestor.emulator.imports import OPERATIONS as IMPORT_JOB_OPERATIONS
from ingestor.emulator.quotas import Clock
from ingestor.emulator.registry import SchemaRegistry, add_routes
from ingestor.emulator.schemas import OPERATIONS as SCHEMA_OPERATIONS
from ingestor.emulator.service import EmulatorService, check_signature
from ingestor.errors import ConfigError

log = logging.getLogger(__name__)

SERVICE = web.AppKey("service", EmulatorService)
# Ten records of 32,000 characters, JSON-escaped by the SDK (up to 6 bytes a character), fit comfortably.
MAX_BODY_BYTES = 16 * 1024 * 1024
CONTROL_PLANE_PREFIX = "AmazonPersonalize."

ControlPlaneHandler = Callable[[EmulatorService, dict[str, Any]], Awaitable[dict[str, Any]]]
# Operation name (e.g. "DescribeDataset") → handler returning the JSON response.
CONTROL_PLANE: dict[str, ControlPlaneHandler] = {
    **IMPORT_JOB_OPERATIONS,  # CreateDatasetImportJob, DescribeDatasetImportJob, ListDatasetImportJobs
    **SCHEMA_OPERATIONS,  # DescribeDataset, DescribeSchema
    **DELETION_JOB_OPERATIONS,  # CreateDataDeletionJob, DescribeDataDeletionJob, ListDataDeletionJobs
}


def create_app(service: EmulatorService, registry: SchemaRegistry | None = None) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[SERVICE] = service
    app.add_routes(
        [
            web.post("/items", _data_plane(Api.PUT_ITEMS)),
            web.post("/users", _data_plane(Api.PUT_USERS)),
            web.post("/events", _data_plane(Api.PUT_EVENTS)),
            web.post("/", _control_plane),
            web.get("/_emulator/state", _state),
            web.get("/_emulator/stats", _stats),
            web.post("/_emulator/reset", _reset),
            web.get("/_emulator/config", _get_config),
            web.post("/_emulator/config", _set_config),
        ]
    )
    add_routes(app, registry or SchemaRegistry())  # the Schema Registry subset, same port (see emulator/registry.py)
    return app


def _data_plane(api: Api) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            await request.app[SERVICE].handle(api, body, request.headers.get("Authorization"))
        except ApiError as exc:
            return rest_json_error(exc)
        return web.json_response({}, headers=_request_id())

    return handler


def rest_json_error(exc: ApiError) -> web.Response:
    """An error as rest-json services send it: botocore takes the code from ``x-amzn-ErrorType``."""
    headers = {"x-amzn-ErrorType": exc.code, **_request_id()}
    return web.json_response({"message": exc.message}, status=exc.status, headers=headers)


async def _control_plane(request: web.Request) -> web.Response:
    """JSON 1.1 dispatch on ``X-Amz-Target``; every operation is unknown until CONTROL_PLANE has handlers."""
    target = request.headers.get("X-Amz-Target")
    operation = target.removeprefix(CONTROL_PLANE_PREFIX) if target else ""
    handler = CONTROL_PLANE.get(operation) if target and target.startswith(CONTROL_PLANE_PREFIX) else None
    try:
        check_signature(request.headers.get("Authorization"))
        if handler is None:
            raise unknown_operation(target)
        try:
            payload = json.loads(await request.read() or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise invalid_input(f"the request body is not valid JSON ({exc})") from exc
        if not isinstance(payload, dict):
            raise invalid_input("the request body must be a JSON object")
        result = await handler(request.app[SERVICE], payload)
    except ApiError as exc:
        return _json11_error(exc)
    return _json11_response(result)


def _json11_response(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(body), status=status, content_type="application/x-amz-json-1.1", headers=_request_id()
    )


def _json11_error(exc: ApiError) -> web.Response:
    return _json11_response({"__type": exc.code, "message": exc.message}, exc.status)


def _request_id() -> dict[str, str]:
    return {"x-amzn-RequestId": str(uuid.uuid4())}


async def _state(request: web.Request) -> web.Response:
    return web.json_response(request.app[SERVICE].state())


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[SERVICE].stats.to_json())


async def _reset(request: web.Request) -> web.Response:
    request.app[SERVICE].reset()
    return web.json_response({"reset": True})


async def _get_config(request: web.Request) -> web.Response:
    return web.json_response(request.app[SERVICE].settings())


async def _set_config(request: web.Request) -> web.Response:
    try:
        changes = await request.json()
        if not isinstance(changes, dict):
            raise ConfigError('send a JSON object such as {"faults": {"fail_rate": 0.2}}')
        return web.json_response(request.app[SERVICE].reconfigure(changes))
    except (ConfigError, json.JSONDecodeError) as exc:
        return web.json_response({"message": str(exc)}, status=400)


# ---------------------------------------------------------------------- in-process use


@dataclass(frozen=True)
class RunningEmulator:
    """A started emulator: its base ``url`` (the SDK's endpoint_url), the in-process ``service`` and a ``client``."""

    url: str
    host: str
    port: int
    service: EmulatorService
    client: EmulatorClient
    registry: SchemaRegistry = field(default_factory=SchemaRegistry)  # its URL is ``url`` too


@asynccontextmanager
async def running_emulator(
    config: EmulatorConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    clock: Clock = time.monotonic,
    access_log: bool = False,
) -> AsyncIterator[RunningEmulator]:
    """Serve the emulator on the current event loop until the block exits (port 0: any free port)."""
    service = EmulatorService(config, clock=clock)
    registry = SchemaRegistry()
    runner = web.AppRunner(
        create_app(service, registry),
        access_log=log if access_log else None,
        handle_signals=False,
        shutdown_timeout=2.0,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = int(runner.addresses[0][1])
        url = f"http://{_url_host(host)}:{bound_port}"
        async with EmulatorClient(url) as client:
            yield RunningEmulator(url, host, bound_port, service, client, registry)
    finally:
        await runner.cleanup()
        await service.aclose()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
