"""Clients of the emulator's inspection routes (``/_emulator/...``), for tests, demos and scripts.

``EmulatorClient`` is async (aiohttp); use it as ``async with EmulatorClient(url) as client`` or call ``close()``.
``SyncEmulatorClient`` does the same with the standard library, for synchronous code.
"""

from __future__ import annotations

import json
import urllib.request
from types import TracebackType
from typing import Any

import aiohttp


class EmulatorClient:
    """Reads and resets a running emulator. The HTTP session opens on first use, inside the running loop."""

    def __init__(self, base_url: str, *, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> EmulatorClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def state(self) -> dict[str, Any]:
        """``{"datasets": {arn: {"kind", "records": {id: {"properties", "writes", "seq", "accepted_at"}}}}}``
        (``accepted_at``: Unix time of the latest accepted write); INTERACTIONS
        datasets have ``events`` and ``event_count`` instead of ``records``."""
        return await self._call("GET", "/_emulator/state")

    async def stats(self) -> dict[str, Any]:
        """``calls`` and ``records`` by API and outcome, ``max_records_per_call``, ``max_concurrent_calls``,
        ``by_group`` (dataset group → API → ``{"calls": {outcome: n}, "records": accepted}``)..."""
        return await self._call("GET", "/_emulator/stats")

    async def reset(self) -> None:
        """Clear stored data, counters and quota usage."""
        await self._call("POST", "/_emulator/reset")

    async def settings(self) -> dict[str, Any]:
        """The current quotas, faults and seed."""
        return await self._call("GET", "/_emulator/config")

    async def configure(self, **changes: Any) -> dict[str, Any]:
        """Change quotas / faults / seed at run time, e.g. ``configure(faults={"throttle_rate": 0.2})``."""
        return await self._call("POST", "/_emulator/config", changes)

    async def records(self, dataset_arn: str) -> dict[str, dict[str, Any]]:
        """The current properties of each id in an items or users dataset."""
        dataset = (await self.state())["datasets"][dataset_arn]
        return {rid: rec["properties"] for rid, rec in dataset["records"].items()}

    async def events(self, dataset_arn: str) -> list[dict[str, Any]]:
        """The events kept for an interactions dataset, oldest first."""
        events: list[dict[str, Any]] = (await self.state())["datasets"][dataset_arn]["events"]
        return events

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        async with self._session.request(method, self.base_url + path, json=body) as response:
            payload = await response.json()
            if response.status != 200:
                raise RuntimeError(f"{method} {path}: HTTP {response.status}: {payload.get('message', payload)}")
            result: dict[str, Any] = payload
            return result


class SyncEmulatorClient:
    """The same routes for synchronous code (urllib; nothing to close)."""

    def __init__(self, base_url: str, *, timeout_s: float = 10.0) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"expected an http(s) URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def state(self) -> dict[str, Any]:
        return self._call("GET", "/_emulator/state")

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/_emulator/stats")

    def reset(self) -> None:
        self._call("POST", "/_emulator/reset")

    def settings(self) -> dict[str, Any]:
        return self._call("GET", "/_emulator/config")

    def configure(self, **changes: Any) -> dict[str, Any]:
        return self._call("POST", "/_emulator/config", changes)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else b"" if method == "POST" else None
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked in __init__
            self.base_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310 - http(s) only
            result: dict[str, Any] = json.loads(response.read())
            return result
