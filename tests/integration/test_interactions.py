"""An interactions route end to end: real broker (Tansu) + the local endpoint's PutEvents, in one event loop."""

from __future__ import annotations

import asyncio
import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from ingestor.app import EXIT_OK, Service
from ingestor.config import Settings
from ingestor.emulator.app import running_emulator
from ingestor.emulator.config import EmulatorConfig
from ingestor.kafka_tools import create_topics, produce, read_topic
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

CONFIG = Path(__file__).parents[2] / "config"
ARN = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/INTERACTIONS"
TRACKING_ID = "shop-tracking-id"  # the endpoint's event tracker for ARN (config/emulator.yaml)
T0 = 1_700_000_000


def stream(n: int, seed: int) -> list[tuple[bytes, dict[str, Any], str | None]]:
    """(key, value, why it is invalid or None). Keys are user ids, so one user's events share a partition.

    Invalid: ``validate`` (no TIMESTAMP, caught by the ingestor) and ``api`` (a COLOR field that the route's schema
    file has but the dataset's schema lacks: the endpoint rejects the call, bisection isolates the event)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        user = f"u{rng.randrange(40)}"
        value: dict[str, Any] = {"USER_ID": user, "ITEM_ID": f"i{rng.randrange(20)}", "EVENT_TYPE": "click"}
        value["TIMESTAMP"] = T0 + i
        if rng.random() < 0.5:
            value["DEVICE"] = rng.choice(["ios", "android", "web"])
        if rng.random() < 0.3:
            value["SESSION_ID"] = f"{user}-s{rng.randrange(2)}"
        why = None
        roll = rng.random()
        if roll < 0.03:
            del value["TIMESTAMP"]
            why = "validate"
        elif roll < 0.06:
            value["COLOR"] = "red"
            why = "api"
        out.append((user.encode(), value, why))
    return out


def settings(bootstrap: str, endpoint: str, suffix: str, topic: str, schema: Path) -> Settings:
    return Settings.load(
        CONFIG / "ingestor.yaml",
        kafka={
            "bootstrap_servers": bootstrap,
            "group_id": f"ingestor-{suffix}",
            "dead_letter_topic": f"dlq-{suffix}",
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 500,
            "commit_interval_s": 0.2,
        },
        personalize={
            "endpoint_url": endpoint,
            "aws_access_key_id": "test",
            "aws_secret_access_key": "test",
            "max_in_flight": 8,
        },
        routes=[
            {
                "topic": topic,
                "kind": "interactions",
                "dataset_arn": ARN,
                "tracking_id": TRACKING_ID,
                "schema": str(schema),
            }
        ],
        metrics={"port": 0},
    )


@pytest.mark.parametrize(
    "faults",
    [{}, {"fail_rate": 0.15, "throttle_rate": 0.15}],
    ids=["calm", "5xx-and-throttling"],
)
async def test_every_event_arrives_in_order_per_session_bad_ones_in_the_dlq_and_commits_reach_the_end(
    broker, unique, tmp_path: Path, faults: dict[str, float]
) -> None:
    suffix = unique("ev")
    topic, dlq = f"shop.events-{suffix}", f"dlq-{suffix}"
    await create_topics(broker.bootstrap_servers, {topic: 3, dlq: 1})
    records = stream(800, seed=5)
    ends = await produce(broker.bootstrap_servers, [(topic, k, json.dumps(v).encode()) for k, v, _ in records])
    placed = await read_topic(broker.bootstrap_servers, topic)
    assert len(placed) == len(records)
    why = {json.dumps(v).encode(): w for _, v, w in records}  # values are unique (TIMESTAMP)
    valid = [r for r in placed if why[r.value] is None]
    invalid = [r for r in placed if why[r.value] is not None]
    assert {why[r.value] for r in invalid} == {"validate", "api"}

    drifted = json.loads((CONFIG / "schemas/interactions.avsc").read_text())
    drifted["fields"].append({"name": "COLOR", "type": ["null", "string"]})
    schema = tmp_path / "interactions.avsc"
    schema.write_text(json.dumps(drifted))

    config = EmulatorConfig.load(CONFIG / "emulator.yaml", quotas={"enabled": False}, faults=faults, seed=9)
    async with running_emulator(config) as emu:
        service = Service(
            settings(broker.bootstrap_servers, emu.url, suffix, topic, schema), registry=CollectorRegistry()
        )
        run = asyncio.create_task(service.run())

        async def caught_up() -> bool:
            if service.source is None or run.done():
                return run.done()
            committed = {
                TopicPartition(tp.topic, tp.partition): off for tp, off in service.pipeline.tracker._committed.items()
            }
            return all(committed.get(tp) == off + 1 for tp, off in ends.items())

        await wait_until(caught_up, timeout=90, what="commits to reach the end of every partition")
        assert not run.done(), run
        service.stop_requested.set()
        assert await asyncio.wait_for(run, 30) == EXIT_OK
        stored = await emu.client.events(ARN)
        stats = await emu.client.stats()
    if faults:  # retried calls, yet every event once and in order (a failed call stores nothing)
        assert stats["calls"]["PutEvents"]["server_error"] > 0 and stats["calls"]["PutEvents"]["throttled"] > 0

    # Every valid event arrived exactly once (no coalescing), with the record's position as its event id.
    expected_ids = {f"{topic}/{r.partition}@{r.offset}" for r in valid}
    assert sorted(e["eventId"] for e in stored) == sorted(expected_ids)
    by_id = {f"{topic}/{r.partition}@{r.offset}": json.loads(r.value) for r in valid}
    for e in stored:
        row = by_id[e["eventId"]]
        assert e["trackingId"] == TRACKING_ID and e["userId"] == row["USER_ID"]
        assert e["sessionId"] == row.get("SESSION_ID", row["USER_ID"])
        assert (e["eventType"], e["sentAt"], e["itemId"]) == ("click", row["TIMESTAMP"], row["ITEM_ID"])
        assert e.get("properties", {}) == ({"device": row["DEVICE"]} if "DEVICE" in row else {})

    # Per session (user + session id; one user → one key → one partition), the endpoint received the events in
    # offset order: one call per session is in flight, and a rejected call's halves go out in order.
    arrival: dict[tuple[str, str], list[int]] = defaultdict(list)
    for e in sorted(stored, key=lambda e: e["seq"]):
        arrival[e["userId"], e["sessionId"]].append(int(e["eventId"].rsplit("@", 1)[1]))
    assert len(arrival) > 40 and all(offsets == sorted(offsets) for offsets in arrival.values())
    assert stats["max_records_per_call"] <= 10

    # The DLQ holds exactly the invalid records, at the stage that caught them.
    dead = await read_topic(broker.bootstrap_servers, dlq)
    assert sorted(r.value for r in dead) == sorted(r.value for r in invalid)
    for r in dead:
        headers = {k: v.decode() for k, v in r.headers}
        assert headers["ingestor.error.stage"] == why[r.value]
        assert headers["ingestor.dataset.arn"] == ARN
        assert f"@{headers['ingestor.source.offset']}" in headers["ingestor.error.reason"]
