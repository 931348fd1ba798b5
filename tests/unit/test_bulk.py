"""The bulk path's pure parts: the per-id store, the CSV, job names and the control-plane error mapping."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from ingestor.bulk.importer import job_attempt_name, job_base_name, jobs_of, offsets_from_json, offsets_to_json
from ingestor.bulk.staging import CsvRenderer, StagingProgress, render_chunks
from ingestor.bulk.store import LatestStore
from ingestor.config import BulkSettings
from ingestor.control import ControlPlane, ImportBusy, ImportJob, ImportMode, JobNameTaken, JobStatus
from ingestor.emulator.config import DatasetConfig
from ingestor.emulator.datasets import Dataset
from ingestor.emulator.imports import JOB_NAME_RE, parse_csv
from ingestor.errors import ConfigError, FatalRouteError
from ingestor.model import TopicPartition
from ingestor.schema import DatasetKind, DatasetSchema

CONFIG = Path(__file__).parents[2] / "config"
ITEMS_ARN = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/ITEMS"


def items_schema() -> DatasetSchema:
    return DatasetSchema.load(CONFIG / "schemas/items.avsc", DatasetKind.ITEMS)


def test_store_keeps_the_newest_record_per_id(tmp_path: Path) -> None:
    with LatestStore(tmp_path) as store:
        store.put_many([("b", '{"price": 1}'), ("a", None), ("b", '{"price": 2}')])
        store.put_many([("a", '{"price": 3}')])
        assert len(store) == 2 and store.puts == 4
        assert list(store.rows()) == [("a", '{"price": 3}'), ("b", '{"price": 2}')]
        path = store.path
        assert path.exists()
    assert not path.exists()  # scratch space: removed on close


def test_csv_is_rfc4180_with_schema_header_and_reads_back_as_the_same_properties(tmp_path: Path) -> None:
    schema = items_schema()
    renderer = CsvRenderer(schema)
    props = [
        ("i,1", {"price": 9.5, "genres": "comedy|drama", "numberOfRatings": 3, "creationTimestamp": 1}),
        ("i2", {"price": 1.0, "inStock": False, "description": 'say "hi"\nbye ü', "creationTimestamp": 2}),
        ("i3", {"price": 2.5, "inStock": True, "creationTimestamp": 3}),
    ]
    import orjson

    rows = iter([(rid, orjson.dumps(p).decode()) for rid, p in props])
    progress = StagingProgress()
    data = b"".join(render_chunks(renderer, rows, 1024, progress))
    assert progress.rows == 3 and progress.bytes == len(data)
    text = data.decode("utf-8")
    assert text.startswith("ITEM_ID,PRICE,GENRES,NUMBER_OF_RATINGS,IN_STOCK,DESCRIPTION,CREATION_TIMESTAMP\r\n")
    assert '"i,1",9.5,comedy|drama,3,,,1\r\n' in text and '"say ""hi""\nbye ü"' in text
    assert len(list(csv.reader(io.StringIO(text, newline="")))) == 4
    dataset = Dataset(DatasetConfig(arn=ITEMS_ARN, kind=DatasetKind.ITEMS, schema=CONFIG / "schemas/items.avsc"))
    assert parse_csv(data, dataset, "x.csv") == props  # what the import job makes of it


def test_chunks_split_at_part_size() -> None:
    renderer = CsvRenderer(items_schema())
    rows = iter([(f"i{n}", '{"price": 1.5, "creationTimestamp": 7}') for n in range(20_000)])
    chunks = list(render_chunks(renderer, rows, 64 * 1024, StagingProgress()))
    assert len(chunks) > 3 and all(len(c) >= 64 * 1024 for c in chunks[:-1])
    assert b"".join(chunks).count(b"\r\n") == 20_001


def test_job_names_are_deterministic_valid_and_depend_on_the_start() -> None:
    start = {TopicPartition("t", 1): 5, TopicPartition("t", 0): 7}
    name = job_base_name(ITEMS_ARN, start)
    assert name == job_base_name(ITEMS_ARN, dict(reversed(list(start.items()))))
    assert name != job_base_name(ITEMS_ARN, {**start, TopicPartition("t", 0): 8})
    assert name != job_base_name(ITEMS_ARN.replace("ITEMS", "USERS"), start)
    long_arn = "arn:aws:personalize:us-east-1:123456789012:dataset/" + "g" * 60 + "/ITEMS"
    for n in (name, job_attempt_name(name, 12), job_attempt_name(job_base_name(long_arn, start), 99)):
        assert JOB_NAME_RE.fullmatch(n) and len(n) <= 63
    jobs = [ImportJob(f"arn/{n}", n, JobStatus.FAILED, ImportMode.FULL) for n in (name, f"{name}-2", f"{name}x")]
    assert [j.name for j in jobs_of(name, jobs)] == [name, f"{name}-2"]
    assert offsets_from_json(offsets_to_json(start)) == start


def test_bulk_settings_name_the_key() -> None:
    with pytest.raises(ValueError, match="IAM role ARN"):
        BulkSettings(role_arn="not-an-arn")
    with pytest.raises(ValueError, match="s3://BUCKET"):
        BulkSettings(s3_uri="bucket/prefix")
    with pytest.raises(ConfigError, match=r"bulk.s3_uri \(INGESTOR_BULK__S3_URI\)"):
        BulkSettings(role_arn="arn:aws:iam::123456789012:role/x").require()


class _Client:
    def __init__(self, code: str) -> None:
        self.code = code

    async def create_dataset_import_job(self, **kwargs: Any) -> dict[str, Any]:
        raise botocore.exceptions.ClientError({"Error": {"Code": self.code, "Message": "m"}}, "CreateDatasetImportJob")


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("ResourceAlreadyExistsException", JobNameTaken),
        ("ResourceInUseException", ImportBusy),
        ("LimitExceededException", ImportBusy),
        ("ResourceNotFoundException", FatalRouteError),
        ("AccessDeniedException", FatalRouteError),
    ],
)
async def test_control_plane_maps_errors(code: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        await ControlPlane(_Client(code)).create_import_job("n", ITEMS_ARN, "s3://b/k", "r", ImportMode.FULL)


def test_bulk_keys_from_the_environment_and_catch_up_needs_staging(monkeypatch: pytest.MonkeyPatch) -> None:
    from ingestor.config import Settings

    route = {
        "topic": "t",
        "kind": "items",
        "dataset_arn": ITEMS_ARN,
        "schema": str(CONFIG / "schemas/items.avsc"),
    }
    monkeypatch.setenv("INGESTOR_BULK__S3_URI", "s3://my-bucket/prefix/")
    monkeypatch.setenv("INGESTOR_BULK__ROLE_ARN", "arn:aws:iam::123456789012:role/P")
    monkeypatch.setenv("INGESTOR_BULK__CATCH_UP_AFTER_S", "900")
    settings = Settings.load(None, routes=[route])
    assert settings.bulk.require() == ("s3://my-bucket/prefix/", "arn:aws:iam::123456789012:role/P")
    assert settings.bulk.catch_up_after_s == 900
    monkeypatch.delenv("INGESTOR_BULK__ROLE_ARN")
    with pytest.raises(ConfigError, match=r"bulk: catch_up_after_s > 0 needs role_arn.*INGESTOR_BULK"):
        Settings.load(None, routes=[route])


def test_the_backlog_estimate_discounts_ids_superseded_in_the_buffer() -> None:
    from ingestor.batcher import DatasetBuffer, Pending
    from ingestor.bulk.catchup import MIN_SAMPLE, Backlog, superseded_discount
    from ingestor.model import SourceRecord

    buffer = DatasetBuffer()
    assert superseded_discount(buffer) == 1.0  # nothing to judge from
    for offset in range(MIN_SAMPLE * 2):  # every id updated four times
        rec = SourceRecord("t", 0, offset, None, b"{}")
        buffer.add(Pending(rec, f"i{offset % (MIN_SAMPLE // 2)}", {"itemId": "x"}), 0.0)
    assert buffer.distinct_ids == MIN_SAMPLE // 2
    share = superseded_discount(buffer)
    assert share == pytest.approx(0.25)
    assert Backlog(4000, 100.0, share).seconds == pytest.approx(10.0)  # 1,000 calls' worth of records, not 4,000
    assert Backlog(4000, 100.0).seconds == pytest.approx(40.0)


class _RacingJobs:
    """Another replica's job of the dataset is IN_PROGRESS at the first listing and ACTIVE right after it: what a
    create decided on that first listing would meet (no ResourceInUse any more)."""

    def __init__(self) -> None:
        self.listings = 0
        self.created: list[tuple[str, ImportMode, int]] = []

    async def list_import_jobs(self, dataset_arn: str) -> list[ImportJob]:
        self.listings += 1
        status = JobStatus.IN_PROGRESS if self.listings == 1 else JobStatus.ACTIVE
        return [ImportJob("arn:job/other", "other", status, ImportMode.FULL)]

    async def create_import_job(self, name: str, arn: str, location: str, role: str, mode: ImportMode) -> str:
        self.created.append((name, mode, self.listings))
        return "arn:job/mine"


async def test_auto_mode_waits_for_a_running_job_before_choosing_full() -> None:
    """A FULL import decided while another job of the dataset ran would replace that job's rows if it turned ACTIVE
    before the creation: the importer waits for it to finish, then chooses (INCREMENTAL after an ACTIVE one)."""
    from ingestor.bulk.importer import Importer, Progress
    from ingestor.config import Settings

    route = {"topic": "t", "kind": "items", "dataset_arn": ITEMS_ARN, "schema": str(CONFIG / "schemas/items.avsc")}
    bulk = {"s3_uri": "s3://bucket/p/", "role_arn": "arn:aws:iam::123456789012:role/P", "poll_interval_s": 0.1}
    settings = Settings.load(None, routes=[route], bulk=bulk)
    jobs, slept = _RacingJobs(), []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    importer = Importer(settings, None, jobs, None, None, progress=Progress(io.StringIO(), tty=False), sleep=sleep)
    job = await importer._create(ITEMS_ARN, "mine", "s3://bucket/p/mine/items.csv", "auto")
    assert jobs.created == [("mine", ImportMode.INCREMENTAL, 2)]  # decided on the listing after the other finished
    assert job.mode is ImportMode.INCREMENTAL and slept == [0.1]
