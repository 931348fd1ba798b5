"""A local Schema Registry: the Confluent REST subset an Avro producer and consumer need, served by the emulator.

* ``GET /schemas/ids/{id}`` → ``{"schema": "<Avro JSON>"}`` (404 with ``error_code`` 40403 when unknown);
* ``GET /subjects``, ``GET /subjects/{subject}/versions``, ``GET /subjects/{subject}/versions/{version|latest}``;
* ``POST /subjects/{subject}/versions`` with ``{"schema": "...", "references": [...]}`` registers an Avro schema
  (checked with fastavro, with the subject versions it references; 422 with 42201 when invalid) and answers
  ``{"id": N}``; the same schema keeps its id, under any subject.
* ``GET|POST /_emulator/registry``: ``{"down": true}`` makes every registry route answer 503 (an outage, for tests
  and demos) until ``{"down": false}``.

State is in memory; ids start at 1.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from fastavro import parse_schema

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


@dataclass
class SchemaRegistry:
    schemas: dict[int, str] = field(default_factory=dict)  # id → schema text
    references: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # id → its schema references
    subjects: dict[str, list[int]] = field(default_factory=dict)  # subject → ids by version (version = index + 1)
    down: bool = False
    requests: int = 0

    def register(self, subject: str, text: str, references: list[dict[str, Any]] | None = None) -> int:
        """Register (idempotent); raises ValueError when the text is not an Avro schema (with its references)."""
        refs = list(references or [])
        try:
            named: dict[str, Any] = {}
            self._parse_references(refs, named, depth=0)
            canonical = json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
            parse_schema(json.loads(text), named_schemas=named)
        except Exception as exc:  # JSON errors, fastavro's SchemaParseException, unknown references
            raise ValueError(f"Invalid schema: {type(exc).__name__}: {exc}") from exc
        sid = next((i for i, t in self.schemas.items() if t == canonical and self.references.get(i, []) == refs), None)
        if sid is None:
            sid = len(self.schemas) + 1
            self.schemas[sid] = canonical
            if refs:
                self.references[sid] = refs
        versions = self.subjects.setdefault(subject, [])
        if sid not in versions:
            versions.append(sid)
        return sid

    def _parse_references(self, refs: list[dict[str, Any]], named: dict[str, Any], depth: int) -> None:
        if depth > 10:
            raise ValueError("references nest too deeply")
        for ref in refs:
            ids = self.subjects.get(str(ref.get("subject")), [])
            version = ref.get("version")
            if not isinstance(version, int) or not 1 <= version <= len(ids):
                raise ValueError(f"reference {ref} names no registered subject version")
            sid = ids[version - 1]
            self._parse_references(self.references.get(sid, []), named, depth + 1)
            parse_schema(json.loads(self.schemas[sid]), named_schemas=named)

    def body(self, sid: int) -> dict[str, Any]:
        body: dict[str, Any] = {"schema": self.schemas[sid]}
        if sid in self.references:
            body["references"] = self.references[sid]
        return body


REGISTRY = web.AppKey("schema_registry", SchemaRegistry)


def add_routes(app: web.Application, registry: SchemaRegistry) -> None:
    app[REGISTRY] = registry
    app.add_routes(
        [
            web.get("/schemas/ids/{id}", _guarded(_schema_by_id)),
            web.get("/subjects", _guarded(_subjects)),
            web.get("/subjects/{subject}/versions", _guarded(_versions)),
            web.get("/subjects/{subject}/versions/{version}", _guarded(_version)),
            web.post("/subjects/{subject}/versions", _guarded(_register)),
            web.get("/_emulator/registry", _control),
            web.post("/_emulator/registry", _control),
        ]
    )


Handler = Callable[[web.Request, SchemaRegistry], Awaitable[web.Response]]


def _guarded(handler: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def guarded(request: web.Request) -> web.Response:
        registry = request.app[REGISTRY]
        registry.requests += 1
        if registry.down:
            return _error(503, 50301, "the schema registry is down (emulated outage)")
        return await handler(request, registry)

    return guarded


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, content_type=CONTENT_TYPE)


def _error(status: int, code: int, message: str) -> web.Response:
    return _json({"error_code": code, "message": message}, status)


def _int(text: str) -> int | None:
    return int(text) if text.isdigit() else None


async def _schema_by_id(request: web.Request, registry: SchemaRegistry) -> web.Response:
    sid = _int(request.match_info["id"])
    if sid is None or sid not in registry.schemas:
        return _error(404, 40403, f"Schema {request.match_info['id']} not found")
    return _json(registry.body(sid))


async def _subjects(request: web.Request, registry: SchemaRegistry) -> web.Response:
    return _json(sorted(registry.subjects))


async def _versions(request: web.Request, registry: SchemaRegistry) -> web.Response:
    ids = registry.subjects.get(request.match_info["subject"])
    if ids is None:
        return _error(404, 40401, f"Subject '{request.match_info['subject']}' not found.")
    return _json(list(range(1, len(ids) + 1)))


async def _version(request: web.Request, registry: SchemaRegistry) -> web.Response:
    subject, text = request.match_info["subject"], request.match_info["version"]
    ids = registry.subjects.get(subject)
    if ids is None:
        return _error(404, 40401, f"Subject '{subject}' not found.")
    version = len(ids) if text == "latest" else _int(text)
    if version is None or not 1 <= version <= len(ids):
        return _error(404, 40402, f"Version {text} not found.")
    sid = ids[version - 1]
    return _json({"subject": subject, "version": version, "id": sid, **registry.body(sid)})


async def _register(request: web.Request, registry: SchemaRegistry) -> web.Response:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(422, 42201, "the request body is not JSON")
    if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
        return _error(422, 42201, 'send {"schema": "<Avro schema as a JSON string>"}')
    if body.get("schemaType", "AVRO") != "AVRO":
        return _error(422, 42201, "only Avro schemas are supported here")
    refs = body.get("references") or []
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        return _error(422, 42201, "references must be a list of {name, subject, version}")
    try:
        sid = registry.register(request.match_info["subject"], body["schema"], refs)
    except ValueError as exc:
        return _error(422, 42201, str(exc))
    return _json({"id": sid})


async def _control(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    if request.method == "POST":
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("down"), bool):
            return web.json_response({"message": 'send {"down": true} or {"down": false}'}, status=400)
        registry.down = body["down"]
    return web.json_response(
        {"down": registry.down, "schemas": len(registry.schemas), "subjects": sorted(registry.subjects)}
    )
