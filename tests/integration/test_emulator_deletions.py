"""The emulator's control plane through botocore's own client: DescribeDataset / DescribeSchema, and data deletion
jobs reading a CSV of USER_IDs from moto's S3 server and removing the users when the job COMPLETES."""

from __future__ import annotations

import json
from typing import Any

import aioboto3
import pytest
from botocore.exceptions import ClientError

from tests.conftest import wait_until
from tests.integration.test_emulator_imports import CREDS, ROLE, put

pytestmark = pytest.mark.integration

USERS = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/USERS"
GROUP = "arn:aws:personalize:us-east-1:123456789012:dataset-group/shop"


@pytest.fixture
async def emu(start_emulator: Any, s3_server: Any) -> Any:
    return await start_emulator(imports={"s3_endpoint_url": s3_server.url}, deletions={"duration_s": 0.5})


@pytest.fixture
async def clients(emu: Any, s3_server: Any) -> Any:
    session = aioboto3.Session()
    async with (
        session.client("personalize", endpoint_url=emu.url, **CREDS) as personalize,
        session.client("personalize-events", endpoint_url=emu.url, **CREDS) as events,
        session.client("s3", endpoint_url=s3_server.url, **CREDS) as s3,
    ):
        yield personalize, events, s3


async def test_describe_dataset_then_schema_answers_the_datasets_avro(clients) -> None:
    personalize, _, _ = clients
    dataset = (await personalize.describe_dataset(datasetArn=USERS))["dataset"]
    assert dataset["datasetGroupArn"] == GROUP and dataset["datasetType"] == "Users"
    schema = (await personalize.describe_schema(schemaArn=dataset["schemaArn"]))["schema"]
    assert [f["name"] for f in json.loads(schema["schema"])["fields"]] == ["USER_ID", "AGE", "GENDER", "MEMBERSHIP"]
    with pytest.raises(ClientError) as info:
        await personalize.describe_dataset(datasetArn=USERS.replace("shop", "nope"))
    assert info.value.response["Error"]["Code"] == "ResourceNotFoundException"


async def test_a_deletion_job_removes_the_users_when_it_completes(clients, emu, s3_bucket) -> None:
    personalize, events, s3 = clients
    users = [{"userId": f"u{i}", "properties": json.dumps({"membership": "gold"})} for i in range(4)]
    await events.put_users(datasetArn=USERS, users=users)
    location = await put(s3, s3_bucket, "del/a.csv", "USER_ID\r\nu1\r\nu2\r\nnobody\r\n")
    arn = (
        await personalize.create_data_deletion_job(
            jobName="del-1", datasetGroupArn=GROUP, dataSource={"dataLocation": location}, roleArn=ROLE
        )
    )["dataDeletionJobArn"]
    job = (await personalize.describe_data_deletion_job(dataDeletionJobArn=arn))["dataDeletionJob"]
    assert job["status"] in ("PENDING", "IN_PROGRESS")
    assert set(await emu.client.records(USERS)) == {"u0", "u1", "u2", "u3"}  # nothing removed before COMPLETED

    async def completed() -> Any:
        j = (await personalize.describe_data_deletion_job(dataDeletionJobArn=arn))["dataDeletionJob"]
        return j if j["status"] == "COMPLETED" else None

    job = await wait_until(completed, timeout=20, what="the deletion job")
    assert job["numDeleted"] == 2
    assert set(await emu.client.records(USERS)) == {"u0", "u3"}
    listed = (await personalize.list_data_deletion_jobs(datasetGroupArn=GROUP))["dataDeletionJobs"]
    assert [(j["jobName"], j["status"]) for j in listed] == [("del-1", "COMPLETED")]
    with pytest.raises(ClientError) as info:
        await personalize.create_data_deletion_job(
            jobName="del-1", datasetGroupArn=GROUP, dataSource={"dataLocation": location}, roleArn=ROLE
        )
    assert info.value.response["Error"]["Code"] == "ResourceAlreadyExistsException"


async def test_a_deletion_job_without_its_csv_fails_with_a_reason(clients, s3_bucket) -> None:
    personalize, _, _ = clients
    arn = (
        await personalize.create_data_deletion_job(
            jobName="del-missing",
            datasetGroupArn=GROUP,
            dataSource={"dataLocation": f"s3://{s3_bucket}/nothing/here.csv"},
            roleArn=ROLE,
        )
    )["dataDeletionJobArn"]

    async def failed() -> Any:
        j = (await personalize.describe_data_deletion_job(dataDeletionJobArn=arn))["dataDeletionJob"]
        return j if j["status"] == "FAILED" else None

    job = await wait_until(failed, timeout=20, what="the job to fail")
    assert "does not exist" in job["failureReason"]
    with pytest.raises(ClientError) as info:
        await personalize.create_data_deletion_job(
            jobName="x",
            datasetGroupArn=GROUP.replace("shop", "other"),
            dataSource={"dataLocation": "s3://b/k"},
            roleArn=ROLE,
        )
    assert info.value.response["Error"]["Code"] == "ResourceNotFoundException"
