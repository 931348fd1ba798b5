"""Writer schemas by id: a bounded least-recently-used cache, filled by background fetches from the Schema Registry.

``get`` is synchronous (the pipeline's hot path): a cached schema is returned; an uncached one starts a fetch and
raises :class:`SchemaPending` (the pipeline holds the record until ``on_resolved``). A fetch is retried with
exponential back-off and jitter while the registry is unavailable, never giving up (records wait, nothing is
dead-lettered for an outage); it ends with the schema (and the schemas it references), or with a failure that makes
``get`` raise a DecodeError: an id the registry does not know (asked again after ``UNKNOWN_ID_TTL_S``) or a schema
that cannot serve (not Avro, invalid).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from ingestor.avro_schema import Writer, compile_schema, fail
from ingestor.errors import IngestorError
from ingestor.metrics import Metrics
from ingestor.model import SourceRecord
from ingestor.registry import RegisteredSchema, RegistryUnavailable, SchemaNotFound

log = logging.getLogger(__name__)

UNKNOWN_ID_TTL_S: Final = 60.0  # an id the registry did not know is asked again after this long
MAX_REFERENCES: Final = 100  # schemas one writer schema may pull in through references (a guard against cycles)


@dataclass(frozen=True, slots=True)
class _Failed:
    reason: str
    until: float | None = None  # retried after this time (an unknown id); None: permanent (not an Avro schema)


class SchemaPending(IngestorError):
    """The record's writer schema is being fetched: hold the record (and its partition's later ones) until then."""

    def __init__(self, schema_id: int) -> None:
        self.schema_id = schema_id
        super().__init__(f"waiting for schema id {schema_id} from the schema registry")


class SchemaSource(Protocol):
    """Where writer schemas come from (the registry client, or a fake in tests)."""

    async def schema(self, schema_id: int) -> RegisteredSchema: ...

    async def version(self, subject: str, version: int | str) -> RegisteredSchema: ...


class WriterSchemas:
    """Writer schemas by id: a bounded LRU cache, filled by background fetches retried with back-off."""

    def __init__(
        self,
        source: SchemaSource | None,
        *,
        max_size: int = 1000,
        base_delay_s: float = 0.5,
        max_delay_s: float = 30.0,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.max_size = max_size
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.metrics = metrics
        self._clock = clock
        self._cache: OrderedDict[int, Writer | _Failed] = OrderedDict()
        self._fetching: dict[int, asyncio.Task[None]] = {}
        self.failing: str | None = None  # the registry's last error while a fetch is being retried
        self.on_resolved: Callable[[], None] = lambda: None  # a fetch ended (schema, or a permanent failure)

    def __len__(self) -> int:
        return len(self._cache)

    def add(self, registered: RegisteredSchema, references: Sequence[RegisteredSchema] = ()) -> Writer:
        """Compile and cache a schema (a fetch's result; also primes the cache in tests and benchmarks)."""
        writer = compile_schema(registered, references)
        self._put(registered.schema_id, writer)
        return writer

    def get(self, schema_id: int, record: SourceRecord, what: str) -> Writer:
        """The compiled writer schema; raises SchemaPending (fetch started) or DecodeError (unknown/unusable id)."""
        entry = self._cache.get(schema_id)
        if entry is not None:
            if type(entry) is Writer:
                self._cache.move_to_end(schema_id)
                return entry
            assert isinstance(entry, _Failed)
            if entry.until is None or self._clock() < entry.until:
                raise fail(record, f"{what}: {entry.reason}")
            del self._cache[schema_id]
        if self.source is None:
            raise fail(
                record,
                f"{what} is Avro in the Confluent wire format (schema id {schema_id}), but no schema_registry is "
                "configured",
            )
        self._fetch(schema_id)
        raise SchemaPending(schema_id)

    async def wait(self, schema_id: int) -> None:
        """Until the fetch of this id (started by ``get``) has ended: with a schema, or a permanent failure."""
        task = self._fetching.get(schema_id)
        if task is not None:
            await asyncio.shield(task)

    def _put(self, schema_id: int, entry: Writer | _Failed) -> None:
        self._cache[schema_id] = entry
        self._cache.move_to_end(schema_id)
        while len(self._cache) > self.max_size:
            self._cache.popitem(last=False)

    def _fetch(self, schema_id: int) -> None:
        if schema_id in self._fetching:
            return
        task = asyncio.get_running_loop().create_task(self._fetch_until_answered(schema_id), name=f"schema {schema_id}")
        self._fetching[schema_id] = task

    async def _fetch_until_answered(self, schema_id: int) -> None:
        assert self.source is not None
        delay = self.base_delay_s
        try:
            while True:
                try:
                    registered = await self.source.schema(schema_id)
                except SchemaNotFound as exc:
                    self._count("not_found")
                    self._put(schema_id, _Failed(str(exc), self._clock() + UNKNOWN_ID_TTL_S))
                    break
                except Exception as exc:  # RegistryUnavailable, or a surprise: records wait, we retry
                    self._count("error")
                    why = str(exc) if isinstance(exc, RegistryUnavailable) else f"{type(exc).__name__}: {exc}"
                    if self.failing is None:
                        log.warning(
                            "%s; records with schema id %d wait, retrying with back-off",
                            why,
                            schema_id,
                            exc_info=not isinstance(exc, RegistryUnavailable),
                        )
                    self.failing = why
                    await asyncio.sleep(random.uniform(delay / 2, delay))
                    delay = min(delay * 2, self.max_delay_s)
                    continue
                self._count("ok")
                try:
                    references = await self._references(registered)
                except SchemaNotFound as exc:
                    reason = f"schema id {schema_id} references a schema the registry does not have: {exc}"
                    self._put(schema_id, _Failed(reason, self._clock() + UNKNOWN_ID_TTL_S))
                    break
                except Exception as exc:
                    if not isinstance(exc, RegistryUnavailable):
                        log.warning("resolving the references of schema id %d failed", schema_id, exc_info=exc)
                    self.failing = str(exc)
                    await asyncio.sleep(random.uniform(delay / 2, delay))
                    delay = min(delay * 2, self.max_delay_s)
                    continue
                try:
                    self.add(registered, references)
                except ValueError as exc:
                    self._put(schema_id, _Failed(str(exc)))
                except Exception as exc:  # a surprise (RecursionError on a deeply nested schema): its records
                    # must still be answered (dead-lettered), or they and their partition would be held forever
                    log.warning("compiling schema id %d failed", schema_id, exc_info=exc)
                    self._put(schema_id, _Failed(f"schema id {schema_id} cannot be compiled: {type(exc).__name__}"))
                break
        finally:
            self._fetching.pop(schema_id, None)
        if not self._fetching and self.failing is not None:
            log.info("the schema registry answers again")
            self.failing = None
        self.on_resolved()

    async def _references(self, registered: RegisteredSchema) -> list[RegisteredSchema]:
        """The schemas ``registered`` references, transitively, dependencies first (each once)."""
        assert self.source is not None
        out: list[RegisteredSchema] = []
        seen: set[tuple[str, str]] = set()

        async def visit(reg: RegisteredSchema) -> None:
            for ref in reg.references:
                key = (str(ref.get("subject")), str(ref.get("version")))
                if key in seen:
                    continue
                seen.add(key)
                if len(seen) > MAX_REFERENCES:
                    raise SchemaNotFound(f"more than {MAX_REFERENCES} referenced schemas")
                dep = await self.source.version(*key)  # type: ignore[union-attr]
                await visit(dep)
                out.append(dep)

        await visit(registered)
        return out

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.registry_requests.labels(outcome).inc()

    async def aclose(self) -> None:
        tasks = list(self._fetching.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._fetching.clear()
