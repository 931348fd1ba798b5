"""The emulator's configuration: datasets, quotas and faults, as frozen pydantic models read from YAML.

Relative schema paths in the file are resolved against the file's folder, so the example config works from any
working directory. Any error names the file and the setting.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ingestor.config import read_yaml_mapping
from ingestor.errors import ConfigError
from ingestor.examples import EMULATOR_YAML
from ingestor.schema import DatasetKind, DatasetSchema

# arn:aws:personalize:REGION:ACCOUNT:dataset/DATASET_GROUP/NAME — the group is what quotas are counted against.
DATASET_ARN_RE = re.compile(r"^arn:[a-z\d-]+:personalize:[^:]*:[^:]*:dataset/(?P<group>[^/]+)/(?P<name>[^/]+)$")

# Where `ingestor emulator` looks for a config when --config is not given: the working directory (a source checkout,
# or a folder written by `ingestor init`), then the example shipped in the package.
DEFAULT_CONFIG_CANDIDATES = (Path("config/emulator.yaml"), EMULATOR_YAML)


class Api(enum.StrEnum):
    """The data-plane operations the emulator serves."""

    PUT_ITEMS = "PutItems"
    PUT_USERS = "PutUsers"
    PUT_EVENTS = "PutEvents"


def dataset_group(arn: str) -> str | None:
    """The dataset group named in a dataset ARN, or None if the ARN is not a dataset ARN."""
    match = DATASET_ARN_RE.match(arn)
    return match["group"] if match else None


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DatasetConfig(_Frozen):
    """One dataset the endpoint accepts writes for."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    arn: str
    kind: DatasetKind
    schema_path: Path = Field(alias="schema")
    tracking_id: str | None = Field(None, min_length=1, max_length=256, description="INTERACTIONS only")

    @field_validator("arn")
    @classmethod
    def _arn_shape(cls, value: str) -> str:
        if len(value) > 256 or not DATASET_ARN_RE.match(value):
            raise ValueError(f"expected arn:aws:personalize:REGION:ACCOUNT:dataset/GROUP/NAME, got {value!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DatasetConfig:
        if (self.kind is DatasetKind.INTERACTIONS) != (self.tracking_id is not None):
            raise ValueError("an INTERACTIONS dataset needs a tracking_id, and only INTERACTIONS datasets have one")
        try:
            self.load_schema()  # fail at start-up, naming the file
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return self

    @property
    def group(self) -> str:
        group = dataset_group(self.arn)
        assert group is not None  # checked by _arn_shape
        return group

    def load_schema(self) -> DatasetSchema:
        return DatasetSchema.load(self.schema_path, self.kind)


class QuotaConfig(_Frozen):
    """Calls per second per dataset group and API; None means no quota for that API."""

    enabled: bool = True
    put_items: float | None = Field(10.0, gt=0)
    put_users: float | None = Field(10.0, gt=0)
    put_events: float | None = Field(1000.0, gt=0)
    groups: dict[str, dict[Api, float]] = Field(
        default_factory=dict,
        description="per dataset group overrides, e.g. {shop: {PutItems: 2}} (a raised or lowered quota)",
    )

    @field_validator("groups")
    @classmethod
    def _positive(cls, value: dict[str, dict[Api, float]]) -> dict[str, dict[Api, float]]:
        if any(rate <= 0 for rates in value.values() for rate in rates.values()):
            raise ValueError("group quotas must be positive calls per second")
        return value

    def rate_for(self, api: Api, group: str | None = None) -> float | None:
        if not self.enabled:
            return None
        override = self.groups.get(group, {}).get(api) if group is not None else None
        if override is not None:
            return override
        return {Api.PUT_ITEMS: self.put_items, Api.PUT_USERS: self.put_users, Api.PUT_EVENTS: self.put_events}[api]


class FaultConfig(_Frozen):
    """Injected failures and latency, drawn per call from the seeded random generator."""

    fail_rate: float = Field(0.0, ge=0, le=1, description="probability of a 5xx answer")
    fail_statuses: tuple[int, ...] = Field((500, 503), min_length=1)
    throttle_rate: float = Field(0.0, ge=0, le=1, description="probability of ThrottlingException, quota aside")
    latency_ms: float = Field(0.0, ge=0, description="added to every call")
    jitter_ms: float = Field(0.0, ge=0, description="plus a uniform 0..jitter_ms")

    @field_validator("fail_statuses")
    @classmethod
    def _known_statuses(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not set(value) <= {500, 503}:
            raise ValueError(f"use 500 and/or 503, got {list(value)}")
        return value


class ImportConfig(_Frozen):
    """Dataset import jobs (the control plane): where staged CSVs are read from, how long a job takes, limits."""

    s3_endpoint_url: str | None = Field(None, description="an S3-protocol server (moto's); None: no import can read")
    s3_region: str = "us-east-1"
    duration_s: float = Field(5.0, ge=0, description="CREATE PENDING → ACTIVE / CREATE FAILED (a tenth pending)")
    max_running_jobs: int = Field(5, ge=1, description="PENDING or IN_PROGRESS import jobs per region (not adjustable)")
    max_full_bytes: int = Field(100 * 1024**3, ge=1, description="data per FULL import job (100 GB)")
    max_incremental_bytes: int = Field(1024**3, ge=1, description="data per INCREMENTAL import job (1 GB)")


class DeletionConfig(_Frozen):
    """Data deletion jobs (the control plane): CSVs of USER_IDs are read from ``imports.s3_endpoint_url``."""

    duration_s: float = Field(5.0, ge=0, description="PENDING → IN_PROGRESS → COMPLETED; users are removed at the end")


class EmulatorConfig(_Frozen):
    datasets: tuple[DatasetConfig, ...] = Field(min_length=1)
    quotas: QuotaConfig = QuotaConfig()
    faults: FaultConfig = FaultConfig()
    imports: ImportConfig = ImportConfig()
    deletions: DeletionConfig = DeletionConfig()
    seed: int | None = None
    max_events_kept: int = Field(10_000, ge=0, description="PutEvents events kept for inspection")

    @model_validator(mode="after")
    def _unique(self) -> EmulatorConfig:
        arns = [d.arn for d in self.datasets]
        if len(set(arns)) != len(arns):
            raise ValueError(f"datasets: each arn may appear once, got {arns}")
        tracking = [d.tracking_id for d in self.datasets if d.tracking_id]
        if len(set(tracking)) != len(tracking):
            raise ValueError(f"datasets: each tracking_id may appear once, got {tracking}")
        return self

    @classmethod
    def load(cls, path: Path | str, **overrides: Any) -> EmulatorConfig:
        """Read the YAML file, resolve schema paths against its folder, apply overrides (see ``updated``)."""
        path = Path(path)
        loaded = read_yaml_mapping(path, "emulator config")
        base = path.parent.resolve()
        datasets = loaded.get("datasets")
        if isinstance(datasets, list):
            loaded["datasets"] = [_resolve_schema(d, base) for d in datasets]
        return cls._validated(_merge(loaded, overrides), str(path))

    def updated(self, **changes: Any) -> EmulatorConfig:
        """A validated copy; mapping values are merged into their section, e.g. ``updated(faults={"fail_rate": 1})``."""
        return self._validated(_merge(self.model_dump(by_alias=True), changes), "overrides")

    @classmethod
    def _validated(cls, data: Mapping[str, Any], where: str) -> EmulatorConfig:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            lines = [f"invalid emulator configuration ({where}):"]
            for err in exc.errors(include_url=False, include_input=False):
                loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
                lines.append(f"  {loc}: {err['msg'].removeprefix('Value error, ')}")
            raise ConfigError("\n".join(lines)) from None

    def dataset_by_arn(self, arn: str) -> DatasetConfig | None:
        return next((d for d in self.datasets if d.arn == arn), None)


def default_config_path() -> Path | None:
    """The example config, if one can be found (see DEFAULT_CONFIG_CANDIDATES)."""
    return next((p for p in DEFAULT_CONFIG_CANDIDATES if p.is_file()), None)


def _resolve_schema(dataset: Any, base: Path) -> Any:
    if (
        isinstance(dataset, dict)
        and isinstance(dataset.get("schema"), str)
        and not Path(dataset["schema"]).is_absolute()
    ):
        return {**dataset, "schema": str(base / dataset["schema"])}
    return dataset


def _merge(data: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """One level deep: a mapping change updates its section, anything else replaces the value."""
    out = dict(data)
    for key, value in changes.items():
        current = out.get(key)
        if isinstance(value, BaseModel):
            value = value.model_dump(by_alias=True)
        out[key] = {**current, **value} if isinstance(value, Mapping) and isinstance(current, Mapping) else value
    return out
