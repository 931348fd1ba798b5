"""User deletions (on_delete: delete) on the real broker, the local endpoint and moto's S3 server: deletes become
data deletion jobs, and a user deleted then created again while the job runs is not wiped by it."""

from __future__ import annotations

import asyncio
import json

import pytest
from prometheus_client import CollectorRegistry

from ingestor.app import EXIT_OK, Service
from ingestor.config import Settings
from ingestor.kafka_tools import create_topics, produce
from ingestor.model import TopicPartition as Tp
from tests.conftest import wait_until
from tests.integration.test_service import CONFIG, USERS_ARN

pytestmark = pytest.mark.integration

ROLE = "arn:aws:iam::123456789012:role/PersonalizeS3"


def settings_for(bootstrap: str, endpoint: str, s3_url: str, bucket: str, suffix: str) -> Settings:
    return Settings(
        kafka={
            "bootstrap_servers": bootstrap,
            "group_id": f"ingestor-{suffix}",
            "dead_letter_topic": f"dlq-{suffix}",
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 500,
            "commit_interval_s": 0.2,
        },
        personalize={"endpoint_url": endpoint, "aws_access_key_id": "t", "aws_secret_access_key": "t"},
        routes=[
            {
                "topic": f"users-{suffix}",
                "kind": "users",
                "dataset_arn": USERS_ARN,
                "schema": str(CONFIG / "schemas/users.avsc"),
                "on_delete": "delete",
            }
        ],
        bulk={"s3_uri": f"s3://{bucket}/staging/", "s3_endpoint_url": s3_url, "role_arn": ROLE},
        deletions={"max_wait_s": 0.3, "poll_interval_s": 0.2},
        metrics={"port": 0},
    )


def user(topic: str, uid: str, age: int | None) -> tuple[str, bytes, bytes | None]:
    """An update (age) or a tombstone (None)."""
    value = None if age is None else json.dumps({"USER_ID": uid, "AGE": age, "MEMBERSHIP": "gold"}).encode()
    return (topic, uid.encode(), value)


def running(emu) -> list[str]:
    return [j.name for j in emu.service.deletions.jobs.values() if j.status in ("PENDING", "IN_PROGRESS")]


async def test_deletions_with_recreation_while_a_deletion_job_runs(
    broker, start_emulator, s3_server, s3_bucket, unique
) -> None:
    suffix = unique("del")
    topic = f"users-{suffix}"
    await create_topics(broker.bootstrap_servers, {topic: 2, f"dlq-{suffix}": 1})
    emu = await start_emulator(imports={"s3_endpoint_url": s3_server.url}, deletions={"duration_s": 4.0})
    settings = settings_for(broker.bootstrap_servers, emu.url, s3_server.url, s3_bucket, suffix)
    first = [user(topic, f"u{i}", 1) for i in range(1, 7)] + [user(topic, f"u{i}", None) for i in (1, 2, 3, 4)]
    ends = {Tp(tp.topic, tp.partition): o + 1 for tp, o in (await produce(broker.bootstrap_servers, first)).items()}

    service = Service(settings, registry=CollectorRegistry())
    run = asyncio.create_task(service.run())
    try:
        await wait_until(lambda: running(emu) or run.done(), timeout=60, what="a running deletion job")
        assert not run.done()
        # while the job runs: u2 and u4 come back, u3 comes back and goes again, u5 goes, u6 changes
        second = [
            user(topic, "u2", 2),
            user(topic, "u3", 2),
            user(topic, "u3", None),
            user(topic, "u4", 2),
            user(topic, "u4", 3),
            user(topic, "u5", None),
            user(topic, "u6", 2),
        ]
        last = await produce(broker.bootstrap_servers, second)
        assert running(emu), "the first deletion job must still be running while the recreations arrive"
        ends.update({Tp(tp.topic, tp.partition): o + 1 for tp, o in last.items()})
        records = emu.service.datasets[USERS_ARN].records
        assert "u2" not in records or records["u2"].properties["age"] == 1  # the recreation is held, not sent

        def settled() -> bool:
            assert service.pipeline is not None
            committed = service.pipeline.tracker._committed
            return all(committed.get(tp) == off for tp, off in ends.items()) and not running(emu)

        await wait_until(lambda: settled() or run.done(), timeout=90, what="every offset committed, no job running")
        assert not run.done()
        await wait_until(lambda: "u4" in records and records["u4"].properties["age"] == 3, timeout=30)
        final = {rid: rec.properties["age"] for rid, rec in records.items()}
        assert final == {"u2": 2, "u4": 3, "u6": 2}  # u1, u3, u5: their newest event is a delete
        jobs = list(emu.service.deletions.jobs.values())
        assert len(jobs) >= 2 and all(j.status == "COMPLETED" for j in jobs)

        def finished_jobs() -> dict[str, float]:
            return {
                s.labels["status"]: s.value
                for m in service.metrics.registry.collect()
                for s in m.samples
                if s.name == "ingestor_deletion_jobs_total"
            }

        await wait_until(lambda: finished_jobs() == {"COMPLETED": float(len(jobs))}, timeout=10, what="job metrics")
    finally:
        service.stop_requested.set()
        assert await asyncio.wait_for(run, 30) == EXIT_OK


async def test_a_restart_holds_updates_until_a_deletion_job_left_running_completes(
    broker, start_emulator, s3_server, s3_bucket, unique
) -> None:
    suffix = unique("delr")
    topic = f"users-{suffix}"
    await create_topics(broker.bootstrap_servers, {topic: 1, f"dlq-{suffix}": 1})
    emu = await start_emulator(imports={"s3_endpoint_url": s3_server.url}, deletions={"duration_s": 6.0})
    settings = settings_for(broker.bootstrap_servers, emu.url, s3_server.url, s3_bucket, suffix)
    await produce(broker.bootstrap_servers, [user(topic, "u1", 1), user(topic, "u1", None)])
    service = Service(settings, registry=CollectorRegistry())
    run = asyncio.create_task(service.run())
    try:
        await wait_until(lambda: running(emu) or run.done(), timeout=60, what="a running deletion job")

        def committed_past_the_delete() -> bool:
            assert service.pipeline is not None
            return service.pipeline.tracker._committed.get(Tp(topic, 0)) == 2

        await wait_until(committed_past_the_delete, timeout=30, what="the delete committed once its job exists")
    finally:
        service.stop_requested.set()
        assert await asyncio.wait_for(run, 30) == EXIT_OK
    assert running(emu), "the job outlives the service"
    await produce(broker.bootstrap_servers, [user(topic, "u1", 2)])  # recreated while the old job still runs
    restarted = Service(settings, registry=CollectorRegistry())
    run = asyncio.create_task(restarted.run())
    try:
        records = emu.service.datasets[USERS_ARN].records
        await wait_until(lambda: not running(emu) or run.done(), timeout=60, what="the job to complete")
        await wait_until(lambda: "u1" in records or run.done(), timeout=30, what="u1 sent after the job")
        assert not run.done()
        assert records["u1"].properties["age"] == 2
    finally:
        restarted.stop_requested.set()
        assert await asyncio.wait_for(run, 30) == EXIT_OK
