"""The emulator's core, free of HTTP: one ``handle`` per data-plane call, plus state, stats, reset and reconfigure.

Order of checks for a call (the first failure answers): signature present → injected latency → injected 5xx or
throttling → JSON body and request members → dataset / tracking id known → quota → every record matches → store.
Calls that reach the quota check spend quota whatever their records hold, as with any AWS rate limit.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ingestor.emulator.config import Api, EmulatorConfig
from ingestor.emulator.datasets import EVENT_STRING_MAX_CHARS, Dataset, check_list, check_string
from ingestor.emulator.deletions import DeletionJobs
from ingestor.emulator.errors import (
    ApiError,
    Outcome,
    incomplete_signature,
    invalid_input,
    missing_authentication,
    not_found,
    server_error,
    throttled,
)
from ingestor.emulator.faults import FaultInjector
from ingestor.emulator.imports import ImportJobs
from ingestor.emulator.quotas import Clock, Quotas
from ingestor.errors import ConfigError
from ingestor.schema import DatasetKind

# botocore's Arn shape for datasetArn.
ARN_MAX_CHARS = 256
_ARN_PATTERN = re.compile(r"arn:([a-z\d-]+):personalize:.*:.*:.+")
_SIGV4_PREFIX = "AWS4-HMAC-SHA256 "

# The request member that holds the records of each API, and the dataset kind it writes.
RECORDS_MEMBER = {Api.PUT_ITEMS: "items", Api.PUT_USERS: "users", Api.PUT_EVENTS: "eventList"}
_KIND = {Api.PUT_ITEMS: DatasetKind.ITEMS, Api.PUT_USERS: DatasetKind.USERS}


@dataclass
class Stats:
    """Counters since start or the last reset: calls and records by API and outcome, peaks."""

    calls: dict[Api, dict[Outcome, int]] = field(default_factory=lambda: _zeros())
    records: dict[Api, dict[Outcome, int]] = field(default_factory=lambda: _zeros())
    max_records_per_call: int = 0
    in_flight: int = 0
    max_concurrent_calls: int = 0
    # dataset group → API → {"calls": {outcome: n}, "records": accepted records}
    by_group: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def enter(self) -> None:
        self.in_flight += 1
        self.max_concurrent_calls = max(self.max_concurrent_calls, self.in_flight)

    def leave(self, api: Api, outcome: Outcome, records: int, group: str | None = None) -> None:
        self.in_flight -= 1
        self.calls[api][outcome] += 1
        self.records[api][outcome] += records
        self.max_records_per_call = max(self.max_records_per_call, records)
        if group is not None:
            by_api = self.by_group.setdefault(group, {}).setdefault(api.value, {"calls": {}, "records": 0})
            by_api["calls"][outcome.value] = by_api["calls"].get(outcome.value, 0) + 1
            if outcome is Outcome.OK:
                by_api["records"] += records

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": _plain(self.calls),
            "records": _plain(self.records),
            "total_calls": sum(sum(by.values()) for by in self.calls.values()),
            "max_records_per_call": self.max_records_per_call,
            "in_flight": self.in_flight,
            "max_concurrent_calls": self.max_concurrent_calls,
            "by_group": self.by_group,
        }


def _zeros() -> dict[Api, dict[Outcome, int]]:
    return {api: dict.fromkeys(Outcome, 0) for api in Api}


def _plain(counts: dict[Api, dict[Outcome, int]]) -> dict[str, dict[str, int]]:
    return {api.value: {o.value: n for o, n in by.items()} for api, by in counts.items()}


class EmulatorService:
    """Everything the endpoint does, callable directly from tests (``await service.handle(api, body, auth)``)."""

    def __init__(self, config: EmulatorConfig, *, clock: Clock = time.monotonic, wall_clock: Clock = time.time) -> None:
        """``clock`` paces quotas; ``wall_clock`` (Unix time) stamps what was accepted (``accepted_at`` in state)."""
        self.config = config
        self._wall_clock = wall_clock
        self.datasets = {d.arn: Dataset(d, config.max_events_kept) for d in config.datasets}
        self._by_tracking_id = {d.config.tracking_id: d for d in self.datasets.values() if d.config.tracking_id}
        self.quotas = Quotas(config.quotas, clock)
        self.faults = FaultInjector(config.faults, config.seed)
        self.stats = Stats()
        self._seq = 0
        self.imports = ImportJobs(config.imports, self.datasets, self._import_records)
        self.deletions = DeletionJobs(config.deletions, self.datasets, self.imports.object_store)

    def _import_records(self, dataset: Dataset, records: list[tuple[str, dict[str, Any]]], full: bool) -> None:
        self._seq = dataset.import_records(records, full, self._seq, self._wall_clock())

    async def aclose(self) -> None:
        """Cancel running import and deletion jobs, close the S3 client."""
        await self.deletions.aclose()
        await self.imports.aclose()

    async def handle(self, api: Api, body: bytes, authorization: str | None) -> None:
        """Serve one call; raises ApiError for every non-200 answer. Stored data changes only on success."""
        payload, parse_problem = _parse_body(body)
        records = payload.get(RECORDS_MEMBER[api]) if payload else None
        count = len(records) if isinstance(records, list) else 0
        outcome = Outcome.OK
        group = self._group_of(api, payload)
        self.stats.enter()
        try:
            check_signature(authorization)
            decision = self.faults.decide()
            if decision.delay_s > 0:
                await asyncio.sleep(decision.delay_s)
            if decision.status is not None:
                raise server_error(decision.status)
            if decision.throttle:
                raise throttled("Rate exceeded (injected fault)")
            if payload is None:
                raise invalid_input(parse_problem or "the request body must be a JSON object")
            if api is Api.PUT_EVENTS:
                self._put_events(payload)
            else:
                self._put_records(api, payload)
        except ApiError as exc:
            outcome = exc.outcome
            raise
        finally:
            self.stats.leave(api, outcome, count, group)

    def _group_of(self, api: Api, payload: Mapping[str, Any] | None) -> str | None:
        """The dataset group a call is counted against (stats by group), if the call names a known dataset."""
        if not payload:
            return None
        key = payload.get("trackingId") if api is Api.PUT_EVENTS else payload.get("datasetArn")
        if not isinstance(key, str):
            return None
        dataset = self._by_tracking_id.get(key) if api is Api.PUT_EVENTS else self.datasets.get(key)
        return dataset.config.group if dataset is not None else None

    def _put_records(self, api: Api, payload: Mapping[str, Any]) -> None:
        member = RECORDS_MEMBER[api]
        arn = payload.get("datasetArn")
        _reject_violations(
            [_arn_problem(arn), check_list(payload.get(member), member)],
        )
        dataset = self.datasets.get(arn)  # type: ignore[arg-type]  # a str: _arn_problem checked it
        if dataset is None:
            raise not_found(f"Could not find the dataset {arn}")
        if dataset.kind is not _KIND[api]:
            raise invalid_input(f"{api.value} needs an {_KIND[api].value} dataset; {arn} is {dataset.kind.value}")
        self._spend_quota(dataset, api)
        accepted = dataset.check_records(payload[member])
        self._seq = dataset.store_records(accepted, self._seq, self._wall_clock())

    def _put_events(self, payload: Mapping[str, Any]) -> None:
        tracking_id, session_id = payload.get("trackingId"), payload.get("sessionId")
        problems = [
            check_string(tracking_id, "trackingId", EVENT_STRING_MAX_CHARS),
            check_string(session_id, "sessionId", EVENT_STRING_MAX_CHARS),
            check_list(payload.get("eventList"), "eventList"),
        ]
        if "userId" in payload:
            problems.append(check_string(payload["userId"], "userId"))
        _reject_violations(problems)
        dataset = self._by_tracking_id.get(tracking_id)  # type: ignore[arg-type]  # checked above
        if dataset is None:
            raise not_found(f"Could not find an event tracker with tracking id {tracking_id}")
        self._spend_quota(dataset, Api.PUT_EVENTS)
        context = {"trackingId": tracking_id, "sessionId": session_id}
        if "userId" in payload:
            context["userId"] = payload["userId"]
        accepted = dataset.check_events(payload["eventList"], context)
        self._seq = dataset.store_events(accepted, self._seq, self._wall_clock())

    def _spend_quota(self, dataset: Dataset, api: Api) -> None:
        if not self.quotas.allow(dataset.config.group, api):
            raise throttled(f"Rate exceeded: {api.value} quota for dataset group {dataset.config.group}")

    # ------------------------------------------------------------------ control (the /_emulator routes)

    def state(self) -> dict[str, Any]:
        return {
            "datasets": {arn: d.to_json() for arn, d in self.datasets.items()},
            "import_jobs": self.imports.to_json(),
            "deletion_jobs": self.deletions.to_json(),
        }

    def reset(self) -> None:
        """Forget stored data, import jobs, counters and quota usage; restart the fault sequence from the seed."""
        self.imports.reset()
        self.deletions.reset()
        for dataset in self.datasets.values():
            dataset.clear()
        self.stats = Stats()
        self.quotas.reset()
        self.faults.reseed(self.config.seed)
        self._seq = 0

    def settings(self) -> dict[str, Any]:
        return {
            "quotas": self.quotas.config.model_dump(mode="json"),
            "faults": self.faults.config.model_dump(mode="json"),
            "imports": self.imports.config.model_dump(mode="json"),
            "deletions": self.deletions.config.model_dump(mode="json"),
            "seed": self.config.seed,
        }

    def reconfigure(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Change quotas, faults, imports and/or the seed at run time (partial sections merge); returns the new
        settings.

        New quotas start with full buckets; a new seed restarts the fault sequence; a new import duration applies
        to jobs created from then on. Raises ConfigError.
        """
        unknown = set(changes) - {"quotas", "faults", "imports", "deletions", "seed"}
        if unknown:
            raise ConfigError(
                f"only quotas, faults, imports, deletions and seed can change at run time, not {sorted(unknown)}"
            )
        self.config = self.config.updated(**changes)
        if "quotas" in changes:
            self.quotas.reconfigure(self.config.quotas)
        self.faults.reconfigure(self.config.faults)
        if "imports" in changes:
            self.imports.reconfigure(self.config.imports)
        if "deletions" in changes:
            self.deletions.config = self.config.deletions
        if "seed" in changes:
            self.faults.reseed(self.config.seed)
        return self.settings()


def _parse_body(body: bytes) -> tuple[dict[str, Any] | None, str | None]:
    try:
        payload = json.loads(body or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"the request body is not valid JSON ({exc})"
    if not isinstance(payload, dict):
        return None, "the request body must be a JSON object"
    return payload, None


def check_signature(authorization: str | None) -> None:
    """Any credentials are accepted, but the request must be SigV4-signed like the SDKs do it."""
    if not authorization:
        raise missing_authentication()
    if not authorization.startswith(_SIGV4_PREFIX) or "Credential=" not in authorization:
        raise incomplete_signature("Authorization header requires the AWS4-HMAC-SHA256 scheme with a Credential")


def _arn_problem(arn: Any) -> str | None:
    if not isinstance(arn, str):
        return f"datasetArn must be a string, got {'null' if arn is None else type(arn).__name__}"
    if len(arn) > ARN_MAX_CHARS:
        return f"datasetArn must be at most {ARN_MAX_CHARS} characters, got {len(arn)}"
    if not _ARN_PATTERN.fullmatch(arn):
        return f"datasetArn {arn!r} must match the pattern {_ARN_PATTERN.pattern}"
    return None


def _reject_violations(problems: list[str | None]) -> None:
    """Request-member violations, worded like AWS's validation errors."""
    found = [p for p in problems if p]
    if found:
        plural = "s" if len(found) > 1 else ""
        raise invalid_input(f"{len(found)} validation error{plural} detected: " + "; ".join(found))
