"""Hot-path benchmark: records/s through ingest → decode → validate → buffer → (instant) send → done marks.

No I/O: an in-memory Personalize client that accepts every call and a DLQ producer that acknowledges at once, so
the figures are the pipeline's own CPU cost per record. Prints records/s for a few stream shapes.

    .venv/bin/python bench/bench_pipeline.py [--records 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingestor.config import Settings
from ingestor.metrics import Metrics
from ingestor.model import SourceRecord
from ingestor.pipeline import Pipeline
from ingestor.sender import Sender

CONFIG = Path(__file__).resolve().parents[1] / "config"
ARN = "arn:aws:personalize:us-east-1:123456789012:dataset/shop/ITEMS"


class InstantPersonalize:
    calls = 0

    async def put_items(self, **kwargs: Any) -> dict[str, Any]:
        self.calls += 1
        return {}

    put_users = put_items


class InstantProducer:
    async def send(self, topic: str, value: Any = None, key: Any = None, headers: Any = None) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


def values(n: int, ids: int, shape: str) -> list[bytes]:
    out = []
    for i in range(n):
        rid = f"item-{i % ids}"
        row = {"ITEM_ID": rid, "PRICE": 9.5, "GENRES": "action|drama", "NUMBER_OF_RATINGS": i, "CREATION_TIMESTAMP": 1}
        if shape == "api":
            row = {"itemId": rid, "properties": {k.lower(): v for k, v in row.items() if k != "ITEM_ID"}}
        elif shape == "debezium":
            row = {"payload": {"before": None, "after": row, "op": "u"}, "schema": {}}
        elif shape == "debezium, payload only":
            row = {"payload": {"before": None, "after": row, "op": "u"}}
        out.append(json.dumps(row).encode())
    return out


async def run(n: int, ids: int, shape: str) -> float:
    settings = Settings(
        kafka={"dead_letter_topic": "dlq"},
        personalize={"rate_limits": {"PutItems": 1e6}, "max_in_flight": 64},
        routes=[{"topic": "t", "kind": "items", "dataset_arn": ARN, "schema": CONFIG / "schemas/items.avsc"}],
        batching={"linger_ms": 1, "max_buffered_records": n + 1},
    )
    metrics = Metrics()
    pipeline = Pipeline(
        settings, Sender(InstantPersonalize(), metrics, settings.personalize.retry), InstantProducer(), metrics
    )
    pipeline.start()
    batch = values(n, ids, shape)
    start = time.perf_counter()
    for off, value in enumerate(batch):
        pipeline.ingest(SourceRecord("t", 0, off, None, value))
        if off % 1000 == 999:
            await asyncio.sleep(0)  # as the fetch loop does between getmany() batches
    assert await pipeline.drain(120)
    elapsed = time.perf_counter() - start
    await pipeline.stop()
    return n / elapsed


async def main(n: int) -> None:
    print(f"{'stream':<36}{'records/s':>12}")
    for shape, ids, label in [
        ("flat", n, "flat, every id distinct"),
        ("flat", 1000, "flat, 1,000 hot ids (coalescing)"),
        ("api", n, "API-shaped"),
        ("debezium", n, "Debezium envelope"),
        ("debezium, payload only", n, "Debezium envelope, payload only"),
    ]:
        print(f"{label:<36}{await run(n, ids, shape):>12,.0f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=200_000)
    asyncio.run(main(p.parse_args().records))
