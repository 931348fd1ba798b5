"""`ingestor dlq replay` re-publishes dead-lettered records to their source topic, filtered, headers cleaned."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingestor.config import Settings
from ingestor.deadletter import dlq_headers
from ingestor.dlq_replay import ReplayFilter, replay
from ingestor.kafka_tools import create_topics, produce, read_topic
from ingestor.model import SourceRecord

pytestmark = pytest.mark.integration
CONFIG = Path(__file__).parents[2] / "config"


async def test_replay_filters_by_stage_and_restores_original_headers(broker, unique) -> None:
    source, dlq, other = unique("src"), unique("dlq"), unique("other")
    await create_topics(broker.bootstrap_servers, {source: 1, dlq: 1, other: 1})
    dead = []
    for i, stage in enumerate(["validate", "decode", "validate", "api"]):
        rec = SourceRecord(source, 0, i, f"k{i}".encode(), f"v{i}".encode(), (("trace", b"t"),))
        headers = dlq_headers(rec, stage, f"{rec.where}: reason {stage}", "SchemaError", "arn:x")
        dead.append((dlq, rec.key, rec.value, headers))
    await produce(broker.bootstrap_servers, dead)
    settings = Settings.load(
        CONFIG / "ingestor.yaml", kafka={"bootstrap_servers": broker.bootstrap_servers, "dead_letter_topic": dlq}
    )

    counts = await replay(settings, ReplayFilter(stages=frozenset({"validate"})), to=None, dry_run=True)
    assert counts == {source: 2}
    assert await read_topic(broker.bootstrap_servers, source, idle_s=1) == []  # dry run publishes nothing

    counts = await replay(settings, ReplayFilter(stages=frozenset({"validate"})), to=None, dry_run=False)
    assert counts == {source: 2}
    back = await read_topic(broker.bootstrap_servers, source, idle_s=1)
    assert sorted(r.value for r in back) == [b"v0", b"v2"]
    assert all(list(r.headers) == [("trace", b"t")] for r in back)

    counts = await replay(settings, ReplayFilter(reason_contains="REASON API"), to=other, dry_run=False)
    assert counts == {other: 1}
    assert [r.value for r in await read_topic(broker.bootstrap_servers, other, idle_s=1)] == [b"v3"]
