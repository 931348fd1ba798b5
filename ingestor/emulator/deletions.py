"""Data deletion jobs: Create-, Describe- and ListDataDeletionJob(s) — how Personalize removes users.

A job reads the CSV(s) at ``dataSource.dataLocation`` (a header with ``USER_ID``, one id a row; a folder URI takes
every file under it) from the same S3-protocol server as the import jobs (``imports.s3_endpoint_url``) and goes
PENDING → IN_PROGRESS → COMPLETED (or FAILED with a ``failureReason``) within ``deletions.duration_s``. The users
are removed **at COMPLETED**, not before — from every USERS dataset of the dataset group, with their events — so a
user written again while the job runs is removed too, as with Personalize.

Rules: botocore's lengths and patterns (jobName, datasetGroupArn, dataLocation, roleArn) → InvalidInputException;
an unknown dataset group → ResourceNotFoundException; a job name used before → ResourceAlreadyExistsException.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ingestor.emulator.config import DeletionConfig
from ingestor.emulator.datasets import Dataset
from ingestor.emulator.errors import ApiError, Outcome, invalid_input, not_found
from ingestor.emulator.imports import (
    ARN_MAX_CHARS,
    DATA_LOCATION_RE,
    JOB_NAME_MAX_CHARS,
    JOB_NAME_RE,
    MAX_LIST_RESULTS,
    PENDING_SHARE,
    ROLE_ARN_RE,
    S3_URI_RE,
    DataLocationError,
    Handler,
    ObjectStore,
    _decode_token,
    _pattern_problem,
)
from ingestor.emulator.schemas import group_arn
from ingestor.schema import DatasetKind

if TYPE_CHECKING:
    from ingestor.emulator.service import EmulatorService

log = logging.getLogger(__name__)

GROUP_ARN_RE = re.compile(r"arn:([a-z\d-]+):personalize:.*:.*:.+")
RUNNING = ("PENDING", "IN_PROGRESS")


@dataclass
class DeletionJob:
    name: str
    arn: str
    group_arn: str
    data_location: str
    role_arn: str
    created: float
    updated: float
    status: str = "PENDING"
    num_deleted: int | None = None
    failure_reason: str | None = None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dataDeletionJobArn": self.arn,
            "datasetGroupArn": self.group_arn,
            "jobName": self.name,
            "status": self.status,
            "creationDateTime": self.created,
            "lastUpdatedDateTime": self.updated,
        }
        if self.failure_reason is not None:
            out["failureReason"] = self.failure_reason
        return out

    def describe(self) -> dict[str, Any]:
        out = {**self.summary(), "dataSource": {"dataLocation": self.data_location}, "roleArn": self.role_arn}
        if self.num_deleted is not None:
            out["numDeleted"] = self.num_deleted
        return out


def parse_user_ids(data: bytes, where: str) -> set[str]:
    """The USER_ID column of a deletion CSV; DataLocationError naming what is wrong."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataLocationError(f"{where} is not UTF-8 (byte {exc.start})") from exc
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if not header or "USER_ID" not in header:
            raise DataLocationError(f"{where}: the header must name the USER_ID column, got {header}")
        at = header.index("USER_ID")
        return {row[at] for row in reader if len(row) > at and row[at]}
    except csv.Error as exc:
        raise DataLocationError(f"{where} line {reader.line_num}: not valid CSV ({exc})") from exc


class DeletionJobs:
    """The data deletion jobs of one emulator; each running job is an asyncio task."""

    def __init__(
        self,
        config: DeletionConfig,
        datasets: dict[str, Dataset],
        store: Callable[[], ObjectStore],
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._datasets = datasets
        self._store = store
        self._now = wall_clock
        self.jobs: dict[str, DeletionJob] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def _groups(self) -> set[str]:
        return {group_arn(arn) for arn in self._datasets}

    def create(self, payload: dict[str, Any]) -> dict[str, Any]:
        name, group, role_arn = payload.get("jobName"), payload.get("datasetGroupArn"), payload.get("roleArn")
        source = payload.get("dataSource")
        location = source.get("dataLocation") if isinstance(source, dict) else None
        found = [
            p
            for p in (
                _pattern_problem(name, "jobName", JOB_NAME_RE, JOB_NAME_MAX_CHARS, min_chars=1),
                _pattern_problem(group, "datasetGroupArn", GROUP_ARN_RE, ARN_MAX_CHARS),
                _pattern_problem(location, "dataSource.dataLocation", DATA_LOCATION_RE, ARN_MAX_CHARS),
                _pattern_problem(role_arn, "roleArn", ROLE_ARN_RE, ARN_MAX_CHARS),
            )
            if p
        ]
        if found:
            plural = "s" if len(found) > 1 else ""
            raise invalid_input(f"{len(found)} validation error{plural} detected: " + "; ".join(found))
        assert isinstance(name, str) and isinstance(group, str) and isinstance(location, str)
        if group not in self._groups():
            raise not_found(f"Could not find the dataset group {group}")
        if any(job.name == name for job in self.jobs.values()):
            raise ApiError(
                400,
                "ResourceAlreadyExistsException",
                f"A data deletion job with the name {name} already exists",
                Outcome.INVALID_INPUT,
            )
        now = self._now()
        arn = f"{group.split(':dataset-group/')[0]}:data-deletion-job/{name}"
        job = DeletionJob(name, arn, group, location, str(role_arn), now, now)
        self.jobs[arn] = job
        task = asyncio.get_running_loop().create_task(self._run(job), name=f"deletion job {name}")
        self._tasks[arn] = task
        task.add_done_callback(lambda _t: self._tasks.pop(arn, None))
        log.info("data deletion job %s created for %s from %s", name, group, location)
        return {"dataDeletionJobArn": arn}

    def describe(self, payload: dict[str, Any]) -> dict[str, Any]:
        arn = payload.get("dataDeletionJobArn")
        problem = _pattern_problem(arn, "dataDeletionJobArn", GROUP_ARN_RE, ARN_MAX_CHARS)
        if problem:
            raise invalid_input(f"1 validation error detected: {problem}")
        job = self.jobs.get(str(arn))
        if job is None:
            raise not_found(f"Could not find the data deletion job {arn}")
        return {"dataDeletionJob": job.describe()}

    def list_jobs(self, payload: dict[str, Any]) -> dict[str, Any]:
        group, token = payload.get("datasetGroupArn"), payload.get("nextToken")
        max_results = payload.get("maxResults", MAX_LIST_RESULTS)
        if isinstance(max_results, bool) or not isinstance(max_results, int) or not 1 <= max_results <= 100:
            raise invalid_input(f"maxResults must be an integer from 1 to {MAX_LIST_RESULTS}, got {max_results!r}")
        jobs = [j for j in reversed(self.jobs.values()) if group is None or j.group_arn == group]
        start = _decode_token(token) if token is not None else 0
        out: dict[str, Any] = {"dataDeletionJobs": [j.summary() for j in jobs[start : start + max_results]]}
        if start + max_results < len(jobs):
            out["nextToken"] = base64.urlsafe_b64encode(str(start + max_results).encode()).decode()
        return out

    async def _run(self, job: DeletionJob) -> None:
        duration = self.config.duration_s
        started = time.monotonic()
        try:
            await asyncio.sleep(duration * PENDING_SHARE)
            self._set(job, "IN_PROGRESS")
            ids = await self._read(job)
            await asyncio.sleep(max(0.0, duration - (time.monotonic() - started)))
            removed = 0
            for dataset in self._datasets.values():
                if dataset.kind is DatasetKind.USERS and group_arn(dataset.arn) == job.group_arn:
                    removed += dataset.delete_users(ids)
                elif dataset.kind is DatasetKind.INTERACTIONS and group_arn(dataset.arn) == job.group_arn:
                    dataset.delete_users(ids)
            job.num_deleted = removed
            self._set(job, "COMPLETED")
            log.info("data deletion job %s COMPLETED: %d of %d users removed", job.name, removed, len(ids))
        except DataLocationError as exc:
            await asyncio.sleep(max(0.0, duration - (time.monotonic() - started)))
            job.failure_reason = str(exc)
            self._set(job, "FAILED")
        except asyncio.CancelledError:
            if job.status in RUNNING:
                job.failure_reason = "the emulator stopped or was reset while the job ran"
                self._set(job, "FAILED")
            raise
        except Exception as exc:  # a bug in the emulator must not leave a job running forever
            log.exception("data deletion job %s", job.name)
            job.failure_reason = f"internal error: {type(exc).__name__}: {exc}"
            self._set(job, "FAILED")

    def _set(self, job: DeletionJob, status: str) -> None:
        job.status = status
        job.updated = self._now()

    async def _read(self, job: DeletionJob) -> set[str]:
        match = S3_URI_RE.fullmatch(job.data_location)
        if match is None:
            raise DataLocationError(f"Invalid data location {job.data_location}: expected s3://BUCKET/KEY")
        store = self._store()
        bucket, key = match["bucket"], match["key"]
        objects = await store.list_objects(bucket, key)
        if key and not key.endswith("/"):
            objects = [o for o in objects if o[0] == key]
        objects = [o for o in objects if not o[0].endswith("/")]
        if not objects:
            raise DataLocationError(f"Input data location {job.data_location} does not exist or holds no file")
        ids: set[str] = set()
        for object_key, _ in objects:
            ids |= parse_user_ids(await store.read(bucket, object_key), f"s3://{bucket}/{object_key}")
        return ids

    def reset(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        self.jobs.clear()

    async def aclose(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def to_json(self) -> list[dict[str, Any]]:
        return [job.describe() for job in self.jobs.values()]


async def _create(service: EmulatorService, payload: dict[str, Any]) -> dict[str, Any]:
    return service.deletions.create(payload)


async def _describe(service: EmulatorService, payload: dict[str, Any]) -> dict[str, Any]:
    return service.deletions.describe(payload)


async def _list(service: EmulatorService, payload: dict[str, Any]) -> dict[str, Any]:
    return service.deletions.list_jobs(payload)


OPERATIONS: dict[str, Handler] = {
    "CreateDataDeletionJob": _create,
    "DescribeDataDeletionJob": _describe,
    "ListDataDeletionJobs": _list,
}
