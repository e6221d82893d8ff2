"""The ingest runner's storage on the database: its ``IngestStore`` port
(:mod:`armlab.services.ports_consumer`) over the statements of
:mod:`armlab.adapters.db.consumer_store` and :mod:`armlab.adapters.db.partitions`.

:meth:`SqlIngestStore.batch` opens one session and one transaction (``session.begin()``)
and yields a :class:`SqlIngestBatch` bound to it: COMMIT when the block ends, ROLLBACK when it
raises. Every other method is one short transaction of its own. The functions are looked up
on their modules at each call, so a test that replaces one (``consumer_store.write_effects``)
replaces it here too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy.orm import Session

from armlab.adapters.db import consumer_store as consumer_store
from armlab.adapters.db import partitions
from armlab.adapters.db.retry import SqlFailures
from armlab.core.event_effects import BatchState, Effects, ExperimentInfo, PendingFeedback

TP = tuple[str, int]


class SqlIngestBatch:
    """One batch's statements, in the session (and transaction) it was opened with."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def advance_offsets(self, group: str, moves: dict[TP, tuple[int | None, int]]) -> None:
        consumer_store.advance_offsets(self.session, group, moves)

    def lock_ids(self, impression_ids: Iterable[str], impression_events: Iterable[str],
                 feedback_events: Iterable[str]) -> None:
        consumer_store.lock_ids(self.session, consumer_store.lock_keys(
            impression_ids, impression_events, feedback_events))

    def prefetch(self, imp_ids: set[str], imp_events: set[str], fb_events: set[str],
                 arriving: set[str]) -> BatchState:
        return consumer_store.prefetch(self.session, imp_ids, imp_events, fb_events, arriving)

    def load_experiments(self) -> dict[str, ExperimentInfo]:
        return consumer_store.load_experiments(self.session)

    def write_effects(self, group: str, fx: Effects) -> None:
        consumer_store.write_effects(self.session, group, fx)

    def stale_pending(self, experiments: dict[str, ExperimentInfo], now: datetime,
                      grace_s: float) -> list[PendingFeedback]:
        return consumer_store.stale_pending(self.session, experiments, now, grace_s)

    def mark_feedback(self, event_ids: Sequence[str], status: str) -> None:
        consumer_store.mark_feedback(self.session, event_ids, status)

    def upsert_counters(self, group: str, items: Iterable[tuple[tuple[str, int], int]],
                        now: datetime | None = None) -> None:
        consumer_store.upsert_counters(self.session, group, items, now)


class SqlIngestStore(SqlFailures):
    """``SqlIngestStore(session_factory)``: the ingest runner's storage on one database."""

    def __init__(self, session_factory: Callable[[], Session]) -> None:
        self.session_factory = session_factory

    @contextmanager
    def batch(self) -> Iterator[SqlIngestBatch]:
        """BEGIN ... COMMIT around the block (ROLLBACK when it raises)."""
        with self.session_factory() as session, session.begin():
            yield SqlIngestBatch(session)

    def load_offsets(self, group: str, tps: Iterable[TP]) -> dict[TP, int]:
        with self.session_factory() as session:
            return consumer_store.load_offsets(session, group, tps)

    def stored_offsets(self, group: str | None = None) -> list[tuple[str, str, int, int]]:
        with self.session_factory() as session:
            return consumer_store.stored_offsets(session, group)

    def reset_offsets(self, group: str, topics: Sequence[str] | None,
                      to: Mapping[TP, int]) -> int:
        with self.session_factory() as session, session.begin():
            return consumer_store.reset_offsets(session, group, topics, to)

    def report_lag(self, group: str, consumer: str,
                   positions: dict[TP, tuple[int, int | None]], now: datetime) -> None:
        with self.session_factory() as session, session.begin():
            consumer_store.report_lag(session, group, consumer, positions, now)

    def prune_dead_letters(self, before: datetime) -> int:
        with self.session_factory() as session, session.begin():
            return consumer_store.prune_dead_letters(session, before)

    def prune_locks(self, before: datetime) -> int:
        with self.session_factory() as session, session.begin():
            return consumer_store.prune_locks(session, before)

    def maintain_partitions(self, retention_days: float | None) -> partitions.MaintenanceReport:
        with self.session_factory() as session, session.begin():
            return partitions.maintain(session, retention_days=retention_days)

    def oldest_kept(self, now: datetime, retention_days: float | None) -> datetime | None:
        return partitions.horizon(now, retention_days)
