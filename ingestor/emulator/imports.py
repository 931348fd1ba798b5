"""Dataset import jobs, Personalize's bulk path: Create-, Describe- and ListDatasetImportJob(s).

A job reads the CSV file(s) at ``dataSource.dataLocation`` from an S3-protocol server (``imports.s3_endpoint_url``:
moto's standalone server in development and tests) and goes CREATE PENDING → CREATE IN_PROGRESS → ACTIVE, or
CREATE FAILED with a ``failureReason`` naming the bad row, within ``imports.duration_s``. Its rows take effect at
ACTIVE, not before: they become the latest records of their ids, overwriting what PutItems/PutUsers wrote earlier.

The rules enforced (Personalize's documented ones, with the exceptions botocore's model lists):

* request members: botocore's lengths and patterns (jobName, datasetArn, dataLocation, roleArn), importMode
  FULL | INCREMENTAL, at most 200 tags (TooManyTagsException) → InvalidInputException;
* an unknown dataset → ResourceNotFoundException; a job name used before (any dataset) → ResourceAlreadyExistsException;
* one PENDING or IN_PROGRESS import per dataset → ResourceInUseException; at most ``imports.max_running_jobs`` (5)
  PENDING or IN_PROGRESS imports per region → LimitExceededException;
* INCREMENTAL only after an earlier import of the dataset reached ACTIVE → InvalidInputException;
* FULL replaces the dataset's earlier bulk records; records written individually (PutItems/PutUsers) stay;
* data per job at most 100 GB (FULL) or 1 GB (INCREMENTAL), else CREATE FAILED;
* the CSV: UTF-8, RFC 4180, a header of the schema's field names (the id field and every required field), one value
  per column, empty = null, ``|`` between categorical values; any bad row fails the whole job, naming the row.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import enum
import io
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ingestor.emulator.config import ImportConfig
from ingestor.emulator.datasets import Dataset, check_string
from ingestor.emulator.errors import ApiError, Outcome, invalid_input, not_found
from ingestor.errors import SchemaError
from ingestor.schema import DatasetKind

if TYPE_CHECKING:
    from ingestor.emulator.service import EmulatorService

log = logging.getLogger(__name__)

# botocore's `personalize` model: shapes of CreateDatasetImportJob's members.
JOB_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9\-_]*")
JOB_NAME_MAX_CHARS = 63
ARN_MAX_CHARS = 256
DATASET_ARN_RE = re.compile(r"arn:([a-z\d-]+):personalize:.*:.*:.+")
ROLE_ARN_RE = re.compile(r"arn:([a-z\d-]+):iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+")
DATA_LOCATION_RE = re.compile(r"(s3|http|https)://.+")
MAX_TAGS = 200
MAX_LIST_RESULTS = 100
S3_URI_RE = re.compile(r"s3://(?P<bucket>[^/]+)/?(?P<key>.*)")
PENDING_SHARE = 0.1  # of imports.duration_s spent in CREATE PENDING


class JobStatus(enum.StrEnum):
    PENDING = "CREATE PENDING"
    IN_PROGRESS = "CREATE IN_PROGRESS"
    ACTIVE = "ACTIVE"
    FAILED = "CREATE FAILED"

    @property
    def running(self) -> bool:
        return self in (JobStatus.PENDING, JobStatus.IN_PROGRESS)


@dataclass
class ImportJob:
    name: str
    arn: str
    dataset_arn: str
    data_location: str
    role_arn: str
    mode: str
    created: float
    updated: float
    status: JobStatus = JobStatus.PENDING
    failure_reason: str | None = None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "datasetImportJobArn": self.arn,
            "jobName": self.name,
            "status": self.status.value,
            "creationDateTime": self.created,
            "lastUpdatedDateTime": self.updated,
            "importMode": self.mode,
        }
        if self.failure_reason is not None:
            out["failureReason"] = self.failure_reason
        return out

    def describe(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "datasetArn": self.dataset_arn,
            "dataSource": {"dataLocation": self.data_location},
            "roleArn": self.role_arn,
            "publishAttributionMetricsToS3": False,
        }


class ObjectStore(Protocol):
    """What a job reads: S3 objects. ``list`` returns (key, size) under a prefix, sorted by key."""

    async def list_objects(self, bucket: str, prefix: str) -> list[tuple[str, int]]: ...

    async def read(self, bucket: str, key: str) -> bytes: ...

    async def aclose(self) -> None: ...


class DataLocationError(Exception):
    """The data location cannot be read (no bucket, no object, no S3 server)."""


class S3ObjectStore:
    """An S3 client (aioboto3) on ``imports.s3_endpoint_url``, opened on first use inside the running loop."""

    def __init__(self, endpoint_url: str, region: str) -> None:
        self.endpoint_url = endpoint_url
        self.region = region
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None

    async def _s3(self) -> Any:
        if self._client is None:
            import aioboto3
            from aiobotocore.config import AioConfig

            session = aioboto3.Session(aws_access_key_id="emulator", aws_secret_access_key="emulator")  # noqa: S106
            config = AioConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 2})
            self._client = await self._stack.enter_async_context(
                session.client("s3", endpoint_url=self.endpoint_url, region_name=self.region, config=config)
            )
        return self._client

    async def list_objects(self, bucket: str, prefix: str) -> list[tuple[str, int]]:
        from botocore.exceptions import BotoCoreError, ClientError

        s3 = await self._s3()
        out: list[tuple[str, int]] = []
        try:
            async for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                out += [(o["Key"], int(o["Size"])) for o in page.get("Contents", [])]
        except (BotoCoreError, ClientError) as exc:
            raise DataLocationError(f"s3://{bucket}/{prefix}: {exc}") from exc
        return sorted(out)

    async def read(self, bucket: str, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        s3 = await self._s3()
        try:
            response = await s3.get_object(Bucket=bucket, Key=key)
            async with response["Body"] as body:
                data: bytes = await body.read()
        except (BotoCoreError, ClientError) as exc:
            raise DataLocationError(f"s3://{bucket}/{key}: {exc}") from exc
        return data

    async def aclose(self) -> None:
        self._client = None
        await self._stack.aclose()


class RowError(Exception):
    """A row (or the header) of a staged CSV does not match the dataset schema."""


def parse_csv(data: bytes, dataset: Dataset, where: str) -> list[tuple[str, dict[str, Any]]]:
    """Every row of one staged CSV as (id, properties); RowError naming the first bad row."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RowError(f"{where} is not UTF-8 (byte {exc.start})") from exc
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    schema, id_field = dataset.schema, dataset.kind.id_field
    try:
        header = next(reader, None)
        if not header:
            raise RowError(f"{where} is empty: the first line must be a header of the schema's field names")
        known = {f.name for f in schema.fields} | {id_field}
        unknown = [c for c in header if c not in known]
        if unknown:
            raise RowError(f"{where}: header column(s) {unknown} are not fields of the dataset schema {sorted(known)}")
        if len(set(header)) != len(header):
            raise RowError(f"{where}: the header names a column twice: {header}")
        missing = [f.name for f in schema.fields if not f.nullable and f.name not in header]
        if id_field not in header:
            missing.insert(0, id_field)
        if missing:
            raise RowError(f"{where}: the header lacks the required field(s) {missing}")
        id_at = header.index(id_field)
        rows: list[tuple[str, dict[str, Any]]] = []
        for row in reader:
            line = reader.line_num
            if len(row) != len(header):
                raise RowError(
                    f"{where} row {len(rows) + 1} (line {line}): {len(row)} values for {len(header)} columns"
                )
            record_id = row[id_at]
            problem = check_string(record_id, id_field)
            if problem:
                raise RowError(f"{where} row {len(rows) + 1} (line {line}): {problem}")
            fields = {c: v for c, v in zip(header, row, strict=True) if c != id_field and v != ""}
            try:
                props = schema.normalize(fields)
            except SchemaError as exc:
                raise RowError(f"{where} row {len(rows) + 1} (line {line}, {id_field} {record_id!r}): {exc}") from exc
            rows.append((record_id, props))
    except csv.Error as exc:
        raise RowError(f"{where} line {reader.line_num}: not valid CSV ({exc})") from exc
    return rows


class ImportJobs:
    """The import jobs of one emulator; each running job is an asyncio task."""

    def __init__(
        self,
        config: ImportConfig,
        datasets: dict[str, Dataset],
        apply: Callable[[Dataset, list[tuple[str, dict[str, Any]]], bool], None],
        *,
        wall_clock: Callable[[], float] = time.time,
        store: ObjectStore | None = None,
    ) -> None:
        self.config = config
        self._datasets = datasets
        self._apply = apply
        self._now = wall_clock
        self._store = store
        self._own_store = store is None
        self.jobs: dict[str, ImportJob] = {}  # by ARN, in creation order
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def reconfigure(self, config: ImportConfig) -> None:
        """A new duration applies to jobs created from now on; a new S3 endpoint to reads from now on."""
        if config.s3_endpoint_url != self.config.s3_endpoint_url and self._own_store and self._store is not None:
            store, self._store = self._store, None
            task = asyncio.get_running_loop().create_task(store.aclose())
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)
        self.config = config

    # ------------------------------------------------------------------ the API

    def create(self, payload: dict[str, Any]) -> dict[str, Any]:
        name, dataset_arn = payload.get("jobName"), payload.get("datasetArn")
        source, role_arn = payload.get("dataSource"), payload.get("roleArn")
        mode = payload.get("importMode", "FULL")
        location = source.get("dataLocation") if isinstance(source, dict) else None
        tags = payload.get("tags", [])
        if isinstance(tags, list) and len(tags) > MAX_TAGS:
            raise ApiError(
                400, "TooManyTagsException", f"at most {MAX_TAGS} tags, got {len(tags)}", Outcome.INVALID_INPUT
            )
        problems = [
            _pattern_problem(name, "jobName", JOB_NAME_RE, JOB_NAME_MAX_CHARS, min_chars=1),
            _pattern_problem(dataset_arn, "datasetArn", DATASET_ARN_RE, ARN_MAX_CHARS),
            _pattern_problem(location, "dataSource.dataLocation", DATA_LOCATION_RE, ARN_MAX_CHARS),
            _pattern_problem(role_arn, "roleArn", ROLE_ARN_RE, ARN_MAX_CHARS),
            None if mode in ("FULL", "INCREMENTAL") else f"importMode must be FULL or INCREMENTAL, got {mode!r}",
        ]
        found = [p for p in problems if p]
        if found:
            plural = "s" if len(found) > 1 else ""
            raise invalid_input(f"{len(found)} validation error{plural} detected: " + "; ".join(found))
        assert isinstance(name, str) and isinstance(dataset_arn, str) and isinstance(location, str)
        dataset = self._datasets.get(dataset_arn)
        if dataset is None:
            raise not_found(f"Could not find the dataset {dataset_arn}")
        if dataset.kind is DatasetKind.INTERACTIONS:
            raise invalid_input(f"the emulator imports ITEMS and USERS datasets only; {dataset_arn} is INTERACTIONS")
        if any(job.name == name for job in self.jobs.values()):
            raise ApiError(
                400,
                "ResourceAlreadyExistsException",
                f"A dataset import job with the name {name} already exists",
                Outcome.INVALID_INPUT,
            )
        busy = next((j for j in self.jobs.values() if j.dataset_arn == dataset_arn and j.status.running), None)
        if busy is not None:
            raise ApiError(
                400,
                "ResourceInUseException",
                f"The dataset {dataset_arn} is in use by the dataset import job {busy.arn} ({busy.status.value})",
                Outcome.INVALID_INPUT,
            )
        running = sum(1 for j in self.jobs.values() if j.status.running)
        if running >= self.config.max_running_jobs:
            raise ApiError(
                400,
                "LimitExceededException",
                f"More than {self.config.max_running_jobs} resources with PENDING or IN_PROGRESS status.",
                Outcome.INVALID_INPUT,
            )
        if mode == "INCREMENTAL" and not dataset.bulk_imported:
            raise invalid_input(
                f"importMode INCREMENTAL needs an earlier bulk import into {dataset_arn}; the first import must be FULL"
            )
        now = self._now()
        job = ImportJob(name, _job_arn(dataset_arn, name), dataset_arn, location, str(role_arn), mode, now, now)
        self.jobs[job.arn] = job
        task = asyncio.get_running_loop().create_task(self._run(job, dataset), name=f"import job {name}")
        self._tasks[job.arn] = task
        task.add_done_callback(lambda _t: self._tasks.pop(job.arn, None))
        log.info("import job %s (%s) created for %s from %s", name, mode, dataset_arn, location)
        return {"datasetImportJobArn": job.arn}

    def describe(self, payload: dict[str, Any]) -> dict[str, Any]:
        arn = payload.get("datasetImportJobArn")
        problem = _pattern_problem(arn, "datasetImportJobArn", DATASET_ARN_RE, ARN_MAX_CHARS)
        if problem:
            raise invalid_input(f"1 validation error detected: {problem}")
        job = self.jobs.get(str(arn))
        if job is None:
            raise not_found(f"Could not find the dataset import job {arn}")
        return {"datasetImportJob": job.describe()}

    def list_jobs(self, payload: dict[str, Any]) -> dict[str, Any]:
        dataset_arn, token = payload.get("datasetArn"), payload.get("nextToken")
        max_results = payload.get("maxResults", MAX_LIST_RESULTS)
        if isinstance(max_results, bool) or not isinstance(max_results, int) or not 1 <= max_results <= 100:
            raise invalid_input(f"maxResults must be an integer from 1 to {MAX_LIST_RESULTS}, got {max_results!r}")
        jobs = [j for j in reversed(self.jobs.values()) if dataset_arn is None or j.dataset_arn == dataset_arn]
        start = _decode_token(token) if token is not None else 0
        page = jobs[start : start + max_results]
        out: dict[str, Any] = {"datasetImportJobs": [j.summary() for j in page]}
        if start + max_results < len(jobs):
            out["nextToken"] = base64.urlsafe_b64encode(str(start + max_results).encode()).decode()
        return out

    # ------------------------------------------------------------------ a job's life

    async def _run(self, job: ImportJob, dataset: Dataset) -> None:
        duration = self.config.duration_s
        started = time.monotonic()
        try:
            await asyncio.sleep(duration * PENDING_SHARE)
            self._set(job, JobStatus.IN_PROGRESS)
            rows = await self._read(job, dataset)
            await asyncio.sleep(max(0.0, duration - (time.monotonic() - started)))
            self._apply(dataset, rows, job.mode == "FULL")
            self._set(job, JobStatus.ACTIVE)
            log.info("import job %s ACTIVE: %d rows imported into %s", job.name, len(rows), job.dataset_arn)
        except (RowError, DataLocationError) as exc:
            await asyncio.sleep(max(0.0, duration - (time.monotonic() - started)))
            job.failure_reason = str(exc)
            self._set(job, JobStatus.FAILED)
            log.info("import job %s CREATE FAILED: %s", job.name, exc)
        except asyncio.CancelledError:
            if job.status.running:
                job.failure_reason = "the emulator stopped or was reset while the job ran"
                self._set(job, JobStatus.FAILED)
            raise
        except Exception as exc:  # a bug in the emulator must not leave a job running forever
            log.exception("import job %s", job.name)
            job.failure_reason = f"internal error: {type(exc).__name__}: {exc}"
            self._set(job, JobStatus.FAILED)

    def _set(self, job: ImportJob, status: JobStatus) -> None:
        job.status = status
        job.updated = self._now()

    async def _read(self, job: ImportJob, dataset: Dataset) -> list[tuple[str, dict[str, Any]]]:
        match = S3_URI_RE.fullmatch(job.data_location)
        if match is None:
            raise DataLocationError(f"Invalid data location {job.data_location}: expected s3://BUCKET/KEY")
        store = self._object_store()
        bucket, key = match["bucket"], match["key"]
        objects = await store.list_objects(bucket, key)
        if not key.endswith("/") and key:
            objects = [o for o in objects if o[0] == key]
        objects = [o for o in objects if not o[0].endswith("/")]
        if not objects:
            raise DataLocationError(f"Input data location {job.data_location} does not exist or holds no file")
        total = sum(size for _, size in objects)
        limit = self.config.max_full_bytes if job.mode == "FULL" else self.config.max_incremental_bytes
        if total > limit:
            raise DataLocationError(
                f"{job.data_location} holds {total} bytes, over the {limit} bytes a {job.mode} import may read"
            )
        rows: list[tuple[str, dict[str, Any]]] = []
        for object_key, _ in objects:
            data = await store.read(bucket, object_key)
            rows += await asyncio.to_thread(parse_csv, data, dataset, f"s3://{bucket}/{object_key}")
        return rows

    def object_store(self) -> ObjectStore:
        """The S3 reader (shared with data deletion jobs)."""
        return self._object_store()

    def _object_store(self) -> ObjectStore:
        if self._store is None:
            if self.config.s3_endpoint_url is None:
                raise DataLocationError(
                    "the emulator has no S3 server to read from: set imports.s3_endpoint_url or start it with --s3"
                )
            self._store = S3ObjectStore(self.config.s3_endpoint_url, self.config.s3_region)
        return self._store

    # ------------------------------------------------------------------ lifecycle

    def reset(self) -> None:
        """Forget every job; running ones are cancelled (they never reach ACTIVE)."""
        for task in self._tasks.values():
            task.cancel()
        self.jobs.clear()

    async def _cancel(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def aclose(self) -> None:
        await self._cancel()
        if self._own_store and self._store is not None:
            await self._store.aclose()
            self._store = None

    def to_json(self) -> list[dict[str, Any]]:
        return [job.describe() for job in self.jobs.values()]


def _pattern_problem(
    value: Any, label: str, pattern: re.Pattern[str], max_chars: int, min_chars: int = 0
) -> str | None:
    if not isinstance(value, str):
        return f"{label} must be a string, got {'null' if value is None else type(value).__name__}"
    if not min_chars <= len(value) <= max_chars:
        return f"{label} must be {min_chars}-{max_chars} characters, got {len(value)}"
    if not pattern.fullmatch(value):
        return f"{label} {value!r} must match the pattern {pattern.pattern}"
    return None


def _job_arn(dataset_arn: str, name: str) -> str:
    parts = dataset_arn.split(":", 5)
    return f"arn:{parts[1]}:personalize:{parts[3]}:{parts[4]}:dataset-import-job/{name}"


def _decode_token(token: Any) -> int:
    try:
        return int(base64.urlsafe_b64decode(str(token).encode()).decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "InvalidNextTokenException", "the nextToken is not valid", Outcome.INVALID_INPUT) from exc


# ---------------------------------------------------------------------- the control-plane dispatch entries

Handler = Callable[["EmulatorService", dict[str, Any]], Awaitable[dict[str, Any]]]


async def _create(service: EmulatorService, payload: dict[str, Any]) -> dict[str, Any]:
    return service.imports.create(payload)


async def _describe(service: EmulatorService, payload: dict[str, Any]) -> dict[str, Any]:
    return service.imports.describe(payload)


async def _list(service: EmulatorService, payload: dict[str, Any]) -> dict[str, Any]:
    return service.imports.list_jobs(payload)


OPERATIONS: dict[str, Handler] = {
    "CreateDatasetImportJob": _create,
    "DescribeDatasetImportJob": _describe,
    "ListDatasetImportJobs": _list,
}
