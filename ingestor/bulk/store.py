"""The newest record per id, on disk (sqlite3): memory stays flat however many ids a range holds.

Records are put in fetch order; per-id order is per-partition order (an id lives in one partition), so the last
put of an id is its newest record. The file is scratch space: a crash simply re-reads and re-stages the range, so
the database runs without a journal or fsync. Not thread-safe; use it from one thread at a time.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType

CACHE_KIB = 8 * 1024  # sqlite's page cache: the store's memory, whatever the number of ids
FETCH_ROWS = 2000


class LatestStore:
    """``put_many((id, properties_json | None), ...)``; ``rows()`` yields the newest of each id."""

    def __init__(self, directory: Path | None = None) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="ingestor-bulk-", dir=directory)
        self.path = Path(self._dir.name) / "latest.sqlite3"
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        for pragma in (
            "journal_mode=OFF",
            "synchronous=OFF",
            "temp_store=FILE",
            f"cache_size=-{CACHE_KIB}",
            "locking_mode=EXCLUSIVE",
        ):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.execute("CREATE TABLE latest (id TEXT PRIMARY KEY, properties TEXT) WITHOUT ROWID")
        self.puts = 0

    def put_many(self, records: Iterable[tuple[str, str | None]]) -> None:
        """Store these records, a later one of an id replacing the earlier (one transaction)."""
        batch = list(records)
        self._db.execute("BEGIN")
        self._db.executemany("INSERT OR REPLACE INTO latest (id, properties) VALUES (?, ?)", batch)
        self._db.execute("COMMIT")
        self.puts += len(batch)

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM latest").fetchone()[0])

    def rows(self) -> Iterator[tuple[str, str | None]]:
        """Every id with its newest properties JSON, in id order (streamed: a bounded number in memory)."""
        cursor = self._db.execute("SELECT id, properties FROM latest ORDER BY id")
        while batch := cursor.fetchmany(FETCH_ROWS):
            yield from batch

    def close(self) -> None:
        self._db.close()
        self._dir.cleanup()

    def __enter__(self) -> LatestStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
