"""One Kafka record (key/value bytes) → one :class:`~ingestor.model.Change`. The per-record hot path.

Value shapes (``fmt="auto"`` detects them per record; a forced format rejects any other shape):

* ``api``: ``{"itemId": "i1", "properties": {...}}`` — ``properties`` is an object or a JSON string holding one;
  absent or null means no fields. Detected by a ``properties`` key (or a lone id key).
* ``flat``: a row keyed by the schema's column names, ``{"ITEM_ID": "i1", "PRICE": 9.5}``. The id column may be
  spelled ``ITEM_ID``, ``item_id``, ``itemId`` — any key whose camelCase form is ``kind.id_key``. Every other key is a
  field, passed on unchanged (the schema stage validates and maps them).
* ``debezium``: ``{"before": ..., "after": ..., "op": "c|u|r|d", ...}``. ``c``/``u``/``r`` upsert the ``after`` row
  (a flat row); ``d`` deletes the id of the ``before`` row (or of the key). Detected by ``op`` with ``before`` or
  ``after``.

A wrapper is removed first, in every format: a value whose keys are exactly ``schema`` and ``payload`` (Kafka Connect's
JSON converter with schemas; ``schema`` may be null) or exactly ``payload`` (the schema stripped). Its payload must be
a JSON object — the value in one of the shapes above — or null, which counts as a tombstone; anything else is an error
(a row whose only column is named ``payload`` therefore reads as a wrapper: include the id column to send it as a
row). Only one wrapper level is removed. A tombstone (no value) is a DELETE of the key's id (or of None).

The key supplies the id only when the value has none (the value wins; the key is not even read otherwise). It is
UTF-8 text; when it parses as JSON, a string is that string, an integer its decimal form, an object its id column or,
with exactly one field, that field (a ``{"schema", "payload"}`` or ``{"payload"}`` key is unwrapped first, as a value
is; its payload must be a string, an integer or an object). Any other key text —
including ``true``, ``null`` and ``1.5`` — is the id as written.

Ids are strings, or integers (database primary keys) turned into their decimal form; any other JSON type is an error.
Their length is the schema stage's business. JSON is parsed with orjson: strict RFC 8259 (no NaN, no lone surrogates,
no invalid UTF-8), nesting at most 1024 deep; integers beyond 64 bits arrive as floats.
Every failure is a :class:`DecodeError` whose message starts with ``record.where``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Literal

import orjson

from ingestor.errors import DecodeError
from ingestor.model import Change, Op, SourceRecord
from ingestor.schema import DatasetKind, camel_case

Format = Literal["auto", "api", "flat", "debezium"]
FORMATS: Final[tuple[Format, ...]] = ("auto", "api", "flat", "debezium")

# The parser. orjson.JSONDecodeError is a ValueError; RecursionError is listed for parsers that recurse (stdlib json).
_loads: Callable[[bytes | str], Any] = orjson.loads
_PARSE_ERRORS: Final = (ValueError, RecursionError)

_QUOTE_MAX = 80
_NESTED: Final = frozenset({dict, list})
_JSON_TYPES: Final[Mapping[type, str]] = {
    dict: "an object",
    list: "a list",
    str: "a string",
    int: "an integer",
    float: "a float",
    bool: "a boolean",
    type(None): "null",
}
_JSON_START: Final = frozenset('"{[-0123456789')
_DEBEZIUM_UPSERT_OPS: Final = ("c", "u", "r")  # a tuple: op may be any JSON value, even unhashable
_KEY_PAYLOAD_TYPES: Final = frozenset({str, int, dict})  # what a wrapped key's payload may be


class _IdSpellings:
    """Which keys of a row spell the id column. Remembers the answer for the (few) column names a topic uses."""

    __slots__ = ("id_field", "id_key", "known", "noun", "yes")

    yes: tuple[str, ...]

    MAX_KNOWN = 4096  # bounded: hostile input must not grow it without end
    MAX_YES = 16
    MAX_KEY_CHARS = 128

    def __init__(self, kind: DatasetKind) -> None:
        self.id_field = kind.id_field
        self.id_key = kind.id_key
        self.noun = kind.id_field.split("_")[0].lower()  # "item" / "user"
        self.yes = (kind.id_field, kind.id_key, kind.id_field.lower())  # a short tuple: the fastest to scan
        self.known: set[str] = set(self.yes)

    def find(self, row: dict[str, Any]) -> list[str]:
        keys = row.keys()
        if keys <= self.known:  # the usual case: every column seen before
            found = []
            for k in self.yes:
                if k in row:
                    found.append(k)
            return found
        return [k for k in keys if self._is_id(k)]

    def _is_id(self, key: str) -> bool:
        if key in self.known:
            return key in self.yes
        is_id = key == self.id_key or camel_case(key) == self.id_key
        if (
            len(key) <= self.MAX_KEY_CHARS
            and len(self.known) < self.MAX_KNOWN
            and (not is_id or len(self.yes) < self.MAX_YES)
        ):
            self.known.add(key)
            if is_id:
                self.yes += (key,)
        return is_id


_SPELLINGS: Final = {kind: _IdSpellings(kind) for kind in DatasetKind}


def decode(record: SourceRecord, kind: DatasetKind, fmt: Format = "auto") -> Change:
    """Decode one record into a Change; raise DecodeError naming the record and the problem."""
    spell = _SPELLINGS[kind]
    value = record.value
    if value is None:
        return Change(Op.DELETE, _key_id(record, spell)[0], {})
    try:
        obj = _loads(value)
    except _PARSE_ERRORS as exc:
        raise _bad_json(record, "value", value, exc) from exc
    if type(obj) is not dict:
        raise _fail(record, f"value must be a JSON object, got {_json_type(obj)}")
    return _from_object(record, spell, obj, fmt)


def _from_object(record: SourceRecord, spell: _IdSpellings, obj: dict[str, Any], fmt: Format) -> Change:
    """The change a parsed value (an object) describes: remove a wrapper, then read the shape."""
    if is_wrapper(obj):
        payload = obj["payload"]
        if payload is None:
            return Change(Op.DELETE, _key_id(record, spell)[0], {})
        if type(payload) is not dict:
            raise _fail(record, _bad_payload(obj, payload))
        obj = payload

    shape = fmt
    if shape == "auto":
        if "op" in obj and ("after" in obj or "before" in obj):
            shape = "debezium"
        elif "properties" in obj or (len(obj) == 1 and spell.id_key in obj):
            shape = "api"
        else:
            shape = "flat"
    if shape == "flat":
        rid, fields = _row(record, spell, obj, "the value")
        return Change(Op.UPSERT, rid if rid is not None else _required_key_id(record, spell, "the value"), fields)
    if shape == "debezium":
        return _debezium(record, spell, obj)
    if shape == "api":
        return _api(record, spell, obj)
    raise ValueError(f"unknown format {fmt!r}; use one of {FORMATS}")


def is_wrapper(obj: dict[str, Any]) -> bool:
    """A Kafka Connect wrapper: exactly ``schema`` and ``payload``, or exactly ``payload`` (keys and values alike)."""
    return "payload" in obj and (len(obj) == 1 or (len(obj) == 2 and "schema" in obj))


def _bad_payload(wrapper: dict[str, Any], payload: Any) -> str:
    got = _json_type(payload)
    if len(wrapper) == 2:
        return f'the payload of a {{"schema", "payload"}} wrapper must be a JSON object or null, got {got}'
    return (
        f"a value whose only key is 'payload' is a wrapper, so the payload must be a JSON object or null, got {got}"
        " (to send a column named payload, put the id column in the row too)"
    )


# --------------------------------------------------------------------------- shapes


def _api(record: SourceRecord, spell: _IdSpellings, obj: dict[str, Any]) -> Change:
    id_keys = spell.find(obj)
    props = obj.get("properties")
    if len(obj) > len(id_keys) + ("properties" in obj):
        extra = sorted(k for k in obj if k != "properties" and k not in id_keys)
        raise _fail(
            record,
            f"an API-shaped value holds only {spell.id_key} and properties; unexpected {_keys(extra)}",
        )
    if props is None:
        props = {}
    elif type(props) is str:
        try:
            props = _loads(props)
        except _PARSE_ERRORS as exc:
            raise _bad_json(record, "properties", props, exc) from exc
        if type(props) is not dict:
            raise _fail(record, f"properties must be a JSON object, got a string holding {_json_type(props)}")
    elif type(props) is not dict:
        raise _fail(record, f"properties must be a JSON object or a string holding one, got {_json_type(props)}")
    _check_scalars(record, props, "properties")
    rid = _pick_id(record, spell, obj, id_keys, "") if id_keys else None
    return Change(Op.UPSERT, rid if rid is not None else _required_key_id(record, spell, "the value"), props)


def _debezium(record: SourceRecord, spell: _IdSpellings, env: dict[str, Any]) -> Change:
    if "op" not in env:
        raise _fail(record, f"not a Debezium change event: no 'op' field (it has {_keys(sorted(env))})")
    op = env["op"]
    if op in _DEBEZIUM_UPSERT_OPS:
        after = env.get("after")
        if after is None:
            raise _fail(record, f"Debezium op {op!r} has no 'after' row")
        if type(after) is not dict:
            raise _fail(record, f"Debezium 'after' must be a JSON object, got {_json_type(after)}")
        rid, fields = _row(record, spell, after, "the Debezium 'after' row")
        if rid is None:
            rid = _required_key_id(record, spell, "the Debezium 'after' row")
        return Change(Op.UPSERT, rid, fields)
    if op == "d":
        before = env.get("before")
        rid = None
        if before is not None:
            if type(before) is not dict:
                raise _fail(record, f"Debezium 'before' must be a JSON object or null, got {_json_type(before)}")
            id_keys = spell.find(before)
            if id_keys:
                rid = _pick_id(record, spell, before, id_keys, "'before' ")
        if rid is None:
            rid = _required_key_id(record, spell, "the Debezium 'before' row")
        return Change(Op.DELETE, rid, {})
    shown = _quote(op) if type(op) is str else _json_type(op)
    raise _fail(record, f"unknown Debezium op {shown} (expected c, u, r or d)")


def _row(
    record: SourceRecord, spell: _IdSpellings, row: dict[str, Any], what: str
) -> tuple[str | None, dict[str, Any]]:
    """Split a flat row (which we own: it was just parsed) into its id (or None) and the other columns."""
    id_keys = spell.find(row)
    rid = None
    if id_keys:
        rid = _pick_id(record, spell, row, id_keys, "")
        for k in id_keys:
            del row[k]
    _check_scalars(record, row, what)
    return rid, row


def _check_scalars(record: SourceRecord, row: dict[str, Any], what: str) -> None:
    if _NESTED.isdisjoint(map(type, row.values())):
        return
    key, val = next((k, v) for k, v in row.items() if type(v) in _NESTED)
    raise _fail(record, f"{what} must hold only scalar values, but {_quote(key)} holds {_json_type(val)}")


# --------------------------------------------------------------------------- ids


def _pick_id(record: SourceRecord, spell: _IdSpellings, row: dict[str, Any], id_keys: list[str], prefix: str) -> str:
    if len(id_keys) == 1:
        k = id_keys[0]
        return _as_id(record, row[k], f"{prefix}{k}")
    ids = {k: _as_id(record, row[k], f"{prefix}{k}") for k in sorted(id_keys)}
    if len(set(ids.values())) > 1:
        given = ", ".join(f"{k}={_quote(v)}" for k, v in ids.items())
        raise _fail(record, f"the {spell.noun} id is given twice with different values: {given}")
    return next(iter(ids.values()))


def _as_id(record: SourceRecord, value: Any, label: str) -> str:
    t = type(value)
    if t is str:
        return value  # type: ignore[no-any-return]
    if t is int:
        return str(value)
    shown = f" ({value!r})" if t is float or t is bool else ""
    raise _fail(record, f"{label} must be a string or an integer, got {_json_type(value)}{shown}")


def _required_key_id(record: SourceRecord, spell: _IdSpellings, source: str) -> str:
    rid, why = _key_id(record, spell)
    if rid is None:
        raise _fail(record, f"no {spell.noun} id: {source} has no {spell.id_field}/{spell.id_key} and {why}")
    return rid


def _key_id(record: SourceRecord, spell: _IdSpellings) -> tuple[str | None, str]:
    """The id the key carries, or (None, why not)."""
    key = record.key
    if not key:
        return None, "the key is empty"
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(record, f"key is not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
    first = text[0]
    if first.isspace():
        first = text.lstrip()[:1]
    if first not in _JSON_START:
        return text, ""
    try:
        parsed = _loads(key)
    except _PARSE_ERRORS:
        return text, ""  # not JSON after all: plain text
    return _key_json_id(record, spell, parsed, text, unwrap=True)


def _key_json_id(
    record: SourceRecord, spell: _IdSpellings, parsed: Any, text: str, *, unwrap: bool
) -> tuple[str | None, str]:
    t = type(parsed)
    if t is str:
        return parsed, ""
    if t is int:
        return str(parsed), ""
    if t is list:
        return None, "the key is a JSON list"
    if t is not dict:
        return text, ""  # a float written as text: the text is the id
    if unwrap and is_wrapper(parsed):
        payload = parsed["payload"]
        if type(payload) not in _KEY_PAYLOAD_TYPES:
            return None, f"the key's payload is {_json_type(payload)}"
        return _key_json_id(record, spell, payload, text, unwrap=False)
    id_keys = spell.find(parsed)
    if id_keys:
        return _pick_id(record, spell, parsed, id_keys, "key field "), ""
    if len(parsed) == 1:
        k, v = next(iter(parsed.items()))
        return _as_id(record, v, f"key field {_quote(k)}"), ""
    return None, f"the key {_quote(text)} has no {spell.id_field}/{spell.id_key} field"


# --------------------------------------------------------------------------- messages


def _fail(record: SourceRecord, message: str) -> DecodeError:
    return DecodeError(f"{record.where}: {message}")


def _bad_json(record: SourceRecord, what: str, data: bytes | str, exc: BaseException) -> DecodeError:
    if not data:
        return _fail(record, f"{what} is empty")
    if isinstance(data, bytes):
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as uexc:
            return _fail(record, f"{what} is not valid UTF-8 ({uexc.reason} at byte {uexc.start})")
    if isinstance(exc, RecursionError):
        return _fail(record, f"{what} is not valid JSON: nested too deeply")
    return _fail(record, f"{what} is not valid JSON: {_truncate(str(exc))}")


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _truncate(text: str) -> str:
    return text if len(text) <= _QUOTE_MAX else text[: _QUOTE_MAX - 3] + "..."


def _quote(text: str) -> str:
    return repr(_truncate(text))


def _keys(keys: Iterable[str]) -> str:
    shown = [_quote(k) for k in keys]
    label = "key" if len(shown) == 1 else "keys"
    more = f" and {len(shown) - 5} more" if len(shown) > 5 else ""
    return f"{label} {', '.join(shown[:5])}{more}"
