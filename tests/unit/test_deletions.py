"""The deletion path against in-memory fakes: order with recreations, commit once the job exists, revocation,
failed jobs submitted again; and the schema comparison (schema_source)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from ingestor.batcher import DatasetBuffer, Pending
from ingestor.config import Settings
from ingestor.control import DeletionJob, DeletionStatus, JobNameTaken
from ingestor.deletions import DeletionMetrics, DeletionPath
from ingestor.model import SourceRecord, TopicPartition
from ingestor.offsets import OffsetTracker
from ingestor.pipeline import Dataset
from ingestor.ratelimit import RateLimiter
from ingestor.schema import DatasetKind, DatasetSchema
from ingestor.schema_source import schema_differences
from ingestor.sender import Target
from tests.conftest import wait_until

CONFIG = Path(__file__).resolve().parents[2] / "config"
ARN = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/USERS"
GROUP = "arn:aws:personalize:us-east-1:123456789012:dataset-group/shop"


class FakeJobs:
    def __init__(self) -> None:
        self.jobs: dict[str, DeletionJob] = {}
        self.locations: dict[str, str] = {}
        self.fail_next = 0

    async def create_deletion_job(self, name: str, dataset_group_arn: str, location: str, role_arn: str) -> str:
        assert dataset_group_arn == GROUP
        if any(j.name == name for j in self.jobs.values()):
            raise JobNameTaken(name)
        arn = f"arn:job/{name}"
        self.jobs[arn] = DeletionJob(arn, name, DeletionStatus.PENDING)
        self.locations[arn] = location
        return arn

    async def describe_deletion_job(self, arn: str) -> DeletionJob:
        return self.jobs[arn]

    async def list_deletion_jobs(self, dataset_group_arn: str) -> list[DeletionJob]:
        return list(self.jobs.values())

    def finish(self, arn: str, status: DeletionStatus = DeletionStatus.COMPLETED) -> None:
        job = self.jobs[arn]
        self.jobs[arn] = DeletionJob(job.arn, job.name, status, failure_reason="bad" if status == "FAILED" else None)

    def running(self) -> list[str]:
        return [a for a, j in self.jobs.items() if not j.status.finished]


class FakeS3:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self._parts: dict[str, list[bytes]] = {}

    async def create_multipart_upload(self, Bucket: str, Key: str, **_: Any) -> dict[str, str]:
        self._parts[Key] = []
        return {"UploadId": Key}

    async def upload_part(self, Bucket: str, Key: str, UploadId: str, PartNumber: int, Body: bytes) -> dict[str, str]:
        self._parts[Key].append(Body)
        return {"ETag": str(PartNumber)}

    async def complete_multipart_upload(self, Bucket: str, Key: str, **_: Any) -> dict[str, str]:
        self.objects[Key] = b"".join(self._parts.pop(Key))
        return {}

    async def abort_multipart_upload(self, **_: Any) -> dict[str, str]:
        return {}


def settings(**deletions: Any) -> Settings:
    return Settings(
        routes=[
            {
                "topic": "users",
                "kind": "users",
                "dataset_arn": ARN,
                "schema": str(CONFIG / "schemas/users.avsc"),
                "on_delete": "delete",
            }
        ],
        bulk={"s3_uri": "s3://bucket/staging/", "role_arn": "arn:aws:iam::123456789012:role/R"},
        deletions={"max_wait_s": 0.01, "poll_interval_s": 0.01, **deletions},
    )


class Harness:
    def __init__(self, **deletions: Any) -> None:
        self.tracker = OffsetTracker()
        self.ds = Dataset(Target("PutUsers", ARN), DatasetBuffer(10, 0.0), RateLimiter(10.0))
        self.jobs = FakeJobs()
        self.s3 = FakeS3()
        self.path = DeletionPath(
            settings(**deletions), self.ds, self.tracker, self.jobs, self.s3, DeletionMetrics(CollectorRegistry())
        )
        self.ds.deletions = self.path
        self.offset: dict[int, int] = {}

    def record(self, uid: str, partition: int = 0) -> tuple[SourceRecord, int]:
        offset = self.offset.get(partition, 0)
        self.offset[partition] = offset + 1
        rec = SourceRecord("users", partition, offset, uid.encode(), b"{}")
        return rec, self.tracker.track(rec.tp, offset)

    def update(self, uid: str, partition: int = 0) -> Pending:
        rec, epoch = self.record(uid, partition)
        pending = Pending(rec, uid, {"userId": uid}, epoch=epoch)
        if not self.path.hold(pending):
            self.ds.buffer.add(pending, 0.0)
        return pending

    def delete(self, uid: str, partition: int = 0) -> None:
        rec, epoch = self.record(uid, partition)
        self.path.delete(rec, uid, epoch)

    def send_all(self) -> None:
        """Every buffered update is accepted (a perfect API)."""
        while batch := self.ds.buffer.take():
            for p in batch:
                for d in self.ds.buffer.accepted(p, 0.0):
                    self.tracker.done(d.source.tp, d.source.offset, d.epoch)

    def committable(self, partition: int = 0) -> int | None:
        return self.tracker.position(TopicPartition("users", partition))


async def test_an_update_after_a_delete_waits_for_the_job_and_older_updates_go_first() -> None:
    h = Harness()
    h.path.start()
    try:
        h.update("u1")  # 0: older than the delete: sent before the job is created
        h.delete("u1")  # 1
        held = h.update("u1")  # 2: recreated: held until the job completes
        assert h.ds.buffer.versions_of("u1") != [held]
        await asyncio.sleep(0.05)
        assert h.jobs.jobs == {}, "no job while an older update of the id is still buffered"
        h.send_all()
        await wait_until(lambda: h.jobs.jobs, timeout=5, what="the job")
        [arn] = h.jobs.jobs
        assert h.s3.objects[h.jobs.locations[arn].removeprefix("s3://bucket/")] == b"USER_ID\r\nu1\r\n"
        await wait_until(lambda: h.committable() == 2, timeout=5, what="the delete done once the job exists")
        assert h.ds.buffer.versions_of("u1") == []  # still held while the job runs
        assert h.path.held == 1 and h.path.waiting
        h.jobs.finish(arn)
        await wait_until(lambda: h.ds.buffer.versions_of("u1") == [held], timeout=5, what="the update released")
        h.send_all()
        assert h.committable() == 3
    finally:
        await h.path.aclose()


async def test_an_update_then_a_delete_while_held_is_superseded_by_the_second_job() -> None:
    h = Harness()
    h.path.start()
    try:
        h.delete("u1")  # 0
        await wait_until(lambda: h.jobs.running(), timeout=5, what="the first job")
        h.update("u1")  # 1: held
        h.delete("u1")  # 2: supersedes 1
        await wait_until(lambda: len(h.jobs.jobs) == 2, timeout=5, what="the second job")
        await wait_until(lambda: h.committable() == 3, timeout=5, what="0, 1 and 2 done")
        for arn in list(h.jobs.jobs):
            h.jobs.finish(arn)
        await wait_until(lambda: not h.path.held and not h.path._batches, timeout=5)
        assert h.ds.buffer.versions_of("u1") == []  # the newest event is a delete: nothing is sent
    finally:
        await h.path.aclose()


async def test_a_failed_job_is_submitted_again_and_a_rerun_finds_its_job_by_name() -> None:
    h = Harness(max_attempts=2)
    h.path.start()
    try:
        h.delete("u1")
        await wait_until(lambda: h.jobs.running(), timeout=5, what="the job")
        [first] = h.jobs.running()
        h.jobs.finish(first, DeletionStatus.FAILED)
        await wait_until(lambda: h.jobs.running() and h.jobs.running() != [first], timeout=5, what="attempt 2")
        [second] = h.jobs.running()
        assert h.jobs.jobs[second].name == h.jobs.jobs[first].name + "-2"
        assert await h.path._create(h.jobs.jobs[first].name, "s3://bucket/x.csv") == first  # JobNameTaken → it
    finally:
        await h.path.aclose()


async def test_revocation_before_the_job_is_created_requeues_the_deletes_of_partitions_still_owned() -> None:
    h = Harness()
    h.update("u1", partition=0)  # keeps the batch waiting: an older update of u1 is buffered
    h.delete("u1", partition=0)
    h.delete("u2", partition=1)
    h.path.start()
    try:
        await wait_until(lambda: h.path._batches, timeout=5, what="a batch")
        await h.path.on_revoked({TopicPartition("users", 0)})
        h.tracker.drop({TopicPartition("users", 0)})
        h.ds.buffer.drop_partitions({TopicPartition("users", 0)})
        await wait_until(lambda: h.jobs.jobs, timeout=5, what="a job for what is still owned")
        [arn] = h.jobs.jobs
        assert h.s3.objects[h.jobs.locations[arn].removeprefix("s3://bucket/")] == b"USER_ID\r\nu2\r\n"
        await wait_until(lambda: h.committable(1) == 1, timeout=5, what="partition 1's delete done")
    finally:
        await h.path.aclose()


async def test_a_deletion_job_of_another_member_holds_the_dataset_until_it_completes() -> None:
    h = Harness()
    await h.jobs.create_deletion_job("someone-else", GROUP, "s3://bucket/x.csv", "arn:aws:iam::1:role/R")
    h.path.on_assigned({TopicPartition("users", 0)})
    await asyncio.sleep(0.05)
    assert not h.ds.deletions_open.is_set() and h.path.waiting
    h.jobs.finish("arn:job/someone-else")
    await wait_until(h.ds.deletions_open.is_set, timeout=5, what="the dataset released")
    await h.path.aclose()


def test_schema_differences_name_each_field_and_what_differs() -> None:
    live = DatasetSchema.load(CONFIG / "schemas/items.avsc", DatasetKind.ITEMS)
    avro = json.loads((CONFIG / "schemas/items.avsc").read_text())
    avro["fields"] = [f for f in avro["fields"] if f["name"] != "GENRES"]
    avro["fields"].append({"name": "COLOR", "type": "string"})
    for f in avro["fields"]:
        if f["name"] == "PRICE":
            f["type"] = ["null", "double"]
    file = DatasetSchema.from_avro(avro, DatasetKind.ITEMS)
    assert schema_differences(file, live) == [
        'field PRICE is ["null", "double"] in the file but "float" in the dataset',
        'field COLOR ("string") is in the file but not in the dataset',
        'field GENRES (["null", "string"], categorical) is in the dataset but not in the file',
    ]
    assert schema_differences(live, live) == []


def test_on_delete_is_for_users_routes_and_needs_the_staging_bucket() -> None:
    from ingestor.errors import ConfigError

    route = {"topic": "t", "kind": "items", "dataset_arn": ARN.replace("USERS", "ITEMS"), "on_delete": "delete"}
    with pytest.raises(ConfigError, match="on_delete: delete works for users routes only"):
        Settings.load(None, routes=[{**route, "schema": str(CONFIG / "schemas/items.avsc")}])
    users = {"topic": "t", "kind": "users", "dataset_arn": ARN, "on_delete": "delete"}
    with pytest.raises(ConfigError, match=r"bulk\.s3_uri"):
        Settings.load(None, routes=[users])
