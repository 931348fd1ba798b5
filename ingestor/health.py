"""HTTP endpoints on ``metrics.port``: ``/metrics`` (Prometheus text), ``/healthz`` (liveness), ``/readyz``."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

Check = Callable[[], str | None]  # None = fine, else the reason it is not


class HealthServer:
    def __init__(self, registry: CollectorRegistry, host: str, port: int, *, live: Check, ready: Check) -> None:
        self._registry = registry
        self._host, self._port = host, port
        self._live, self._ready = live, ready
        self._runner: web.AppRunner | None = None
        self.port = port

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._check(lambda: self._live()))
        app.router.add_get("/readyz", self._check(lambda: self._ready()))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        addresses = self._runner.addresses  # port 0 → the port the OS picked
        if addresses:
            self.port = int(addresses[0][1])
        log.info("metrics and health on http://%s:%d (/metrics /healthz /readyz)", self._host, self.port)

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    @staticmethod
    def _check(check: Check) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            problem = check()
            if problem is None:
                return web.json_response({"status": "ok"})
            return web.json_response({"status": "fail", "reason": problem}, status=503)

        return handler

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
