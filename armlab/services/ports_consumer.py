"""What the ingest runner needs from its transports and from storage, as protocols.

* :class:`Source` / :class:`DlqSink`: the log it reads and the dead-letter topic it writes
  (Kafka, or the in-process bus: :mod:`armlab.adapters.kafka`);
* :class:`IngestStore`: the offsets, the batch transaction and the upkeep of the tables
  (:class:`armlab.adapters.db.consumer_batches.SqlIngestStore` on the database, wired in
  :mod:`armlab.bootstrap`);
* :class:`IngestBatch`: what one batch does inside its transaction. ``with store.batch() as
  tx:`` is BEGIN; leaving the block normally is COMMIT, leaving it with an error ROLLBACK, so
  the runner's exactly-once order (fence and advance offsets, lock ids, prefetch, handle,
  dead letters, write effects, commit) stays one transaction whatever the storage.

The storage side tells the runner that a batch lost a race with
:class:`armlab.core.fencing.Fenced` and :class:`armlab.core.fencing.StoredRowsDiffer`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Protocol, runtime_checkable

from armlab.core.event_effects import (
    BatchState,
    Effects,
    ExperimentInfo,
    PendingFeedback,
    RecordLike,
)
from armlab.core.fencing import TP
from armlab.services.ports import StorageFailures


class Source(Protocol):
    def start(
        self, on_assign: Callable[[list[TP]], None], on_revoke: Callable[[list[TP]], None]
    ) -> None: ...
    def poll(self, max_records: int, timeout_s: float) -> Sequence[RecordLike]: ...
    def seek(self, tp: TP, offset: int | None) -> None: ...
    def highwaters(self, tps: list[TP]) -> dict[TP, int]: ...
    def end_offsets(self, tps: list[TP], timeout_s: float = 10.0) -> dict[TP, int]: ...
    def close(self) -> None: ...


class DlqSink(Protocol):
    def send(self, value: bytes, key: bytes | None = None) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class MaintenanceResult(Protocol):
    """What one partition-maintenance pass did."""

    created: list[str]
    dropped: list[str]
    purged: dict[str, int]

    def lines(self) -> list[str]: ...


class IngestBatch(Protocol):
    """One batch's reads and writes, all in the transaction of :meth:`IngestStore.batch`."""

    def advance_offsets(self, group: str, moves: dict[TP, tuple[int | None, int]]) -> None:
        """Move each partition from its start to its next offset; raise ``Fenced`` when
        another consumer moved one first."""
    def lock_ids(self, impression_ids: Iterable[str], impression_events: Iterable[str],
                 feedback_events: Iterable[str]) -> None:
        """Serialise with every other batch touching one of these ids until the commit."""
    def prefetch(self, imp_ids: set[str], imp_events: set[str], fb_events: set[str],
                 arriving: set[str]) -> BatchState: ...
    def load_experiments(self) -> dict[str, ExperimentInfo]: ...
    def write_effects(self, group: str, fx: Effects) -> None: ...
    def stale_pending(self, experiments: dict[str, ExperimentInfo], now: datetime,
                      grace_s: float) -> list[PendingFeedback]: ...
    def mark_feedback(self, event_ids: Sequence[str], status: str) -> None: ...
    def upsert_counters(self, group: str, items: Iterable[tuple[tuple[str, int], int]],
                        now: datetime | None = None) -> None: ...


@runtime_checkable
class IngestStore(StorageFailures, Protocol):
    """Storage of the ingest runner. Each method but :meth:`batch` is its own transaction."""

    def batch(self) -> AbstractContextManager[IngestBatch]: ...
    def load_offsets(self, group: str, tps: Iterable[TP]) -> dict[TP, int]: ...
    def stored_offsets(self, group: str | None = None) -> list[tuple[str, str, int, int]]: ...
    def reset_offsets(self, group: str, topics: Sequence[str] | None,
                      to: Mapping[TP, int]) -> int: ...
    def report_lag(self, group: str, consumer: str,
                   positions: dict[TP, tuple[int, int | None]], now: datetime) -> None: ...
    def prune_dead_letters(self, before: datetime) -> int: ...
    def prune_locks(self, before: datetime) -> int: ...
    def maintain_partitions(self, retention_days: float | None) -> MaintenanceResult: ...
    def oldest_kept(self, now: datetime, retention_days: float | None) -> datetime | None:
        """Oldest event time the retention keeps (None: everything is kept)."""
