"""Records waiting for their writer schema, held in fetch order per partition.

A partition with a held record holds every later record too (even JSON or cached-schema ones): records of one id
keep their order, and nothing of the partition is committed past the first held record (held records are tracked,
not done, so they count in the buffered total that backpressure watches). The source pauses a partition while it
holds records, so it cannot fill the bound alone; other partitions flow on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, KeysView

from ingestor.model import SourceRecord, TopicPartition


class HeldRecords:
    def __init__(self) -> None:
        self._queues: dict[TopicPartition, deque[tuple[SourceRecord, int]]] = {}
        self.count = 0

    def holds(self, tp: TopicPartition) -> bool:
        return tp in self._queues

    @property
    def partitions(self) -> KeysView[TopicPartition]:
        """The partitions with held records (backpressure pauses them: what they fetch would only be held too)."""
        return self._queues.keys()

    def hold(self, record: SourceRecord, epoch: int) -> None:
        queue = self._queues.get(record.tp)
        if queue is None:
            queue = self._queues[record.tp] = deque()
        queue.append((record, epoch))
        self.count += 1

    def release(self, process: Callable[[SourceRecord, int], bool]) -> int:
        """Feed each partition's held records to ``process`` in order until one must wait again (it returns
        False); returns how many were released."""
        released = 0
        for tp in list(self._queues):
            queue = self._queues.get(tp)
            while queue:
                record, epoch = queue[0]
                if not process(record, epoch):
                    break
                queue.popleft()
                released += 1
            if not queue:
                self._queues.pop(tp, None)
        self.count -= released
        return released

    def drop(self, partitions: Iterable[TopicPartition]) -> int:
        """Forget revoked partitions' held records (never done, so never committed: the next owner reads them)."""
        dropped = 0
        for tp in partitions:
            queue = self._queues.pop(tp, None)
            if queue is not None:
                dropped += len(queue)
        self.count -= dropped
        return dropped
