"""Settings: frozen pydantic-settings models read from a YAML file, overridden by ``INGESTOR_*`` variables.

``INGESTOR_KAFKA__BOOTSTRAP_SERVERS=host:9092`` overrides ``kafka.bootstrap_servers``; lists such as ``routes`` take
JSON. Relative paths in the file (route schemas) are resolved against the file's folder. Any error names the setting.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ingestor.errors import ConfigError
from ingestor.events import EventBuilder
from ingestor.schema import DatasetKind, DatasetSchema

# Personalize's default quotas: calls per second per dataset group.
DEFAULT_RATE_LIMITS: dict[str, float] = {"PutItems": 10.0, "PutUsers": 10.0, "PutEvents": 1000.0}
_S3_URI_RE = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$")
_ROLE_ARN_RE = re.compile(r"arn:([a-z\d-]+):iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+")  # botocore's pattern
_ARN_RE = re.compile(r"^arn:[a-z\d-]+:personalize:[^:]*:[^:]*:dataset/(?P<group>[^/]+)/(?P<kind>[A-Z_]+)$")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSecurity(_Frozen):
    """TLS and SASL for the consumer and the DLQ producer. Secrets: inline (env) or read from mounted files."""

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password: SecretStr | None = None
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "AWS_MSK_IAM"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = Field(None, description="a mounted secret holding the SASL password")
    msk_region: str | None = Field(None, description="AWS region for MSK IAM auth (default: personalize.region)")

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSecurity:
        sasl = self.protocol.startswith("SASL_")
        if sasl and self.sasl_mechanism is None:
            raise ValueError(
                f"protocol {self.protocol} needs sasl_mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or AWS_MSK_IAM)"
            )
        if not sasl and self.sasl_mechanism is not None:
            raise ValueError("sasl_mechanism is set but protocol is not SASL_PLAINTEXT or SASL_SSL")
        if self.sasl_mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            if not self.sasl_username:
                raise ValueError(f"sasl_mechanism {self.sasl_mechanism} needs sasl_username")
            if self.sasl_password is None and self.sasl_password_file is None:
                raise ValueError(
                    f"sasl_mechanism {self.sasl_mechanism} needs sasl_password "
                    "(INGESTOR_KAFKA__SECURITY__SASL_PASSWORD) or sasl_password_file"
                )
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together (client certificate authentication)")
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "sasl_password_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}: no such file {path}")
        return self

    def password(self) -> str | None:
        """The SASL password, from the setting or the mounted file (read at start, never logged)."""
        if self.sasl_password is not None:
            return self.sasl_password.get_secret_value()
        if self.sasl_password_file is not None:
            return self.sasl_password_file.read_text(encoding="utf-8").strip()
        return None


class KafkaSettings(_Frozen):
    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "personalize-ingestor"
    dead_letter_topic: str = "personalize-ingestor-dlq"
    client_id: str = "personalize-ingestor"
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    session_timeout_ms: int = Field(10_000, ge=1_000)
    heartbeat_interval_ms: int = Field(3_000, ge=100)
    rebalance_timeout_ms: int = Field(30_000, ge=1_000)
    max_poll_interval_ms: int = Field(300_000, ge=10_000)
    fetch_max_records: int = Field(1_000, ge=1, description="records one getmany() may return")
    # aiokafka keeps one fetched response per partition in memory until it is consumed (and fetches it again after
    # a pause). At 8 MB / 1 MB these buffers were the largest share of the memory under a backlog (issue 9,
    # bench/bench_memory.py); 1 MB still holds thousands of records, far more than the API quota sends in a second.
    fetch_max_bytes: int = Field(1024 * 1024, ge=1024, description="bytes one fetch may prefetch (all partitions)")
    max_partition_fetch_bytes: int = Field(256 * 1024, ge=1024, description="bytes one fetch may hold per partition")
    fetch_max_wait_ms: int = Field(
        500, ge=0, description="how long the broker may hold a fetch for data; an upper bound on idle fetch latency"
    )
    request_timeout_ms: int = Field(30_000, ge=1_000)
    commit_interval_s: float = Field(1.0, gt=0)
    commit_timeout_s: float = Field(10.0, gt=0)
    dlq_timeout_s: float = Field(30.0, gt=0, description="how long a dead-letter write may take before it is retried")
    security: KafkaSecurity = KafkaSecurity()

    @model_validator(mode="after")
    def _heartbeat_below_session(self) -> KafkaSettings:
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be at most a third of session_timeout_ms")
        return self


class RetrySettings(_Frozen):
    max_attempts: int = Field(10, ge=1, description="attempts per call before the records count as exhausted")
    max_time_s: float = Field(300.0, gt=0, description="time budget per record from its first attempt")
    base_delay_s: float = Field(0.1, gt=0)
    max_delay_s: float = Field(20.0, gt=0)
    on_exhausted: Literal["block", "dead_letter"] = "block"


class QuotaSharingSettings(_Frozen):
    """How replicas split each dataset group's quota (see ingestor/quota_share.py).

    ``demand``: replicas publish their demand (backlog, recent rate) every ``heartbeat_interval_s`` to a small Kafka
    topic and split the quota max-min fairly by demand; a replica that cannot see the topic falls back to its
    partition share. ``partitions``: each replica paces at its share of the assigned partitions (no topic).
    """

    mode: Literal["demand", "partitions"] = "demand"
    topic: str | None = Field(None, description="the heartbeat topic; default: <kafka.group_id>.quota")
    heartbeat_interval_s: float = Field(1.0, ge=0.1, le=10.0)
    ttl_s: float = Field(4.0, gt=0, description="a replica unheard of for this long no longer counts")
    idle_reserve: float = Field(
        0.05, ge=0, le=0.5, description="share of the quota kept for idle replicas (split among them) to start fast"
    )
    create_topic: bool = Field(True, description="create the heartbeat topic (1 partition) if it does not exist")

    @model_validator(mode="before")
    @classmethod
    def _mode_shorthand(cls, value: Any) -> Any:
        return {"mode": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _ttl_covers_heartbeats(self) -> QuotaSharingSettings:
        if self.ttl_s < 2 * self.heartbeat_interval_s:
            raise ValueError(
                f"ttl_s ({self.ttl_s:g}) must be at least twice heartbeat_interval_s ({self.heartbeat_interval_s:g}),"
                " or live replicas would flicker out of the view"
            )
        return self


class PersonalizeSettings(_Frozen):
    region: str = "us-east-1"
    endpoint_url: str | None = None
    control_endpoint_url: str | None = None  # the control plane (import jobs); the local endpoint serves both
    max_in_flight: int = Field(16, ge=1, le=256)
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(30.0, gt=0)
    aws_access_key_id: SecretStr | None = None
    aws_secret_access_key: SecretStr | None = None
    rate_limits: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_RATE_LIMITS),
        description="calls per second per dataset group and API, shared by all replicas",
    )
    retry: RetrySettings = RetrySettings()
    http: Literal["sdk", "direct"] = Field(
        "direct",
        description="direct: the signed requests the SDK sends, built by the ingestor for ~40 % less CPU per call "
        "(see ingestor/personalize_http.py); sdk: every call through aioboto3",
    )
    quota_sharing: QuotaSharingSettings = QuotaSharingSettings()
    on_fatal: Literal["hold", "stop"] = Field(
        "hold",
        description="a fatal error on a dataset (unknown dataset, access denied, bad credentials): hold that dataset "
        "(nothing sent or committed on it, the others go on, not ready, one probe call every fatal_retry_s) or stop "
        "the service (exit code 3)",
    )
    fatal_retry_s: float = Field(
        60.0, gt=0, description="on_fatal: hold: seconds between two probe calls of a held dataset"
    )

    @field_validator("rate_limits")
    @classmethod
    def _known_apis(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = set(value) - {"PutItems", "PutUsers", "PutEvents"}
        if unknown:
            raise ValueError(f"unknown API {sorted(unknown)}; use PutItems, PutUsers or PutEvents")
        if any(v <= 0 for v in value.values()):
            raise ValueError("rate limits must be positive calls per second")
        return {**DEFAULT_RATE_LIMITS, **value}  # an API left out keeps Personalize's quota, not a guess


class Route(_Frozen):
    topic: str = Field(min_length=1)
    kind: Literal["items", "users", "interactions"]
    dataset_arn: str
    schema_path: Path | None = Field(None, alias="schema")  # None: the dataset's live schema, fetched at start
    format: Literal["auto", "api", "flat", "debezium", "avro"] = "auto"
    # interactions routes (PutEvents) only:
    tracking_id: str | None = Field(None, min_length=1, max_length=256, description="the event tracker's id")
    session_id: Literal["user_id", "key"] = Field(
        "user_id", description="sessionId of an event whose record has no SESSION_ID: the user id or the Kafka key"
    )
    timestamp_unit: Literal["s", "ms", "us"] = Field("s", description="the unit of TIMESTAMP / sentAt numbers")
    on_delete: Literal["skip", "delete"] = "skip"  # delete: data deletion jobs (users routes only)

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @field_validator("dataset_arn")
    @classmethod
    def _arn_shape(cls, value: str) -> str:
        if not _ARN_RE.match(value):
            raise ValueError(
                "expected arn:aws:personalize:REGION:ACCOUNT:dataset/DATASET_GROUP/ITEMS "
                "(or /USERS, /INTERACTIONS), got " + repr(value)
            )
        return value

    @model_validator(mode="after")
    def _schema_loads(self) -> Route:
        # Fails at start-up, naming the file, if the schema is missing or not a Personalize schema.
        if self.on_delete == "delete" and self.kind != "users":
            raise ValueError(
                "on_delete: delete works for users routes only (Personalize has no deletion for items); use skip"
            )
        if self.schema_path is None:
            return self  # fetched from the control plane at start (ingestor.schema_source)
        try:
            self.load_schema()
            if self.kind == "interactions":
                self.event_builder()
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return self

    @model_validator(mode="after")
    def _tracking_id_for_interactions(self) -> Route:
        if self.kind == "interactions" and self.tracking_id is None:
            raise ValueError(
                "kind interactions sends PutEvents: set tracking_id to the event tracker's id "
                "(aws personalize describe-event-tracker ... → trackingId)"
            )
        if self.kind != "interactions" and self.tracking_id is not None:
            raise ValueError(f"tracking_id is for interactions routes only; this route is kind {self.kind}")
        if self.kind == "interactions" and self.format == "avro":
            raise ValueError("interactions routes read JSON values; format avro is for items and users routes")
        return self

    @property
    def dataset_kind(self) -> DatasetKind:
        return DatasetKind(self.kind.upper())

    @property
    def dataset_group(self) -> str:
        match = _ARN_RE.match(self.dataset_arn)
        assert match is not None
        return match["group"]

    @property
    def api(self) -> str:
        return {"items": "PutItems", "users": "PutUsers", "interactions": "PutEvents"}[self.kind]

    def load_schema(self) -> DatasetSchema:
        """The schema file's schema; ConfigError when the route has none (its schema is fetched at start)."""
        if self.schema_path is None:
            raise ConfigError(f"routes[{self.topic}].schema is not set: the dataset's schema is fetched at start")
        return DatasetSchema.load(self.schema_path, self.dataset_kind)

    def event_builder(self, avro: str | None = None, *, where: str = "schema") -> EventBuilder:
        """Interactions routes: the schema compiled into the PutEvents event builder — ``avro`` (the dataset's
        schema text, fetched at start) or else the schema file; ConfigError when the route has neither."""
        if avro is not None:
            return EventBuilder(avro, where=where, session_id=self.session_id, timestamp_unit=self.timestamp_unit)
        if self.schema_path is None:
            raise ConfigError(f"routes[{self.topic}].schema is not set: the dataset's schema is fetched at start")
        return EventBuilder.load(self.schema_path, session_id=self.session_id, timestamp_unit=self.timestamp_unit)


class BatchingSettings(_Frozen):
    max_records: int = Field(10, ge=1, le=10, description="records per PutItems/PutUsers call (the API allows 10)")
    linger_ms: int = Field(50, ge=0)
    max_buffered_records: int = Field(10_000, ge=10, description="at this, no partition is read (backpressure)")


class MetricsSettings(_Frozen):
    host: str = "0.0.0.0"  # noqa: S104 - a metrics endpoint in a pod must listen on all interfaces
    port: int = Field(9108, ge=0, le=65535)


class LoggingSettings(_Frozen):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "console"] = "auto"


class ShutdownSettings(_Frozen):
    drain_budget_s: float = Field(20.0, gt=0, description="time to finish in-flight work on SIGTERM or revocation")


class SchemaRegistrySettings(_Frozen):
    """A Confluent-compatible Schema Registry: writer schemas of Avro records (``format: avro`` or magic byte 0)."""

    url: str = Field(min_length=1, description="e.g. http://registry:8081 (a path prefix is kept)")
    basic_auth_user: str | None = None
    basic_auth_password: SecretStr | None = None
    basic_auth_password_file: Path | None = Field(None, description="a mounted secret holding the password")
    bearer_token: SecretStr | None = None
    bearer_token_file: Path | None = Field(None, description="a mounted secret holding the token (read per request)")
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_verify: bool = Field(True, description="verify the registry's TLS certificate and host name")
    request_timeout_s: float = Field(10.0, gt=0)
    cache_size: int = Field(1000, ge=1, description="writer schemas kept in memory (least recently used go first)")
    retry_base_delay_s: float = Field(0.5, gt=0, description="first back-off after a failed fetch")
    retry_max_delay_s: float = Field(30.0, gt=0, description="longest back-off between fetches while it is down")

    @model_validator(mode="after")
    def _consistent(self) -> SchemaRegistrySettings:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {self.url!r}")
        if "@" in self.url.split("/")[2]:
            raise ValueError("url must not hold credentials: set basic_auth_user and basic_auth_password(_file)")
        basic = self.basic_auth_password is not None or self.basic_auth_password_file is not None
        if basic and not self.basic_auth_user:
            raise ValueError("basic_auth_password(_file) needs basic_auth_user")
        if self.basic_auth_user and not basic:
            raise ValueError(
                "basic_auth_user needs basic_auth_password (INGESTOR_SCHEMA_REGISTRY__BASIC_AUTH_PASSWORD) "
                "or basic_auth_password_file"
            )
        bearer = self.bearer_token is not None or self.bearer_token_file is not None
        if bearer and self.basic_auth_user:
            raise ValueError("use either basic auth or a bearer token, not both")
        if self.basic_auth_password is not None and self.basic_auth_password_file is not None:
            raise ValueError("set basic_auth_password or basic_auth_password_file, not both")
        if self.bearer_token is not None and self.bearer_token_file is not None:
            raise ValueError("set bearer_token or bearer_token_file, not both")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together (client certificate authentication)")
        for name in ("basic_auth_password_file", "bearer_token_file", "ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}: no such file {path}")
        return self


class BulkSettings(_Frozen):
    """The bulk path: dataset import jobs fed by CSVs staged in S3 (``ingestor import``, catch-up in ``run``)."""

    s3_uri: str | None = Field(None, description="s3://BUCKET/PREFIX/ where CSVs are staged")
    s3_endpoint_url: str | None = Field(None, description="a local S3 server in development and tests")
    role_arn: str | None = Field(None, description="the IAM role Personalize assumes to read the bucket")
    catch_up_after_s: float = Field(
        0.0,
        ge=0,
        description="switch a dataset to an import when its backlog would "
        "take longer than this through the API; 0 = never",
    )
    poll_interval_s: float = Field(5.0, gt=0, description="how often a running import job is described")
    job_timeout_s: float = Field(6 * 3600.0, gt=0, description="give up waiting for an import job after this")
    work_dir: Path | None = Field(None, description="where the per-id store lives while a range is staged (temp)")
    part_size_mb: int = Field(16, ge=5, le=5120, description="S3 multipart part size (S3's minimum is 5 MB)")

    @field_validator("s3_uri")
    @classmethod
    def _s3_uri(cls, value: str | None) -> str | None:
        if value is not None and not _S3_URI_RE.match(value):
            raise ValueError(f"expected s3://BUCKET/PREFIX/ (a bucket name of 3-63 characters), got {value!r}")
        return value

    @field_validator("role_arn")
    @classmethod
    def _role_arn(cls, value: str | None) -> str | None:
        if value is not None and not _ROLE_ARN_RE.fullmatch(value):
            raise ValueError(f"expected an IAM role ARN such as arn:aws:iam::123456789012:role/NAME, got {value!r}")
        return value

    @model_validator(mode="after")
    def _catch_up_needs_staging(self) -> BulkSettings:
        if self.catch_up_after_s > 0:
            missing = [k for k in ("s3_uri", "role_arn") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"catch_up_after_s > 0 needs {' and '.join(missing)} (or set catch_up_after_s: 0)")
        return self

    def require(self) -> tuple[str, str]:
        """(s3_uri, role_arn), or ConfigError naming the missing key."""
        missing = [k for k in ("s3_uri", "role_arn") if getattr(self, k) is None]
        if missing:
            keys = ", ".join(f"bulk.{k} (INGESTOR_BULK__{k.upper()})" for k in missing)
            raise ConfigError(f"the bulk path needs {keys}")
        assert self.s3_uri is not None and self.role_arn is not None
        return self.s3_uri, self.role_arn


class DeletionSettings(_Frozen):
    """User deletions (routes with ``on_delete: delete``): data deletion jobs fed by CSVs staged under bulk.s3_uri."""

    max_ids: int = Field(1000, ge=1, description="submit a deletion job once this many deletes are collected")
    max_wait_s: float = Field(60.0, gt=0, description="... or once the oldest collected delete waited this long")
    poll_interval_s: float = Field(10.0, gt=0, description="how often a running deletion job is described")
    max_attempts: int = Field(3, ge=1, description="a FAILED job is submitted again up to this many times in all")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        frozen=True, extra="forbid", env_prefix="INGESTOR_", env_nested_delimiter="__", case_sensitive=False
    )

    kafka: KafkaSettings = KafkaSettings()
    personalize: PersonalizeSettings = PersonalizeSettings()
    routes: tuple[Route, ...] = Field(min_length=1)
    batching: BatchingSettings = BatchingSettings()
    metrics: MetricsSettings = MetricsSettings()
    logging: LoggingSettings = LoggingSettings()
    shutdown: ShutdownSettings = ShutdownSettings()
    schema_registry: SchemaRegistrySettings | None = None
    bulk: BulkSettings = BulkSettings()
    deletions: DeletionSettings = DeletionSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init kwargs; the environment overrides it.
        return (env_settings, init_settings, file_secret_settings)

    @model_validator(mode="after")
    def _routes_consistent(self) -> Settings:
        topics = [r.topic for r in self.routes]
        if len(set(topics)) != len(topics):
            raise ValueError(f"routes: each topic may appear in one route only, got {topics}")
        if self.kafka.dead_letter_topic in topics:
            raise ValueError("kafka.dead_letter_topic must not be one of the route topics")
        deleting = [r.topic for r in self.routes if r.on_delete == "delete"]
        mixed = sorted(
            {r.dataset_arn for r in self.routes if r.on_delete == "delete"}
            & {r.dataset_arn for r in self.routes if r.on_delete == "skip"}
        )
        if mixed:
            raise ValueError(f"routes feeding {mixed[0]} must agree on on_delete (all skip or all delete)")
        if deleting and (self.bulk.s3_uri is None or self.bulk.role_arn is None):
            raise ValueError(
                f"routes {deleting} have on_delete: delete, which stages deletion CSVs: set bulk.s3_uri "
                "(INGESTOR_BULK__S3_URI) and bulk.role_arn (INGESTOR_BULK__ROLE_ARN)"
            )
        needed_ms = (self.shutdown.drain_budget_s + self.kafka.commit_timeout_s) * 1000
        if self.kafka.rebalance_timeout_ms < needed_ms:
            raise ValueError(
                f"kafka.rebalance_timeout_ms ({self.kafka.rebalance_timeout_ms}) must cover the revocation drain: "
                f"shutdown.drain_budget_s + kafka.commit_timeout_s = {needed_ms:.0f} ms; raise it or lower those"
            )
        return self

    @model_validator(mode="after")
    def _registry_for_avro(self) -> Settings:
        avro = [r.topic for r in self.routes if r.format == "avro"]
        if avro and self.schema_registry is None:
            raise ValueError(
                f"routes {avro} have format avro, which needs a schema_registry section with its url "
                "(or INGESTOR_SCHEMA_REGISTRY__URL)"
            )
        return self

    @model_validator(mode="after")
    def _datasets_consistent(self) -> Settings:
        # Routes feeding one dataset share its buffer and target: they must agree on what the dataset is.
        seen: dict[str, Route] = {}
        for r in self.routes:
            first = seen.setdefault(r.dataset_arn, r)
            if (first.kind, first.tracking_id) != (r.kind, r.tracking_id):
                raise ValueError(
                    f"routes {first.topic!r} and {r.topic!r} feed the same dataset {r.dataset_arn} "
                    "with a different kind or tracking_id"
                )
        return self

    @classmethod
    def load(cls, path: Path | str | None = None, **overrides: Any) -> Settings:
        """Read the YAML file (if any), resolve relative paths against it, apply env overrides, validate."""
        data: dict[str, Any] = {}
        where = "environment"
        if path is not None:
            path = Path(path)
            where = str(path)
            loaded = read_yaml_mapping(path, "config file", "pass --config FILE")
            data = _resolve_paths(loaded, path.parent.resolve())
        data.update(overrides)
        try:
            return cls(**data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, where)) from None


def read_yaml_mapping(path: Path, what: str, hint: str = "") -> dict[str, Any]:
    """A YAML file whose top level is a mapping (empty file: {}); errors name the file and what is wrong."""
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot be read ({exc.strerror})" + (f"; {hint}" if hint else "")) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path}: not valid YAML ({exc})") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{what} {path}: the top level must be a mapping of sections")
    return loaded


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    security = (data.get("kafka") or {}).get("security")
    if isinstance(security, dict):
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "sasl_password_file"):
            value = security.get(name)
            if isinstance(value, str) and not Path(value).is_absolute():
                security[name] = str(base / value)
    registry = data.get("schema_registry")
    if isinstance(registry, dict):
        for name in ("basic_auth_password_file", "bearer_token_file", "ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = registry.get(name)
            if isinstance(value, str) and not Path(value).is_absolute():
                registry[name] = str(base / value)
    routes = data.get("routes")
    if isinstance(routes, list):
        data["routes"] = [
            {**r, "schema": str(base / r["schema"])}
            if isinstance(r, dict) and isinstance(r.get("schema"), str) and not Path(r["schema"]).is_absolute()
            else r
            for r in routes
        ]
    return data


def format_validation_error(exc: ValidationError, where: str) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    # A list whose items failed also reports "should have at least 1 item after validation" when none is left:
    # a consequence of the items' own errors, not a second problem.
    failed_items = {err["loc"][:i] for err in errors for i, p in enumerate(err["loc"]) if isinstance(p, int)}
    lines = [f"invalid configuration ({where}):"]
    for err in errors:
        msg = err["msg"].removeprefix("Value error, ")
        if not err["loc"]:  # a check across sections: its message names the settings
            lines.append(f"  {msg}")
            continue
        if err["type"] == "too_short" and err["loc"] in failed_items:
            continue
        loc = ".".join(str(p) for p in err["loc"])
        lines.append(f"  {loc}: {msg}  ({_where_to_set(err['loc'])})")
    return "\n".join(lines)


def _where_to_set(loc: tuple[int | str, ...]) -> str:
    """Where a setting can be changed: the YAML file, or its INGESTOR_* variable (a list only as a whole, in JSON)."""
    names: list[str] = []
    for part in loc:
        if isinstance(part, int):  # an item of a list (routes): the variable holds the whole list
            env = "INGESTOR_" + "__".join(names)
            return f"set it in the YAML file, or override the whole list as JSON in {env}"
        names.append(str(part).upper())
    return "set it in the YAML file or as INGESTOR_" + "__".join(names)
