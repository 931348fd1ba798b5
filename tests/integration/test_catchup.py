"""Catch-up inside ``ingestor run``: a backlog beyond bulk.catch_up_after_s goes through an import job; newer records
of the same ids arriving while the job runs are streamed only after it is ACTIVE, so the newest record wins."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import boto3
import pytest
import yaml
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from ingestor.app import EXIT_OK, Service
from ingestor.bulk import catchup
from ingestor.kafka_tools import create_topics, produce, read_topic
from ingestor.model import TopicPartition as Tp
from ingestor.sample import ITEMS_TOPIC, USERS_TOPIC, Expectation, StreamSpec, generate
from tests.conftest import run_cli, wait_until
from tests.integration.test_service import ITEMS_ARN, USERS_ARN, service_settings

pytestmark = pytest.mark.integration

ROLE = "arn:aws:iam::123456789012:role/PersonalizeS3"


async def send_stream(
    bootstrap: str, rename: dict[str, str], expect: Expectation, count: int, spec: StreamSpec
) -> dict[TopicPartition, int]:
    """Produce ``count`` events of ``spec`` (topics renamed), each in ``expect``; the next offset by partition."""
    events = list(generate(count, spec))
    for e in events:
        expect.add(e)
    last = await produce(bootstrap, [(rename[e.topic], e.key, e.value) for e in events])
    return {tp: off + 1 for tp, off in last.items()}


async def test_backlog_switches_to_an_import_and_newer_records_win(
    broker, start_emulator, s3_server, s3_bucket, unique, monkeypatch
) -> None:
    monkeypatch.setattr(catchup, "CHECK_INTERVAL_S", 0.5)
    suffix = unique("cu")
    items, users, dlq = f"{ITEMS_TOPIC}-{suffix}", f"{USERS_TOPIC}-{suffix}", f"dlq-{suffix}"
    await create_topics(broker.bootstrap_servers, {items: 2, users: 2, dlq: 1})
    rename = {ITEMS_TOPIC: items, USERS_TOPIC: users}
    expect = Expectation()
    ends: dict[TopicPartition, int] = {}

    async def send(count: int, seed: int) -> None:
        spec = StreamSpec(items=2000, users=800, bad_share=0.02, seed=seed)
        for tp, end in (await send_stream(broker.bootstrap_servers, rename, expect, count, spec)).items():
            ends[tp] = max(ends.get(tp, 0), end)

    # ≈ 2,600 item and 1,400 user changes over 2,000 + 800 ids: ≈ 15 s of calls per dataset, more than the 5 s allowed;
    # the 600 newer ones below stay under it (no second switch)
    await send(4000, seed=21)
    emu = await start_emulator(quotas={"enabled": True}, imports={"s3_endpoint_url": s3_server.url, "duration_s": 3.0})
    settings = service_settings(
        broker.bootstrap_servers,
        emu.url,
        suffix,
        bulk={
            "s3_uri": f"s3://{s3_bucket}/catch-up/",
            "s3_endpoint_url": s3_server.url,
            "role_arn": ROLE,
            "catch_up_after_s": 5,
            "poll_interval_s": 0.2,
        },
    )
    service = Service(settings, registry=CollectorRegistry())
    run = asyncio.create_task(service.run())
    try:
        await wait_until(lambda: len(emu.service.imports.jobs) >= 2 or run.done(), timeout=60, what="import jobs")
        assert not run.done()
        await send(600, seed=22)  # newer records of the same ids while the jobs run

        async def caught_up() -> bool:
            if run.done() or service.pipeline is None:
                return run.done()
            committed = service.pipeline.tracker._committed
            return all(committed.get(Tp(tp.topic, tp.partition)) == off for tp, off in ends.items())

        await wait_until(caught_up, timeout=120, what="commits to reach the end of every partition")
        assert not run.done()
        assert service.pipeline is not None
        assert service.pipeline.buffered == 0  # every record fetched is accounted for, none counted twice
        jobs = list(emu.service.imports.jobs.values())
        assert {j.dataset_arn for j in jobs} == {ITEMS_ARN, USERS_ARN}
        assert all(j.status == "ACTIVE" for j in jobs)
        stats = await emu.client.stats()
        streamed = stats["records"]["PutItems"]["ok"] + stats["records"]["PutUsers"]["ok"]
        assert streamed < 4000  # most of the backlog went through the imports
        jobs_total = {
            sample.labels["status"]: sample.value
            for metric in service.metrics.registry.collect()
            for sample in metric.samples
            if sample.name == "ingestor_import_jobs_total"
        }
        assert jobs_total == {"ACTIVE": 2.0, "CREATE FAILED": 0.0}
    finally:
        service.stop_requested.set()
        assert await asyncio.wait_for(run, 30) == EXIT_OK

    assert expect.mismatches(ITEMS_TOPIC, await emu.client.records(ITEMS_ARN)) == []
    assert expect.mismatches(USERS_TOPIC, await emu.client.records(USERS_ARN)) == []
    dead = await read_topic(broker.bootstrap_servers, dlq, idle_s=1.0)
    assert Counter(r.value for r in dead) == Counter(e.value for e in expect.invalid)  # exactly once each


async def test_two_replicas_catch_up_on_one_dataset(
    broker, start_emulator, s3_server, s3_bucket, unique, monkeypatch
) -> None:
    """Both replicas join first (a stable assignment), then the backlog arrives: each replica switches its own
    partitions of each dataset and imports them as its own job (the second of a dataset waits for the first, then
    INCREMENTAL); the final state is exact."""
    monkeypatch.setattr(catchup, "CHECK_INTERVAL_S", 0.5)
    suffix = unique("cu2")
    items, users, dlq = f"{ITEMS_TOPIC}-{suffix}", f"{USERS_TOPIC}-{suffix}", f"dlq-{suffix}"
    await create_topics(broker.bootstrap_servers, {items: 4, users: 2, dlq: 1})
    rename = {ITEMS_TOPIC: items, USERS_TOPIC: users}
    emu = await start_emulator(quotas={"enabled": True}, imports={"s3_endpoint_url": s3_server.url, "duration_s": 2.0})
    settings = service_settings(
        broker.bootstrap_servers,
        emu.url,
        suffix,
        bulk={
            "s3_uri": f"s3://{s3_bucket}/two/",
            "s3_endpoint_url": s3_server.url,
            "role_arn": ROLE,
            "catch_up_after_s": 1,
            "poll_interval_s": 0.2,
        },
    )
    everything = {Tp(items, p) for p in range(4)} | {Tp(users, p) for p in range(2)}
    services = [Service(settings, registry=CollectorRegistry()) for _ in range(2)]
    runs = [asyncio.create_task(s.run()) for s in services]
    try:

        def assignments() -> list[set[Tp]]:
            return [s.source.assignment() if s.source is not None else set() for s in services]

        def shared_out() -> bool:  # both members in the group, each with its share (joins take seconds on Tansu)
            a, b = assignments()
            return any(r.done() for r in runs) or (bool(a) and bool(b) and not a & b and a | b == everything)

        await wait_until(shared_out, timeout=120, what="both replicas to share the partitions")
        assert not any(r.done() for r in runs)
        owned = assignments()
        # the backlog arrives once both replicas own their partitions: ≈ 3,250 item and 1,750 user changes over
        # 2,000 + 800 ids, many seconds of calls for each replica's share (catch_up_after_s: 1)
        expect = Expectation()
        spec = StreamSpec(items=2000, users=800, bad_share=0.02, seed=31)
        sent = await send_stream(broker.bootstrap_servers, rename, expect, 5000, spec)
        ends = {Tp(tp.topic, tp.partition): end for tp, end in sent.items()}

        def committed() -> dict[Tp, int]:
            out: dict[Tp, int] = {}
            for s in services:
                if s.pipeline is not None:
                    for tp, off in s.pipeline.tracker._committed.items():
                        out[tp] = max(out.get(tp, 0), off)
            return out

        await wait_until(
            lambda: any(r.done() for r in runs) or all(committed().get(tp) == off for tp, off in ends.items()),
            timeout=240,
            what="both replicas to commit the end of every partition",
        )
        assert not any(r.done() for r in runs)
        # A rebalance (a heartbeat starved on a loaded machine) moves partitions: the shares imported are then not
        # the ones seen above, so only the final state is checked below.
        rebalanced = assignments() != owned
    finally:
        for s in services:
            s.stop_requested.set()
        assert await asyncio.wait_for(asyncio.gather(*runs), 60) == [EXIT_OK, EXIT_OK]

    jobs = list(emu.service.imports.jobs.values())
    assert jobs and all(j.status == "ACTIVE" for j in jobs)
    # Each replica finished import jobs of its own (one per dataset it owns partitions of)...
    for s, mine in zip(services, owned, strict=True):
        topics = {tp.topic for tp in mine}
        assert rebalanced or s.bulk_metrics.jobs.labels("ACTIVE")._value.get() >= len(topics)
        assert rebalanced or s.bulk_metrics.rows._value.get() > 0
    # ... covering exactly its partitions: the manifest staged next to each job's CSV names the range's partitions.
    s3 = boto3.client(
        "s3", endpoint_url=s3_server.url, region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t"
    )

    def partitions_of(job: Any) -> frozenset[str]:
        bucket, _, key = job.data_location.removeprefix("s3://").partition("/")
        manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"{key.rsplit('/', 1)[0]}/manifest.json")["Body"].read())
        assert manifest["job_name"] == job.name
        return frozenset(manifest["start"])

    for arn, topic in ((ITEMS_ARN, items), (USERS_ARN, users)):
        of_dataset = [j for j in jobs if j.dataset_arn == arn]  # in creation order
        covered = [partitions_of(j) for j in of_dataset]
        shares = [frozenset(f"{tp.topic}/{tp.partition}" for tp in mine if tp.topic == topic) for mine in owned]
        # every share imported, by a job of its own (a replica whose check cut the backlog while it was still being
        # produced imports the rest as another job of the same share)
        assert rebalanced or set(covered) == set(shares), (arn, covered, shares)
        modes = [j.mode for j in of_dataset]
        assert modes == ["FULL"] + ["INCREMENTAL"] * (len(modes) - 1)  # never a second FULL replacing the first's rows
    assert expect.mismatches(ITEMS_TOPIC, await emu.client.records(ITEMS_ARN)) == []
    assert expect.mismatches(USERS_TOPIC, await emu.client.records(USERS_ARN)) == []
    dead = await read_topic(broker.bootstrap_servers, dlq, idle_s=1.0)
    # At least once each, nothing else: a cut whose commit a rebalance rejected is read again by the next owner,
    # exactly as the streaming path re-reads after a rejected commit.
    assert set(Counter(r.value for r in dead)) == {e.value for e in expect.invalid}


async def test_a_failed_import_sends_the_range_back_to_streaming(
    broker, start_emulator, s3_server, s3_bucket, unique, monkeypatch
) -> None:
    monkeypatch.setattr(catchup, "CHECK_INTERVAL_S", 0.5)
    suffix = unique("cuf")
    items, users, dlq = f"{ITEMS_TOPIC}-{suffix}", f"{USERS_TOPIC}-{suffix}", f"dlq-{suffix}"
    await create_topics(broker.bootstrap_servers, {items: 2, users: 1, dlq: 1})
    rename = {ITEMS_TOPIC: items, USERS_TOPIC: users}
    expect = Expectation()
    spec = StreamSpec(items=200, users=60, bad_share=0.02, seed=41)
    sent = await send_stream(broker.bootstrap_servers, rename, expect, 900, spec)
    ends = {Tp(tp.topic, tp.partition): end for tp, end in sent.items()}
    emu = await start_emulator(
        quotas={"enabled": True},
        imports={"s3_endpoint_url": s3_server.url, "duration_s": 0.5, "max_full_bytes": 10},  # every job fails
    )
    settings = service_settings(
        broker.bootstrap_servers,
        emu.url,
        suffix,
        bulk={
            "s3_uri": f"s3://{s3_bucket}/fail/",
            "s3_endpoint_url": s3_server.url,
            "role_arn": ROLE,
            "catch_up_after_s": 1,
            "poll_interval_s": 0.2,
        },
    )
    service = Service(settings, registry=CollectorRegistry())
    run = asyncio.create_task(service.run())
    try:

        def caught_up() -> bool:
            if run.done() or service.pipeline is None:
                return run.done()
            committed = service.pipeline.tracker._committed
            return all(committed.get(tp) == off for tp, off in ends.items())

        await wait_until(caught_up, timeout=120, what="the streaming path to commit every partition's end")
        assert not run.done()
        jobs = list(emu.service.imports.jobs.values())
        assert jobs and all(j.status == "CREATE FAILED" for j in jobs)
        assert len({j.dataset_arn for j in jobs}) == len(jobs)  # one attempt per dataset, then a back-off
        failed = service.bulk_metrics.jobs.labels("CREATE FAILED")._value.get()
        assert failed == len(jobs)
    finally:
        service.stop_requested.set()
        assert await asyncio.wait_for(run, 30) == EXIT_OK
    assert expect.mismatches(ITEMS_TOPIC, await emu.client.records(ITEMS_ARN)) == []
    assert expect.mismatches(USERS_TOPIC, await emu.client.records(USERS_ARN)) == []
    dead = await read_topic(broker.bootstrap_servers, dlq, idle_s=1.0)
    assert set(r.value for r in dead) == {e.value for e in expect.invalid}


@pytest.mark.parametrize("broken", ["bucket", "control plane"])
async def test_run_with_catch_up_fails_at_start_naming_the_key(
    broker, start_emulator, s3_server, s3_bucket, unique, tmp_path, broken: str
) -> None:
    """`ingestor run` with bulk.catch_up_after_s > 0: a missing staging bucket or an unreachable control plane stops
    it at start with exit code 2 and a message naming the key and its INGESTOR_ variable."""
    from ingestor.broker import free_port
    from tests.integration.test_import import config_dict

    suffix = unique("cus")
    emu = await start_emulator(imports={"s3_endpoint_url": s3_server.url})
    config = config_dict(broker.bootstrap_servers, emu.url, s3_server.url, s3_bucket, suffix)
    config["bulk"]["catch_up_after_s"] = 5
    if broken == "bucket":
        config["bulk"]["s3_uri"] = "s3://no-such-bucket-here/x/"
        expected = ("bulk.s3_uri: the bucket no-such-bucket-here does not exist", "INGESTOR_BULK__S3_URI")
    else:
        config["personalize"]["control_endpoint_url"] = f"http://127.0.0.1:{free_port()}"
        expected = (
            "personalize.control_endpoint_url: the Personalize control plane does not answer",
            "INGESTOR_PERSONALIZE__CONTROL_ENDPOINT_URL",
        )
    await create_topics(broker.bootstrap_servers, {config["routes"][0]["topic"]: 1, config["routes"][1]["topic"]: 1})
    path = tmp_path / "ingestor.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    code, output = await run_cli("run", "--config", str(path))
    assert code == 2, output
    assert all(text in output for text in expected), output
    assert emu.service.imports.jobs == {}
