"""Where each route's schema comes from, resolved at start before the pipeline is built.

* A route without ``schema``: the dataset's live schema, fetched from the control plane (DescribeDataset →
  ``schemaArn`` → DescribeSchema). An unreachable control plane fails start-up naming the route and the setting.
* A route with a schema file: the file is used; when the control plane answers, the file is compared with the
  dataset's schema and every difference is logged (a field only in the file, only in the dataset, a changed type,
  nullability, categorical or textual flag). Unreachable: the file is used and that is said.

While running, :class:`SchemaWatch` notices a burst of InvalidInputException rejections on a dataset (``BURST``
records within ``BURST_WINDOW_S``), fetches the live schema again (at most once per ``REFETCH_EVERY_S``) and logs
whether it changed since start and how. The pipeline keeps the schema it started with: a restart picks up a change.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from ingestor.config import Route, Settings
from ingestor.control import LiveSchema
from ingestor.errors import ConfigError, FatalRouteError, IngestorError
from ingestor.events import EventBuilder
from ingestor.schema import DatasetSchema, FieldSpec

log = logging.getLogger(__name__)

BURST = 20  # rejected records ...
BURST_WINDOW_S = 60.0  # ... within this window make a burst
REFETCH_EVERY_S = 300.0  # at most one re-fetch per dataset in this time


class SchemaFetcher(Protocol):
    async def describe_dataset_schema(self, dataset_arn: str) -> LiveSchema: ...


@dataclass(frozen=True)
class ResolvedSchema:
    schema: DatasetSchema
    origin: str  # one line: where it came from and how it compares with the dataset's
    differences: tuple[str, ...] = ()
    live: DatasetSchema | None = None  # the dataset's schema as fetched at start (None: not reachable)
    events: EventBuilder | None = None  # interactions routes: the PutEvents event builder of the schema used


def _flags(spec: FieldSpec) -> str:
    branches = f'["null", "{spec.type}"]' if spec.nullable else f'"{spec.type}"'
    extra = "".join(f", {flag}" for flag in ("categorical", "textual") if getattr(spec, flag))
    return branches + extra


def schema_differences(file: DatasetSchema, live: DatasetSchema) -> list[str]:
    """What differs between a schema file and the dataset's schema, one sentence each (empty: the same)."""
    theirs = {f.name: f for f in live.fields}
    ours = {f.name: f for f in file.fields}
    out: list[str] = []
    for name, spec in ours.items():
        other = theirs.get(name)
        if other is None:
            out.append(f"field {name} ({_flags(spec)}) is in the file but not in the dataset")
        elif (spec.type, spec.nullable, spec.categorical, spec.textual) != (
            other.type,
            other.nullable,
            other.categorical,
            other.textual,
        ):
            out.append(f"field {name} is {_flags(spec)} in the file but {_flags(other)} in the dataset")
    for name, spec in theirs.items():
        if name not in ours:
            out.append(f"field {name} ({_flags(spec)}) is in the dataset but not in the file")
    return out


async def resolve_schemas(
    settings: Settings,
    fetcher: SchemaFetcher | None,
    *,
    timeout_s: float = 30.0,
    routes: Sequence[Route] | None = None,
) -> dict[str, ResolvedSchema]:
    """The schema of every route (by topic), fetching each dataset's once, all at once, within ``timeout_s``.

    ``fetcher`` None: schema files only (not compared). ConfigError naming the route and the setting when a route
    without a schema file cannot get its dataset's schema.
    """
    chosen = list(settings.routes if routes is None else routes)
    arns = list(dict.fromkeys(r.dataset_arn for r in chosen))

    async def fetch(arn: str) -> LiveSchema | Exception:
        assert fetcher is not None
        try:
            async with asyncio.timeout(timeout_s):
                return await fetcher.describe_dataset_schema(arn)
        except (IngestorError, TimeoutError) as exc:
            return exc if str(exc) else TimeoutError(f"no answer within {timeout_s:.0f} s")

    live: dict[str, LiveSchema | Exception] = {}
    if fetcher is not None:
        live = dict(zip(arns, await asyncio.gather(*(fetch(a) for a in arns)), strict=True))
    index = {r.topic: i for i, r in enumerate(settings.routes)}
    return {r.topic: _resolve(r, index[r.topic], live.get(r.dataset_arn)) for r in chosen}


def _resolve(route: Route, index: int, fetched: LiveSchema | Exception | None) -> ResolvedSchema:
    setting = f"routes[{index}].schema"
    live_schema: DatasetSchema | None = None
    if isinstance(fetched, LiveSchema):
        where = f"route {route.topic}: the schema {fetched.schema_arn} of {route.dataset_arn}"
        live_schema = DatasetSchema.from_avro(fetched.avro, route.dataset_kind, where=where)
    if route.schema_path is None:
        if live_schema is None:
            why = "no control plane" if fetched is None else f"{type(fetched).__name__}: {fetched}"
            hint = (
                "set personalize.control_endpoint_url (INGESTOR_PERSONALIZE__CONTROL_ENDPOINT_URL) so it can be "
                "fetched, grant personalize:DescribeDataset and personalize:DescribeSchema, or give the schema file "
                f"as {setting}"
            )
            if isinstance(fetched, FatalRouteError):
                hint = f"check the dataset ARN and the IAM permissions, or give the schema file as {setting}"
            raise ConfigError(
                f"route {route.topic}: {setting} is not set and the schema of {route.dataset_arn} cannot be "
                f"fetched ({why}); {hint}"
            )
        assert isinstance(fetched, LiveSchema)
        origin = f"the dataset's schema {fetched.schema_arn} (fetched at start)"
        events = route.event_builder(fetched.avro, where=where) if route.kind == "interactions" else None
        return ResolvedSchema(live_schema, origin, (), live_schema, events)
    schema = route.load_schema()
    events = route.event_builder() if route.kind == "interactions" else None
    if live_schema is None:
        why = "" if fetched is None else f": {type(fetched).__name__}: {fetched}"
        origin = f"file {route.schema_path} (not compared: the control plane did not answer{why})"
        return ResolvedSchema(schema, origin, events=events)
    diffs = tuple(schema_differences(schema, live_schema))
    if not diffs:
        return ResolvedSchema(schema, f"file {route.schema_path} (the same as the dataset's)", (), live_schema, events)
    return ResolvedSchema(
        schema,
        f"file {route.schema_path} (DIFFERS from the dataset's: {'; '.join(diffs)})",
        diffs,
        live_schema,
        events,
    )


def report(resolved: Mapping[str, ResolvedSchema], settings: Settings) -> None:
    """One log line per route; a WARNING for each schema file that differs from its dataset's schema."""
    for route in settings.routes:
        r = resolved[route.topic]
        if r.differences:
            log.warning(
                "route %s: the schema file %s differs from the schema of %s: %s. Records the file accepts but the "
                "dataset does not are rejected by the API (whole calls, then bisected); remove routes[].schema to "
                "validate against the dataset's own schema",
                route.topic,
                route.schema_path,
                route.dataset_arn,
                "; ".join(r.differences),
                extra={"route": route.topic, "schema_differences": list(r.differences)},
            )
        else:
            log.info("route %s: schema from %s", route.topic, r.origin)


class SchemaWatch:
    """A burst of API rejections on a dataset → fetch its live schema again and say whether it changed."""

    def __init__(
        self,
        fetcher: SchemaFetcher,
        resolved: Mapping[str, ResolvedSchema],
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetcher = fetcher
        self._clock = clock
        self._kind = {r.dataset_arn: r.dataset_kind for r in settings.routes}
        self._topic_arn = {r.topic: r.dataset_arn for r in settings.routes}
        # per dataset: the schema validated against (first route's) and the live one seen at start
        self._used: dict[str, DatasetSchema] = {}
        self._live: dict[str, DatasetSchema | None] = {}
        for route in settings.routes:
            self._used.setdefault(route.dataset_arn, resolved[route.topic].schema)
            self._live.setdefault(route.dataset_arn, resolved[route.topic].live)
        self._rejections: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._next_fetch: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.refetches = 0

    def started(self, resolved: Mapping[str, ResolvedSchema]) -> None:
        """The datasets' schemas as compared at start (when that happened after the pipeline was built)."""
        for topic, r in resolved.items():
            arn = self._topic_arn[topic]
            if r.live is not None and self._live.get(arn) is None:
                self._live[arn] = r.live

    def rejected(self, dataset_arn: str, count: int) -> None:
        """Called by the pipeline for every call outcome with InvalidInputException rejections."""
        now = self._clock()
        times = self._rejections[dataset_arn]
        times.extend([now] * count)
        while times and times[0] < now - BURST_WINDOW_S:
            times.popleft()
        if len(times) >= BURST and now >= self._next_fetch.get(dataset_arn, 0.0):
            self._next_fetch[dataset_arn] = now + REFETCH_EVERY_S
            times.clear()
            task = asyncio.get_running_loop().create_task(self._refetch(dataset_arn), name=f"refetch {dataset_arn}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _refetch(self, arn: str) -> None:
        self.refetches += 1
        try:
            fetched = await self._fetcher.describe_dataset_schema(arn)
            live = DatasetSchema.from_avro(fetched.avro, self._kind[arn], where=f"the schema {fetched.schema_arn}")
        except (IngestorError, TimeoutError) as exc:
            log.warning("%s: a burst of InvalidInputException; its schema could not be fetched again (%s)", arn, exc)
            return
        before = self._live.get(arn)
        changed = [] if before is None else schema_differences(before, live)
        used = schema_differences(self._used[arn], live)
        since = (
            "not known at start"
            if before is None
            else ("changed since start: " + "; ".join(changed) if changed else "unchanged since start")
        )
        validating = "the schema validated against matches it" if not used else "validating against: " + "; ".join(used)
        log.warning(
            "%s: a burst of InvalidInputException (≥ %d records in %.0f s); the dataset's schema is %s; %s%s",
            arn,
            BURST,
            BURST_WINDOW_S,
            since,
            validating,
            " — restart to validate against the new schema" if changed or used else "",
            extra={"dataset": arn, "schema_changed": bool(changed), "schema_differences": used},
        )
        self._live[arn] = live

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
