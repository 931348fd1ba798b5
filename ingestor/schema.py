"""A Personalize dataset schema (Avro, Personalize's dialect) compiled into a validator.

The same rules serve two callers:

* the pipeline (``DatasetSchema.normalize``) turns a decoded change into the request record, accepting the
  schema's column names (``NUMBER_OF_RATINGS``) or their camelCase form (``numberOfRatings``);
* the local endpoint (``DatasetSchema.check_properties``) checks a ``properties`` map exactly the way
  Personalize does: camelCase keys only.

Rules (from the Personalize docs and the botocore ``personalize-events`` model):
ids are 1-256 characters; item ``properties`` at most 32,000 characters, user ``properties`` at most 24,000,
event ``properties`` at most 1,024; keys are the camelCase form of schema field names; unknown keys are
rejected; non-nullable fields are required; values must match the field type, numbers may arrive as numeric
strings; categorical values (``|``-separated) are at most 1,000 characters each; textual fields at most
20,000 characters.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ingestor.errors import ConfigError, SchemaError

ID_MIN_CHARS = 1
ID_MAX_CHARS = 256
CATEGORICAL_VALUE_MAX_CHARS = 1000
TEXTUAL_MAX_CHARS = 20_000
INT_RANGE = (-(2**31), 2**31 - 1)
LONG_RANGE = (-(2**63), 2**63 - 1)
_PRIMITIVES = frozenset({"string", "int", "long", "float", "double", "boolean"})
_INTEGER_RE = re.compile(r"[+-]?[0-9]+")
_NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


class DatasetKind(enum.StrEnum):
    ITEMS = "ITEMS"
    USERS = "USERS"
    INTERACTIONS = "INTERACTIONS"

    @property
    def id_field(self) -> str:
        return _ID_FIELD[self.value]

    @property
    def id_key(self) -> str:
        return _ID_KEY[self.value]

    @property
    def max_properties_chars(self) -> int:
        return _MAX_PROPERTIES_CHARS[self.value]


_ID_FIELD = {"ITEMS": "ITEM_ID", "USERS": "USER_ID", "INTERACTIONS": "USER_ID"}
_ID_KEY = {"ITEMS": "itemId", "USERS": "userId", "INTERACTIONS": "userId"}
_MAX_PROPERTIES_CHARS = {"ITEMS": 32_000, "USERS": 24_000, "INTERACTIONS": 1_024}


# Interactions columns that PutEvents carries as event attributes, not inside ``properties``.
_EVENT_ATTRIBUTE_FIELDS = frozenset(
    {"USER_ID", "ITEM_ID", "EVENT_TYPE", "EVENT_VALUE", "TIMESTAMP", "IMPRESSION", "RECOMMENDATION_ID"}
)


def camel_case(name: str) -> str:
    """``NUMBER_OF_RATINGS`` → ``numberOfRatings``, as Personalize maps schema fields to property keys."""
    parts = [p for p in name.split("_") if p]
    if not parts:
        return name
    return parts[0].lower() + "".join(p[:1].upper() + p[1:].lower() for p in parts[1:])


@dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str
    key: str
    type: str
    nullable: bool
    categorical: bool = False
    textual: bool = False


def _parse_field(raw: Any, kind: DatasetKind, where: str) -> FieldSpec:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
        raise ConfigError(f"{where}: every field needs a string 'name'")
    name = raw["name"]
    ftype = raw.get("type")
    branches = ftype if isinstance(ftype, list) else [ftype]
    nullable = "null" in branches
    concrete = [b for b in branches if b != "null"]
    if len(concrete) != 1 or concrete[0] not in _PRIMITIVES:
        raise ConfigError(
            f"{where}: field {name!r} has type {ftype!r}; use one of {sorted(_PRIMITIVES)} "
            'or a union with null such as ["null", "string"]'
        )
    categorical = bool(raw.get("categorical", False))
    textual = bool(raw.get("textual", False))
    if (categorical or textual) and concrete[0] != "string":
        raise ConfigError(f"{where}: field {name!r} is categorical/textual, so its type must be string")
    if textual and kind is not DatasetKind.ITEMS:
        raise ConfigError(f"{where}: field {name!r}: textual fields exist only in ITEMS datasets")
    return FieldSpec(name, camel_case(name), concrete[0], nullable, categorical, textual)


@dataclass(frozen=True)
class DatasetSchema:
    """A compiled Personalize dataset schema."""

    kind: DatasetKind
    fields: tuple[FieldSpec, ...]  # the property fields: every field but the id (and event attributes)

    @classmethod
    def from_avro(cls, avro: Mapping[str, Any] | str, kind: DatasetKind | str, where: str = "schema") -> DatasetSchema:
        kind = DatasetKind(str(kind).upper())
        if isinstance(avro, str):
            try:
                avro = json.loads(avro)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{where}: not valid JSON ({exc})") from exc
        if not isinstance(avro, Mapping) or avro.get("type") != "record" or not isinstance(avro.get("fields"), list):
            raise ConfigError(f'{where}: expected an Avro record: {{"type": "record", "fields": [...]}}')
        specs = [_parse_field(f, kind, where) for f in avro["fields"]]
        names = [s.name for s in specs]
        if kind.id_field not in names:
            article = "a" if kind is DatasetKind.USERS else "an"  # a USERS, an ITEMS, an INTERACTIONS schema
            raise ConfigError(f"{where}: {article} {kind.value} schema needs the field {kind.id_field}")
        keys = [s.key for s in specs]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"{where}: two fields map to the same camelCase key: {keys}")
        skip = _EVENT_ATTRIBUTE_FIELDS if kind is DatasetKind.INTERACTIONS else {kind.id_field}
        return cls(kind, tuple(s for s in specs if s.name not in skip))

    @classmethod
    def load(cls, path: Path, kind: DatasetKind | str) -> DatasetSchema:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"schema file {path}: cannot be read ({exc.strerror})") from exc
        return cls.from_avro(text, kind, where=f"schema file {path}")

    def __post_init__(self) -> None:
        lookup: dict[str, FieldSpec] = {}
        for spec in self.fields:
            lookup[spec.key] = spec
            lookup[spec.name] = spec
        object.__setattr__(self, "_by_key", {s.key: s for s in self.fields})
        object.__setattr__(self, "_lookup", lookup)
        object.__setattr__(self, "id_key", self.kind.id_key)
        object.__setattr__(self, "_max_chars", self.kind.max_properties_chars)

    id_key: str = field(init=False, repr=False)

    # ------------------------------------------------------------------ the checks

    @staticmethod
    def check_id(value: Any, label: str = "id") -> str:
        if not isinstance(value, str):
            raise SchemaError(f"{label} must be a string, got {type(value).__name__}")
        if not ID_MIN_CHARS <= len(value) <= ID_MAX_CHARS:
            raise SchemaError(f"{label} must be {ID_MIN_CHARS}-{ID_MAX_CHARS} characters, got {len(value)}")
        return value

    def check_properties(self, props: Mapping[str, Any]) -> list[str]:
        """Personalize's own check of a ``properties`` map (camelCase keys). Returns the problems found."""
        problems: list[str] = []
        by_key: dict[str, FieldSpec] = self._by_key  # type: ignore[attr-defined]
        for key in props:
            if key not in by_key:
                problems.append(f"unknown property {key!r} (expected one of {sorted(by_key)})")
        for spec in self.fields:
            _, problem = _coerce(spec, props.get(spec.key), present=spec.key in props)
            if problem:
                problems.append(problem)
        return problems

    def normalize(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Map column names (any case) or camelCase keys to the request's camelCase keys, coercing values.

        Raises SchemaError listing every problem found.
        """
        lookup: dict[str, FieldSpec] = self._lookup  # type: ignore[attr-defined]
        out: dict[str, Any] = {}
        problems: list[str] = []
        seen: dict[str, str] = {}
        for key, value in fields.items():
            spec = lookup.get(key) or lookup.get(camel_case(key))
            if spec is None:
                problems.append(f"unknown field {key!r} (the schema has {[s.name for s in self.fields]})")
                continue
            if spec.key in seen:
                problems.append(f"field {spec.name} given twice (as {seen[spec.key]!r} and {key!r})")
                continue
            seen[spec.key] = key
            coerced, problem = _coerce(spec, value, present=True)
            if problem:
                problems.append(problem)
            elif coerced is not None:
                out[spec.key] = coerced
        for spec in self.fields:
            if spec.key not in seen and not spec.nullable:
                problems.append(f"required field {spec.name} ({spec.key}) is missing")
        if problems:
            raise SchemaError(problems)
        return out

    def properties_json(self, props: Mapping[str, Any]) -> str | None:
        """The compact JSON string sent as ``properties``; None when there is nothing to send."""
        if not props:
            return None
        text = orjson.dumps(props).decode()  # compact; non-finite floats were rejected by _coerce
        limit: int = self._max_chars  # type: ignore[attr-defined]
        if len(text) > limit:
            raise SchemaError(f"properties are {len(text)} characters, over the API limit of {limit}")
        return text

    def build_record(self, record_id: Any, fields: Mapping[str, Any]) -> dict[str, str]:
        """The PutItems/PutUsers request record: ``{"itemId": ..., "properties": "<json>"}``."""
        key = self.id_key
        rec = {key: self.check_id(record_id, key)}
        props = self.properties_json(self.normalize(fields))
        if props is not None:
            rec["properties"] = props
        return rec


def _coerce(spec: FieldSpec, value: Any, *, present: bool) -> tuple[Any, str | None]:
    """Check one value against its field; return (canonical value, problem or None)."""
    label = f"{spec.key} ({spec.type}{', categorical' if spec.categorical else ''})"
    if value is None:
        if spec.nullable:
            return None, None
        return None, f"{label} is required" + (" and may not be null" if present else " but missing")
    t = spec.type
    if t == "string":
        if not isinstance(value, str):
            return None, f"{label} must be a string, got {type(value).__name__} {_short(value)}"
        if spec.categorical:
            for part in value.split("|"):
                if len(part) > CATEGORICAL_VALUE_MAX_CHARS:
                    return None, (
                        f"{label}: a categorical value is {len(part)} characters, "
                        f"over the limit of {CATEGORICAL_VALUE_MAX_CHARS}"
                    )
        if spec.textual and len(value) > TEXTUAL_MAX_CHARS:
            return None, f"{label}: {len(value)} characters, over the textual limit of {TEXTUAL_MAX_CHARS}"
        return value, None
    if t == "boolean":
        if isinstance(value, bool):
            return value, None
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true", None
        return None, f"{label} must be true or false, got {_short(value)}"
    if isinstance(value, bool):
        return None, f"{label} must be a number, got a boolean"
    if t in ("int", "long"):
        lo, hi = INT_RANGE if t == "int" else LONG_RANGE
        integral_text = isinstance(value, str) and _INTEGER_RE.fullmatch(value) is not None
        if integral_text or (isinstance(value, float) and value.is_integer()):
            value = int(value)
        if not isinstance(value, int):
            return None, f"{label} must be an integer, got {_short(value)}"
        if not lo <= value <= hi:
            return None, f"{label} is out of range for {t}: {value}"
        return value, None
    # float / double
    if isinstance(value, str):
        if not _NUMBER_RE.fullmatch(value):
            return None, f"{label} must be a number, got {_short(value)}"
        value = float(value)
    if not isinstance(value, (int, float)):
        return None, f"{label} must be a number, got {_short(value)}"
    if isinstance(value, int) and not LONG_RANGE[0] <= value <= LONG_RANGE[1]:
        if abs(value) > 2**1023:
            return None, f"{label} is out of range for {t}"
        value = float(value)  # JSON encoders take 64-bit integers at most
    if isinstance(value, float) and not math.isfinite(value):
        return None, f"{label} must be a finite number, got {value}"
    return value, None


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
