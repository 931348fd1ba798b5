"""The emulator's control plane: dataset import jobs read from moto's S3 server, through botocore's own client."""

from __future__ import annotations

import asyncio
from typing import Any

import aioboto3
import pytest

from tests.conftest import wait_until

pytestmark = pytest.mark.integration

ITEMS = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/ITEMS"
USERS = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/USERS"
ROLE = "arn:aws:iam::123456789012:role/PersonalizeS3"
HEADER = "ITEM_ID,PRICE,GENRES,NUMBER_OF_RATINGS,CREATION_TIMESTAMP\n"
CREDS = {"aws_access_key_id": "t", "aws_secret_access_key": "t", "region_name": "us-east-1"}


@pytest.fixture
async def imports_emulator(start_emulator: Any, s3_server: Any) -> Any:
    return await start_emulator(imports={"s3_endpoint_url": s3_server.url, "duration_s": 0.3})


@pytest.fixture
async def clients(imports_emulator: Any, s3_server: Any) -> Any:
    session = aioboto3.Session()
    async with (
        session.client("personalize", endpoint_url=imports_emulator.url, **CREDS) as personalize,
        session.client("personalize-events", endpoint_url=imports_emulator.url, **CREDS) as events,
        session.client("s3", endpoint_url=s3_server.url, **CREDS) as s3,
    ):
        yield personalize, events, s3


async def put(s3: Any, bucket: str, key: str, body: str) -> str:
    await s3.put_object(Bucket=bucket, Key=key, Body=body.encode())
    return f"s3://{bucket}/{key}"


async def create(personalize: Any, name: str, location: str, mode: str = "FULL", dataset: str = ITEMS) -> str:
    response = await personalize.create_dataset_import_job(
        jobName=name, datasetArn=dataset, dataSource={"dataLocation": location}, roleArn=ROLE, importMode=mode
    )
    return str(response["datasetImportJobArn"])


async def finished(personalize: Any, arn: str) -> dict[str, Any]:
    async def done() -> Any:
        job = (await personalize.describe_dataset_import_job(datasetImportJobArn=arn))["datasetImportJob"]
        return job if job["status"] in ("ACTIVE", "CREATE FAILED") else None

    result: dict[str, Any] = await wait_until(done, timeout=20, what=f"import job {arn} to finish")
    return result


async def test_full_then_incremental_rows_become_latest_records(clients, imports_emulator, s3_bucket) -> None:
    personalize, events, s3 = clients
    await events.put_items(
        datasetArn=ITEMS,
        items=[
            {"itemId": "i1", "properties": '{"price": 1.0, "creationTimestamp": 1}'},
            {"itemId": "streamed", "properties": '{"price": 2.0, "creationTimestamp": 2}'},
        ],
    )
    rows = HEADER + 'i1,9.5,"comedy|drama",3,100\ni2,4,,,200\n"i,3",1.25,"say ""hi""",,300\n'
    arn = await create(personalize, "first", await put(s3, s3_bucket, "a/items.csv", rows))
    first = (await personalize.describe_dataset_import_job(datasetImportJobArn=arn))["datasetImportJob"]
    assert first["status"] in ("CREATE PENDING", "CREATE IN_PROGRESS")
    assert await imports_emulator.client.records(ITEMS) == {
        "i1": {"price": 1.0, "creationTimestamp": 1},
        "streamed": {"price": 2.0, "creationTimestamp": 2},
    }  # nothing lands before ACTIVE
    job = await finished(personalize, arn)
    assert job["status"] == "ACTIVE" and job["importMode"] == "FULL" and job["jobName"] == "first"
    assert job["dataSource"] == {"dataLocation": f"s3://{s3_bucket}/a/items.csv"}
    assert await imports_emulator.client.records(ITEMS) == {
        "i1": {"price": 9.5, "genres": "comedy|drama", "numberOfRatings": 3, "creationTimestamp": 100},
        "i2": {"price": 4.0, "creationTimestamp": 200},
        "i,3": {"price": 1.25, "genres": 'say "hi"', "creationTimestamp": 300},
        "streamed": {"price": 2.0, "creationTimestamp": 2},  # written individually: FULL keeps it
    }

    # A folder: every file in it. INCREMENTAL adds and replaces by id, keeps the rest.
    await put(s3, s3_bucket, "b/part-1.csv", HEADER + "i2,5,,,201\n")
    await put(s3, s3_bucket, "b/part-2.csv", HEADER + "i4,6,,,400\n")
    job = await finished(personalize, await create(personalize, "second", f"s3://{s3_bucket}/b/", "INCREMENTAL"))
    assert job["status"] == "ACTIVE", job.get("failureReason")
    records = await imports_emulator.client.records(ITEMS)
    assert records["i2"] == {"price": 5.0, "creationTimestamp": 201}
    assert records["i4"] == {"price": 6.0, "creationTimestamp": 400}
    assert set(records) == {"i1", "i2", "i,3", "i4", "streamed"}

    # FULL replaces the earlier bulk records, not the individually written one.
    job = await finished(
        personalize, await create(personalize, "third", await put(s3, s3_bucket, "c.csv", HEADER + "i9,1,,,9\n"))
    )
    assert job["status"] == "ACTIVE"
    assert set(await imports_emulator.client.records(ITEMS)) == {"i9", "streamed"}

    listed = (await personalize.list_dataset_import_jobs(datasetArn=ITEMS))["datasetImportJobs"]
    assert [j["jobName"] for j in listed] == ["third", "second", "first"]
    page = await personalize.list_dataset_import_jobs(datasetArn=ITEMS, maxResults=2)
    assert len(page["datasetImportJobs"]) == 2 and "nextToken" in page
    rest = await personalize.list_dataset_import_jobs(datasetArn=ITEMS, maxResults=2, nextToken=page["nextToken"])
    assert [j["jobName"] for j in rest["datasetImportJobs"]] == ["first"] and "nextToken" not in rest


async def test_bad_row_fails_the_job_naming_the_row_and_stores_nothing(clients, imports_emulator, s3_bucket) -> None:
    personalize, _, s3 = clients
    rows = HEADER + "i1,9.5,,,100\ni2,not-a-price,,,200\n"
    job = await finished(personalize, await create(personalize, "bad", await put(s3, s3_bucket, "bad.csv", rows)))
    assert job["status"] == "CREATE FAILED"
    assert "row 2 (line 3" in job["failureReason"] and "'i2'" in job["failureReason"]
    assert "price" in job["failureReason"]
    assert await imports_emulator.client.records(ITEMS) == {}
    # A failed import is not a bulk import: INCREMENTAL is still refused.
    with pytest.raises(personalize.exceptions.InvalidInputException, match="FULL"):
        await create(personalize, "incr", await put(s3, s3_bucket, "ok.csv", HEADER + "i1,1,,,1\n"), "INCREMENTAL")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("ITEM_ID,PRICE,NOPE,CREATION_TIMESTAMP\n", "NOPE"),
        ("ITEM_ID,GENRES\ni1,a\n", "required field(s) ['PRICE', 'CREATION_TIMESTAMP']"),
        (HEADER + "i1,1,,\n", "4 values for 5 columns"),
        ("", "empty"),
    ],
)
async def test_bad_files_fail_with_a_reason(clients, s3_bucket, unique, body, reason) -> None:
    personalize, _, s3 = clients
    job = await finished(personalize, await create(personalize, unique("j"), await put(s3, s3_bucket, "x.csv", body)))
    assert job["status"] == "CREATE FAILED" and reason in job["failureReason"]


async def test_missing_data_fails_the_job(clients, s3_bucket) -> None:
    personalize, _, _ = clients
    job = await finished(personalize, await create(personalize, "nothing", f"s3://{s3_bucket}/missing.csv"))
    assert job["status"] == "CREATE FAILED" and "does not exist" in job["failureReason"]
    job = await finished(personalize, await create(personalize, "nobucket", "s3://no-such-bucket-x/a.csv"))
    assert job["status"] == "CREATE FAILED" and "no-such-bucket-x" in job["failureReason"]


async def test_service_rules(clients, imports_emulator, s3_bucket) -> None:
    personalize, _, s3 = clients
    await imports_emulator.client.configure(imports={"duration_s": 2.0})
    location = await put(s3, s3_bucket, "ok.csv", HEADER + "i1,1,,,1\n")
    await create(personalize, "one", location)
    with pytest.raises(personalize.exceptions.ResourceAlreadyExistsException):
        await create(personalize, "one", location, dataset=USERS)
    with pytest.raises(personalize.exceptions.ResourceInUseException, match="in use by"):
        await create(personalize, "two", location)
    with pytest.raises(personalize.exceptions.InvalidInputException, match="INCREMENTAL"):
        await create(personalize, "inc", location, "INCREMENTAL", dataset=USERS)
    users = await put(s3, s3_bucket, "u.csv", "USER_ID,MEMBERSHIP\nu1,gold\n")
    await imports_emulator.client.configure(imports={"max_running_jobs": 1})
    with pytest.raises(personalize.exceptions.LimitExceededException, match="More than 1"):
        await create(personalize, "users", users, dataset=USERS)
    with pytest.raises(personalize.exceptions.ResourceNotFoundException):
        await create(personalize, "four", location, dataset="arn:aws:personalize:us-east-1:123456789012:dataset/x/Y")
    with pytest.raises(personalize.exceptions.InvalidInputException, match="jobName"):
        await create(personalize, "-bad name", location)
    with pytest.raises(personalize.exceptions.InvalidInputException, match="roleArn"):
        await personalize.create_dataset_import_job(
            jobName="r", datasetArn=ITEMS, dataSource={"dataLocation": location}, roleArn="arn:aws:iam::1:role/x"
        )
    with pytest.raises(personalize.exceptions.ResourceNotFoundException):
        await personalize.describe_dataset_import_job(
            datasetImportJobArn="arn:aws:personalize:us-east-1:123456789012:dataset-import-job/nope"
        )


async def test_incremental_size_limit(clients, imports_emulator, s3_bucket) -> None:
    personalize, _, s3 = clients
    location = await put(s3, s3_bucket, "ok.csv", HEADER + "i1,1,,,1\n")
    assert (await finished(personalize, await create(personalize, "full", location)))["status"] == "ACTIVE"
    await imports_emulator.client.configure(imports={"max_incremental_bytes": 10})
    job = await finished(personalize, await create(personalize, "inc", location, "INCREMENTAL"))
    assert job["status"] == "CREATE FAILED" and "INCREMENTAL" in job["failureReason"]


async def test_reset_forgets_jobs(clients, imports_emulator, s3_bucket) -> None:
    personalize, _, s3 = clients
    await imports_emulator.client.configure(imports={"duration_s": 30})
    await create(personalize, "long", await put(s3, s3_bucket, "ok.csv", HEADER + "i1,1,,,1\n"))
    await imports_emulator.client.reset()
    assert (await personalize.list_dataset_import_jobs())["datasetImportJobs"] == []
    await asyncio.sleep(0)  # the cancelled job never lands
    assert await imports_emulator.client.records(ITEMS) == {}
