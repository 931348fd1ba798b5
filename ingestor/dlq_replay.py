"""``ingestor dlq replay``: re-publish dead-lettered records after the cause was fixed (a schema, a dataset).

Reads the dead-letter topic from the start, keeps the records matching the filters (stage, reason text, source
topic), and publishes each one's original key, value and headers (the ``ingestor.*`` error headers removed) to its
source topic — or to ``--to``. ``--dry-run`` only counts. Replayed records flow through the pipeline again like any
other change; one that is still invalid is dead-lettered again, with a fresh reason.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ingestor.config import Settings
from ingestor.deadletter import H_REASON, H_STAGE, H_TOPIC, OUR_HEADERS
from ingestor.errors import ConfigError
from ingestor.kafka_auth import kafka_security_kwargs
from ingestor.kafka_tools import produce, read_topic


@dataclass(frozen=True)
class ReplayFilter:
    stages: frozenset[str] = frozenset()
    reason_contains: str | None = None
    source_topic: str | None = None

    def matches(self, headers: dict[str, str]) -> bool:
        if self.stages and headers.get(H_STAGE) not in self.stages:
            return False
        if self.reason_contains and self.reason_contains.lower() not in headers.get(H_REASON, "").lower():
            return False
        return not (self.source_topic and headers.get(H_TOPIC) != self.source_topic)


def plan(records: list[Any], flt: ReplayFilter, to: str | None) -> list[tuple[str, Any, Any, list[tuple[str, bytes]]]]:
    """(target topic, key, value, original headers) for each DLQ record that matches."""
    out = []
    for r in records:
        raw = [(k, v or b"") for k, v in (r.headers or ())]
        headers = {k: v.decode("utf-8", "replace") for k, v in raw}
        if not flt.matches(headers):
            continue
        target = to or headers.get(H_TOPIC)
        if not target:
            continue  # not one of ours: no source topic to go back to
        out.append((target, r.key, r.value, [(k, v) for k, v in raw if k not in OUR_HEADERS]))
    return out


async def replay(settings: Settings, flt: ReplayFilter, to: str | None, dry_run: bool) -> Counter[str]:
    client = kafka_security_kwargs(settings)
    bootstrap = settings.kafka.bootstrap_servers
    records = await read_topic(bootstrap, settings.kafka.dead_letter_topic, **client)
    todo = plan(records, flt, to)
    if not dry_run and todo:
        await produce(bootstrap, todo, **client)
    return Counter(target for target, *_ in todo)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    p = sub.add_parser("replay", help="re-publish dead-lettered records to their source topic (or --to)")
    p.add_argument("--config", default=os.environ.get("INGESTOR_CONFIG"), help="the service's YAML config")
    p.add_argument("--stage", action="append", choices=["decode", "validate", "api"], help="only this stage (repeat)")
    p.add_argument("--reason-contains", help="only records whose reason contains this text (case-insensitive)")
    p.add_argument("--source-topic", help="only records that came from this topic")
    p.add_argument("--to", help="publish here instead of each record's source topic")
    p.add_argument("--dry-run", action="store_true", help="count what would be replayed, publish nothing")


def main(args: argparse.Namespace) -> int:
    try:
        settings = Settings.load(args.config)
    except ConfigError as exc:
        print(f"ingestor: {exc}", file=sys.stderr)
        return 2
    flt = ReplayFilter(frozenset(args.stage or ()), args.reason_contains, args.source_topic)
    counts = asyncio.run(replay(settings, flt, args.to, args.dry_run))
    verb = "would replay" if args.dry_run else "replayed"
    total = sum(counts.values())
    print(f"{verb} {total} record(s) from {settings.kafka.dead_letter_topic}")
    for topic, n in sorted(counts.items()):
        print(f"  {n:>8}  → {topic}")
    return 0
