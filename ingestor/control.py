"""The Personalize control plane (botocore's ``personalize`` service): dataset import jobs, the dataset's own
schema (DescribeDataset → DescribeSchema) and data deletion jobs.

One aioboto3 client for the command's or the service's lifetime. botocore retries throttling and 5xx itself here
(``standard`` mode): control calls are few and not paced by our limiter. Foreign errors are mapped at this boundary:

* ``ResourceAlreadyExistsException`` → :class:`JobNameTaken` (the deterministic job name was used before);
* ``ResourceInUseException`` / ``LimitExceededException`` → :class:`ImportBusy` (another import runs: wait, retry);
* unknown dataset, access denied, bad credentials → :class:`~ingestor.errors.FatalRouteError`;
* anything else (invalid input, connection errors) → :class:`ControlPlaneError`.

Without ``personalize.control_endpoint_url`` the control plane is reached at ``personalize.endpoint_url`` (the local
endpoint serves both at one URL) or, when neither is set, at AWS's regional endpoint.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import aioboto3
import aiohttp
import botocore.exceptions
from aiobotocore.config import AioConfig

from ingestor.config import Settings
from ingestor.errors import ConfigError, FatalRouteError, IngestorError
from ingestor.sender import FATAL_CODES


class ControlPlaneError(IngestorError):
    """A control-plane call failed."""


class JobNameTaken(ControlPlaneError):
    """ResourceAlreadyExistsException: an import job of that name exists."""


class ImportBusy(ControlPlaneError):
    """ResourceInUseException / LimitExceededException: another import job runs; try again later."""


class ImportMode(enum.StrEnum):
    FULL = "FULL"
    INCREMENTAL = "INCREMENTAL"


class JobStatus(enum.StrEnum):
    PENDING = "CREATE PENDING"
    IN_PROGRESS = "CREATE IN_PROGRESS"
    ACTIVE = "ACTIVE"
    FAILED = "CREATE FAILED"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.ACTIVE, JobStatus.FAILED)


@dataclass(frozen=True)
class ImportJob:
    arn: str
    name: str
    status: JobStatus
    mode: ImportMode
    failure_reason: str | None = None

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> ImportJob:
        status = str(data.get("status", ""))
        try:
            parsed = JobStatus(status)
        except ValueError:  # an undocumented status (e.g. a future one): not finished, keep waiting
            parsed = JobStatus.IN_PROGRESS
        return cls(
            arn=str(data["datasetImportJobArn"]),
            name=str(data.get("jobName", "")),
            status=parsed,
            mode=ImportMode(data.get("importMode", "FULL")),
            failure_reason=data.get("failureReason"),
        )


class ImportJobs(Protocol):
    """What the bulk path needs from the control plane (a fake in unit tests)."""

    async def create_import_job(
        self, name: str, dataset_arn: str, location: str, role_arn: str, mode: ImportMode
    ) -> str: ...

    async def describe_import_job(self, arn: str) -> ImportJob: ...

    async def list_import_jobs(self, dataset_arn: str) -> list[ImportJob]: ...


class ControlPlane:
    """Dataset import jobs through an aioboto3 ``personalize`` client."""

    def __init__(self, client: Any) -> None:
        self._client = client

    async def create_import_job(
        self, name: str, dataset_arn: str, location: str, role_arn: str, mode: ImportMode
    ) -> str:
        response = await self._call(
            "create_dataset_import_job",
            jobName=name,
            datasetArn=dataset_arn,
            dataSource={"dataLocation": location},
            roleArn=role_arn,
            importMode=mode.value,
        )
        return str(response["datasetImportJobArn"])

    async def describe_import_job(self, arn: str) -> ImportJob:
        response = await self._call("describe_dataset_import_job", datasetImportJobArn=arn)
        return ImportJob.from_api(response["datasetImportJob"])

    async def list_import_jobs(self, dataset_arn: str) -> list[ImportJob]:
        """Every import job of the dataset, newest first (all pages)."""
        jobs: list[ImportJob] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"datasetArn": dataset_arn, "maxResults": 100}
            if token:
                kwargs["nextToken"] = token
            response = await self._call("list_dataset_import_jobs", **kwargs)
            jobs += [ImportJob.from_api(j) for j in response.get("datasetImportJobs", [])]
            token = response.get("nextToken")
            if not token:
                return jobs

    async def probe(self, dataset_arn: str) -> None:
        """Start-up check: the control plane answers. ConfigError naming the key if it cannot be reached."""
        try:
            await self._call("list_dataset_import_jobs", datasetArn=dataset_arn, maxResults=1)
        except ControlPlaneError as exc:
            raise ConfigError(
                f"personalize.control_endpoint_url: the Personalize control plane does not answer ({exc}); "
                "set it (INGESTOR_PERSONALIZE__CONTROL_ENDPOINT_URL) or check the network"
            ) from exc

    # ------------------------------------------------------------------ the dataset's own schema

    async def describe_dataset_schema(self, dataset_arn: str) -> LiveSchema:
        """The dataset's live schema: DescribeDataset → ``schemaArn`` → DescribeSchema."""
        dataset = (await self._call("describe_dataset", datasetArn=dataset_arn))["dataset"]
        schema_arn = str(dataset.get("schemaArn") or "")
        if not schema_arn:
            raise ControlPlaneError(f"describe_dataset: {dataset_arn} has no schemaArn")
        schema = (await self._call("describe_schema", schemaArn=schema_arn))["schema"]
        return LiveSchema(dataset_arn, schema_arn, str(schema.get("schema", "")))

    # ------------------------------------------------------------------ data deletion jobs

    async def create_deletion_job(self, name: str, dataset_group_arn: str, location: str, role_arn: str) -> str:
        response = await self._call(
            "create_data_deletion_job",
            jobName=name,
            datasetGroupArn=dataset_group_arn,
            dataSource={"dataLocation": location},
            roleArn=role_arn,
        )
        return str(response["dataDeletionJobArn"])

    async def describe_deletion_job(self, arn: str) -> DeletionJob:
        response = await self._call("describe_data_deletion_job", dataDeletionJobArn=arn)
        return DeletionJob.from_api(response["dataDeletionJob"])

    async def list_deletion_jobs(self, dataset_group_arn: str) -> list[DeletionJob]:
        """Every deletion job of the dataset group, newest first (all pages)."""
        jobs: list[DeletionJob] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"datasetGroupArn": dataset_group_arn, "maxResults": 100}
            if token:
                kwargs["nextToken"] = token
            response = await self._call("list_data_deletion_jobs", **kwargs)
            jobs += [DeletionJob.from_api(j) for j in response.get("dataDeletionJobs", [])]
            token = response.get("nextToken")
            if not token:
                return jobs

    async def _call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response: dict[str, Any] = await getattr(self._client, method)(**kwargs)
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            message = str(exc.response.get("Error", {}).get("Message", exc))
            if code == "ResourceAlreadyExistsException":
                raise JobNameTaken(message) from exc
            if code in ("ResourceInUseException", "LimitExceededException"):
                raise ImportBusy(f"{code}: {message}") from exc
            if code in FATAL_CODES:
                raise FatalRouteError(f"{method}: {code}: {message}") from exc
            raise ControlPlaneError(f"{method}: {code}: {message}") from exc
        except (botocore.exceptions.BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ControlPlaneError(f"{method}: {type(exc).__name__}: {exc}") from exc
        return response


def control_endpoint(settings: Settings) -> str | None:
    p = settings.personalize
    return p.control_endpoint_url or p.endpoint_url


@contextlib.asynccontextmanager
async def control_plane(settings: Settings) -> AsyncIterator[ControlPlane]:
    """A ControlPlane for the block's lifetime (credentials from the standard chain, or the configured keys)."""
    p = settings.personalize
    session = aioboto3.Session(
        region_name=p.region,
        aws_access_key_id=p.aws_access_key_id.get_secret_value() if p.aws_access_key_id else None,
        aws_secret_access_key=p.aws_secret_access_key.get_secret_value() if p.aws_secret_access_key else None,
    )
    config = AioConfig(
        retries={"max_attempts": 5, "mode": "standard"},
        connect_timeout=p.connect_timeout_s,
        read_timeout=p.read_timeout_s,
    )
    async with session.client("personalize", endpoint_url=control_endpoint(settings), config=config) as client:
        yield ControlPlane(client)


# ---------------------------------------------------------------------- the dataset's own schema


@dataclass(frozen=True)
class LiveSchema:
    """A dataset's schema as the control plane holds it (DescribeDataset → schemaArn → DescribeSchema)."""

    dataset_arn: str
    schema_arn: str
    avro: str  # the schema's JSON text, in Personalize's Avro dialect


# ---------------------------------------------------------------------- data deletion jobs


class DeletionStatus(enum.StrEnum):
    PENDING = "PENDING"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"

    @property
    def finished(self) -> bool:
        return self in (DeletionStatus.COMPLETED, DeletionStatus.FAILED)


@dataclass(frozen=True)
class DeletionJob:
    arn: str
    name: str
    status: DeletionStatus
    num_deleted: int | None = None
    failure_reason: str | None = None

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> DeletionJob:
        try:
            status = DeletionStatus(str(data.get("status", "")))
        except ValueError:  # an undocumented status: not finished, keep waiting
            status = DeletionStatus.IN_PROGRESS
        return cls(
            arn=str(data["dataDeletionJobArn"]),
            name=str(data.get("jobName", "")),
            status=status,
            num_deleted=data.get("numDeleted"),
            failure_reason=data.get("failureReason"),
        )


class DeletionJobs(Protocol):
    """What the deletion path needs from the control plane (a fake in unit tests)."""

    async def create_deletion_job(self, name: str, dataset_group_arn: str, location: str, role_arn: str) -> str: ...

    async def describe_deletion_job(self, arn: str) -> DeletionJob: ...

    async def list_deletion_jobs(self, dataset_group_arn: str) -> list[DeletionJob]: ...


def dataset_group_arn(dataset_arn: str) -> str:
    """``arn:aws:personalize:R:A:dataset/GROUP/USERS`` → ``arn:aws:personalize:R:A:dataset-group/GROUP``."""
    head, _, rest = dataset_arn.partition(":dataset/")
    return f"{head}:dataset-group/{rest.split('/', 1)[0]}"
