"""Embedded in-process event bus for the demo: topics, partitions, offsets, like Kafka.

The same :class:`armlab.services.consumer.IngestRunner` consumes it (and the same handlers
run), with offsets stored in the database exactly as for Kafka. Records are keyed and
partitioned with Kafka's murmur2 partitioner so an impression and its feedback share a
partition here too. Thread-safe: an API thread may produce while the demo drains.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import NamedTuple

from kafka.partitioner.default import murmur2

TP = tuple[str, int]


class MemoryRecord(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class MemoryBus:
    """Append-only partitioned logs held in memory."""

    def __init__(self, default_partitions: int = 1) -> None:
        self.default_partitions = default_partitions
        self._logs: dict[str, list[list[tuple[bytes | None, bytes | None]]]] = {}
        self._lock = threading.Lock()
        self._groups: set[str] = set()

    def first_consumer(self, group: str) -> bool:
        """True the first time a consumer of ``group`` is built on this bus: every log of a
        new bus starts at offset 0, so offsets the database stored for the group belong to
        an earlier bus and must be forgotten (consumers built later on the same bus keep
        them, like a restarted Kafka consumer)."""
        with self._lock:
            first = group not in self._groups
            self._groups.add(group)
            return first

    def create_topic(self, name: str, partitions: int | None = None) -> None:
        with self._lock:
            if name not in self._logs:
                self._logs[name] = [[] for _ in range(partitions or self.default_partitions)]

    def partitions(self, topic: str) -> int:
        self.create_topic(topic)
        return len(self._logs[topic])

    def produce(
        self, topic: str, value: bytes | None, key: bytes | None = None,
        partition: int | None = None,
    ) -> tuple[int, int]:
        """Append a record; returns (partition, offset)."""
        self.create_topic(topic)
        with self._lock:
            parts = self._logs[topic]
            if partition is None:
                # Kafka's default partitioner: murmur2(key) & 0x7fffffff % n (keyless: p0).
                partition = (murmur2(key) & 0x7FFFFFFF) % len(parts) if key is not None else 0
            log = parts[partition]
            log.append((key, value))
            return partition, len(log) - 1

    def end_offset(self, topic: str, partition: int) -> int:
        with self._lock:
            return len(self._logs.get(topic, [[]])[partition]) if topic in self._logs else 0

    def read(self, topic: str, partition: int, offset: int, limit: int) -> list[MemoryRecord]:
        with self._lock:
            log = self._logs[topic][partition]
            chunk = log[offset : offset + limit]
        return [
            MemoryRecord(topic, partition, offset + i, k, v) for i, (k, v) in enumerate(chunk)
        ]

    def records(self, topic: str) -> list[MemoryRecord]:
        """Every record of a topic (all partitions); used to inspect the DLQ."""
        out: list[MemoryRecord] = []
        for p in range(self.partitions(topic)):
            out.extend(self.read(topic, p, 0, 1 << 62))
        return out


class MemorySource:
    """A consumer over :class:`MemoryBus`: owns every partition of its topics."""

    def __init__(self, bus: MemoryBus, topics: Iterable[str]) -> None:
        self.bus = bus
        self.topics = list(topics)
        self._pos: dict[TP, int] = {}
        self._assigned = False
        self._on_assign: Callable[[list[TP]], None] | None = None

    def start(
        self,
        on_assign: Callable[[list[TP]], None],
        on_revoke: Callable[[list[TP]], None],
    ) -> None:
        del on_revoke
        self._on_assign = on_assign

    def _ensure_assigned(self) -> None:
        if self._assigned:
            return
        tps = [(t, p) for t in self.topics for p in range(self.bus.partitions(t))]
        for tp in tps:
            self._pos.setdefault(tp, 0)
        self._assigned = True
        if self._on_assign is not None:
            self._on_assign(tps)

    def seek(self, tp: TP, offset: int | None) -> None:
        self._pos[tp] = offset or 0

    def poll(self, max_records: int, timeout_s: float) -> list[MemoryRecord]:
        del timeout_s  # in-process: never waits
        self._ensure_assigned()
        # Topics in the order given (impressions first), an equal share per partition, so
        # an impression and its feedback usually meet in one batch; leftover room goes to
        # partitions that still have records.
        tps = list(self._pos)
        out: list[MemoryRecord] = []
        share = max(1, max_records // max(1, len(tps)))
        for quota in (share, max_records):
            for tp in tps:
                room = min(quota, max_records - len(out))
                if room <= 0:
                    break
                recs = self.bus.read(tp[0], tp[1], self._pos[tp], room)
                if recs:
                    self._pos[tp] = recs[-1].offset + 1
                    out.extend(recs)
        return out

    def end_offsets(self, tps: list[TP], timeout_s: float = 10.0) -> dict[TP, int]:
        """The log end offset of each partition (the offsets check on assignment)."""
        del timeout_s
        return {tp: self.bus.end_offset(*tp) for tp in tps}

    def highwaters(self, tps: list[TP]) -> dict[TP, int]:
        """The end offset of each partition (always known in process)."""
        return {tp: self.bus.end_offset(*tp) for tp in tps}

    def close(self) -> None:
        self._assigned = False


class MemoryDlq:
    """Dead-letter sink on the memory bus."""

    def __init__(self, bus: MemoryBus, topic: str) -> None:
        self.bus = bus
        self.topic = topic

    def send(self, value: bytes, key: bytes | None = None) -> None:
        self.bus.produce(self.topic, value, key)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None
