"""``ingestor import`` end to end: the real broker, the local endpoint's import jobs and moto's S3 server."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition

from ingestor.bulk.importer import Progress, run_import
from ingestor.config import Settings
from ingestor.control import ImportMode
from ingestor.deadletter import H_STAGE
from ingestor.kafka_tools import create_topics, produce, read_topic
from ingestor.sample import ITEMS_TOPIC, USERS_TOPIC, Expectation, StreamSpec, generate
from tests.conftest import run_cli, wait_until

pytestmark = pytest.mark.integration

CONFIG = Path(__file__).parents[2] / "config"
ITEMS_ARN = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/ITEMS"
USERS_ARN = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/USERS"
ROLE = "arn:aws:iam::123456789012:role/PersonalizeS3"


def config_dict(bootstrap: str, endpoint: str, s3_url: str, bucket: str, suffix: str) -> dict[str, Any]:
    return {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": f"ingestor-{suffix}",
            "dead_letter_topic": f"dlq-{suffix}",
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 500,
        },
        "personalize": {
            "endpoint_url": endpoint,
            "control_endpoint_url": endpoint,
            "aws_access_key_id": "test",
            "aws_secret_access_key": "test",
        },
        "routes": [
            {
                "topic": f"{ITEMS_TOPIC}-{suffix}",
                "kind": "items",
                "dataset_arn": ITEMS_ARN,
                "schema": str(CONFIG / "schemas/items.avsc"),
            },
            {
                "topic": f"{USERS_TOPIC}-{suffix}",
                "kind": "users",
                "dataset_arn": USERS_ARN,
                "schema": str(CONFIG / "schemas/users.avsc"),
            },
        ],
        "bulk": {
            "s3_uri": f"s3://{bucket}/staging/",
            "s3_endpoint_url": s3_url,
            "role_arn": ROLE,
            "poll_interval_s": 0.1,
        },
        "metrics": {"port": 0},
    }


class Scenario:
    def __init__(self, broker: Any, emulator: Any, s3_server: Any, bucket: str, suffix: str) -> None:
        self.broker, self.emulator, self.suffix = broker, emulator, suffix
        self.config = config_dict(broker.bootstrap_servers, emulator.url, s3_server.url, bucket, suffix)
        self.settings = Settings(**self.config)
        self.items, self.users, self.dlq = f"{ITEMS_TOPIC}-{suffix}", f"{USERS_TOPIC}-{suffix}", f"dlq-{suffix}"
        self.expect = Expectation()
        self.ends: dict[TopicPartition, int] = {}

    async def produce(self, count: int, seed: int) -> None:
        events = list(generate(count, StreamSpec(items=150, users=60, bad_share=0.03, seed=seed)))
        for e in events:
            self.expect.add(e)
        rename = {ITEMS_TOPIC: self.items, USERS_TOPIC: self.users}
        last = await produce(self.broker.bootstrap_servers, [(rename[e.topic], e.key, e.value) for e in events])
        for tp, offset in last.items():
            self.ends[tp] = max(self.ends.get(tp, 0), offset + 1)

    async def committed(self) -> dict[TopicPartition, int | None]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.broker.bootstrap_servers, group_id=self.settings.kafka.group_id
        )
        await consumer.start()
        try:
            return {tp: await consumer.committed(tp) for tp in self.ends}
        finally:
            await consumer.stop()

    async def assert_exact(self) -> None:
        for topic, arn in ((ITEMS_TOPIC, ITEMS_ARN), (USERS_TOPIC, USERS_ARN)):
            assert self.expect.mismatches(topic, await self.emulator.client.records(arn)) == []
        dlq = await read_topic(self.broker.bootstrap_servers, self.dlq, idle_s=1.0)
        assert sorted(r.value or b"" for r in dlq) == sorted(e.value or b"" for e in self.expect.invalid)
        assert {dict(r.headers)[H_STAGE] for r in dlq} <= {b"decode", b"validate"}
        assert await self.committed() == self.ends

    def jobs(self) -> list[Any]:
        return list(self.emulator.service.imports.jobs.values())


@pytest.fixture
async def scenario(broker, start_emulator, s3_server, s3_bucket, unique) -> Scenario:
    emulator = await start_emulator(imports={"s3_endpoint_url": s3_server.url, "duration_s": 0.5})
    s = Scenario(broker, emulator, s3_server, s3_bucket, unique("imp"))
    await create_topics(broker.bootstrap_servers, {s.items: 3, s.users: 2, s.dlq: 1})
    return s


async def test_full_then_incremental_import_ends_exact(scenario: Scenario) -> None:
    s = scenario
    await s.produce(2000, seed=3)
    results = await run_import(s.settings, list(s.settings.routes), progress=Progress(every_s=0))
    assert [(r.dataset_arn, r.outcome, r.mode) for r in results] == [
        (ITEMS_ARN, "imported", ImportMode.FULL),
        (USERS_ARN, "imported", ImportMode.FULL),
    ]
    assert sum(r.dead_lettered for r in results) == len(s.expect.invalid) > 0
    assert all(job.status == "ACTIVE" for job in s.jobs())
    await s.assert_exact()
    assert not any(
        rec["bulk"] is False for rec in (await s.emulator.client.state())["datasets"][ITEMS_ARN]["records"].values()
    )

    await s.produce(800, seed=4)  # newer records of the same ids, and new ids
    results = await run_import(s.settings, list(s.settings.routes))
    assert [(r.outcome, r.mode) for r in results] == [("imported", ImportMode.INCREMENTAL)] * 2
    assert len(s.jobs()) == 4
    await s.assert_exact()

    results = await run_import(s.settings, list(s.settings.routes))  # nothing new
    assert [r.outcome for r in results] == ["nothing-to-import"] * 2 and len(s.jobs()) == 4


async def test_failed_job_shows_the_reason_and_commits_nothing(scenario: Scenario) -> None:
    s = scenario
    await s.produce(300, seed=5)
    await s.emulator.client.configure(imports={"max_full_bytes": 100})
    results = await run_import(s.settings, [s.settings.routes[0]])
    (result,) = results
    assert result.outcome == "failed" and "bytes" in (result.failure_reason or "")
    assert result.committed == {}
    assert all(v is None for v in (await s.committed()).values())
    assert await s.emulator.client.records(ITEMS_ARN) == {}

    # Fixed: the re-run creates a new attempt of the same range (the failed name is taken) and succeeds.
    await s.emulator.client.configure(imports={"max_full_bytes": 10**9})
    (result,) = await run_import(s.settings, [s.settings.routes[0]])
    assert result.outcome == "imported" and result.job_name is not None and result.job_name.endswith("-2")
    assert s.expect.mismatches(ITEMS_TOPIC, await s.emulator.client.records(ITEMS_ARN)) == []


async def test_dry_run_writes_the_csv_and_touches_nothing(scenario: Scenario, tmp_path: Path) -> None:
    s = scenario
    await s.produce(300, seed=6)
    (result,) = await run_import(s.settings, [s.settings.routes[1]], dry_run=True, output=tmp_path)
    assert result.outcome == "dry-run" and result.csv_path is not None
    lines = result.csv_path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "USER_ID,AGE,GENDER,MEMBERSHIP"
    assert len(lines) - 1 == result.rows == len(s.expect.latest[USERS_TOPIC])
    assert s.jobs() == [] and all(v is None for v in (await s.committed()).values())


async def test_kill_9_mid_import_then_rerun_does_not_import_twice(scenario: Scenario, tmp_path: Path) -> None:
    s = scenario
    await s.produce(1500, seed=8)
    await s.emulator.client.configure(imports={"duration_s": 8})
    config = tmp_path / "ingestor.yaml"
    config.write_text(yaml.safe_dump(s.config), encoding="utf-8")
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "ingestor.cli", "import", "--config", str(config), "--topic", s.items),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_until(lambda: s.jobs(), timeout=60, what="the import job to be created")
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    (job,) = s.jobs()
    assert job.status in ("CREATE PENDING", "CREATE IN_PROGRESS")
    assert all(v is None for v in (await s.committed()).values())

    await s.produce(200, seed=9)  # the end moves on: the re-run must still find the crashed run's job
    (result,) = await run_import(s.settings, [s.settings.routes[0]])
    assert result.outcome == "imported" and result.job_name == job.name
    assert len(s.jobs()) == 1  # waited for the running job: not imported twice
    committed = {(tp.topic, tp.partition): o for tp, o in (await s.committed()).items() if tp.topic == s.items}
    assert committed == {(tp.topic, tp.partition): o for tp, o in result.committed.items()}

    # The records after the crashed run's range go in with the next run (INCREMENTAL).
    (result,) = await run_import(s.settings, [s.settings.routes[0]])
    assert result.outcome == "imported" and result.mode is ImportMode.INCREMENTAL and len(s.jobs()) == 2
    assert s.expect.mismatches(ITEMS_TOPIC, await s.emulator.client.records(ITEMS_ARN)) == []
    assert {k: v for k, v in (await s.committed()).items() if k.topic == s.items} == {
        tp: o for tp, o in s.ends.items() if tp.topic == s.items
    }


async def test_missing_bucket_and_unreachable_control_plane_fail_at_start_naming_the_key(scenario: Scenario) -> None:
    from ingestor.broker import free_port
    from ingestor.errors import ConfigError

    s = scenario
    await s.produce(10, seed=10)
    no_bucket = Settings(**{**s.config, "bulk": {**s.config["bulk"], "s3_uri": "s3://no-such-bucket-here/x/"}})
    with pytest.raises(ConfigError, match=r"bulk\.s3_uri: the bucket no-such-bucket-here does not exist"):
        await run_import(no_bucket, [no_bucket.routes[0]])
    closed = f"http://127.0.0.1:{free_port()}"
    personalize = {**s.config["personalize"], "control_endpoint_url": closed}
    unreachable = Settings(**{**s.config, "personalize": personalize})
    with pytest.raises(ConfigError, match=r"personalize\.control_endpoint_url: the Personalize control plane does not"):
        await run_import(unreachable, [unreachable.routes[0]])
    assert s.jobs() == [] and all(v is None for v in (await s.committed()).values())


async def cli_import(config: Path, *args: str) -> tuple[int, str]:
    """``ingestor import --config CONFIG ARGS`` in a subprocess (not blocking the in-process endpoint): exit code and
    stdout + stderr."""
    return await run_cli("import", "--config", str(config), *args)


def write_config(s: Scenario, tmp_path: Path) -> Path:
    config = tmp_path / "ingestor.yaml"
    config.write_text(yaml.safe_dump(s.config), encoding="utf-8")
    return config


async def test_cli_mode_flag_reaches_the_job(scenario: Scenario, tmp_path: Path) -> None:
    """--mode incremental and --mode full go to the job's importMode as given, even where auto would choose the
    other: INCREMENTAL as the first import is refused by the service (its error shown, nothing committed); FULL after
    an import replaces every record imported before (what auto avoids)."""
    s = scenario
    config = write_config(s, tmp_path)
    await s.produce(300, seed=11)

    code, out = await cli_import(config, "--topic", s.items, "--mode", "incremental")
    assert code == 1, out  # the service refused the job: not a CREATE FAILED (4)
    assert "InvalidInputException" in out and "INCREMENTAL needs an earlier bulk import" in out, out
    assert s.jobs() == [] and all(v is None for v in (await s.committed()).values())
    assert await s.emulator.client.records(ITEMS_ARN) == {}

    code, out = await cli_import(config, "--topic", s.items, "--mode", "full")
    assert code == 0, out
    assert [(j.mode, j.status) for j in s.jobs()] == [("FULL", "ACTIVE")]
    assert s.expect.mismatches(ITEMS_TOPIC, await s.emulator.client.records(ITEMS_ARN)) == []

    # auto would now choose INCREMENTAL; --mode full is FULL: only the new range's ids are left
    batch = [e for e in generate(200, StreamSpec(items=150, users=60, bad_share=0.03, seed=12)) if e.expected]
    await s.produce(200, seed=12)  # the same events: Scenario.produce generates them with this spec
    code, out = await cli_import(config, "--topic", s.items, "--mode", "full")
    assert code == 0, out
    assert [(j.mode, j.status) for j in s.jobs()] == [("FULL", "ACTIVE"), ("FULL", "ACTIVE")]
    records = await s.emulator.client.records(ITEMS_ARN)
    assert set(records) == {e.record_id for e in batch if e.topic == ITEMS_TOPIC}
    newest = Expectation(latest={ITEMS_TOPIC: {rid: s.expect.latest[ITEMS_TOPIC][rid] for rid in records}})
    assert newest.mismatches(ITEMS_TOPIC, records) == []  # each the newest record of its id
    committed = {tp: o for tp, o in (await s.committed()).items() if tp.topic == s.items}
    assert committed == {tp: o for tp, o in s.ends.items() if tp.topic == s.items}


async def test_cli_exits_4_on_a_failed_job_and_commits_nothing(scenario: Scenario, tmp_path: Path) -> None:
    s = scenario
    config = write_config(s, tmp_path)
    await s.produce(300, seed=13)
    await s.emulator.client.configure(imports={"max_full_bytes": 100})
    code, out = await cli_import(config, "--topic", s.items)
    assert code == 4, out
    (job,) = s.jobs()
    assert job.status == "CREATE FAILED" and job.failure_reason
    assert f"job {job.name} CREATE FAILED: {job.failure_reason}" in out, out  # the service's reason, shown
    assert all(v is None for v in (await s.committed()).values())
    assert await s.emulator.client.records(ITEMS_ARN) == {}
