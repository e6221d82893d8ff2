"""The assignment cache's storage on the database: its ports
(:mod:`armlab.services.ports_assignment`).

Each :meth:`SqlAssignmentStore.reads` is one session (closed, never committed: reads only);
each :meth:`SqlAssignmentStore.store_sticky` one transaction, ``INSERT ... ON CONFLICT DO
NOTHING`` on (experiment_id, unit_id), so the first writer across processes wins.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, selectinload

from armlab.adapters.db.models import AllocationSnapshot, Experiment, UnitAssignment
from armlab.adapters.db.queries import latest_snapshot
from armlab.adapters.db.retry import SqlFailures

StickyRow = tuple[int, str, str, float]


class SqlAssignmentReads:
    """The reads of one load or refresh, in one session."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def experiment(self, key: str) -> Experiment | None:
        return self.session.scalar(
            select(Experiment).options(selectinload(Experiment.arms))
            .where(Experiment.key == key))

    def experiments(self, ids: Sequence[int]) -> list[Experiment]:
        return list(self.session.scalars(
            select(Experiment).options(selectinload(Experiment.arms))
            .where(Experiment.id.in_(ids))).all())

    def heads(self) -> list[tuple[int, str, int]]:
        return [(int(i), str(k), int(v)) for i, k, v in self.session.execute(
            select(Experiment.id, Experiment.key, Experiment.version))]

    def latest_snapshot(self, experiment_id: int) -> AllocationSnapshot | None:
        return latest_snapshot(self.session, experiment_id)

    def latest_snapshot_ids(self) -> dict[int, int]:
        return {int(e): int(s) for e, s in self.session.execute(
            select(AllocationSnapshot.experiment_id, func.max(AllocationSnapshot.id))
            .group_by(AllocationSnapshot.experiment_id))}

    def snapshots(self, ids: Sequence[int]) -> dict[int, AllocationSnapshot]:
        return {s.experiment_id: s for s in self.session.scalars(
            select(AllocationSnapshot).where(AllocationSnapshot.id.in_(ids)))}

    def sticky(self, experiment_ids: Sequence[int], *,
               since: datetime | None = None) -> Iterable[StickyRow]:
        q = select(
            UnitAssignment.experiment_id,
            UnitAssignment.unit_id,
            UnitAssignment.arm_key,
            UnitAssignment.propensity,
        ).where(UnitAssignment.experiment_id.in_(experiment_ids))
        if since is not None:
            q = q.where(UnitAssignment.assigned_at >= since)
        return [(e, u, a, float(p)) for e, u, a, p in self.session.execute(q)]


class SqlAssignmentStore(SqlFailures):
    """``SqlAssignmentStore(session_factory)``: the assignment cache's storage."""

    def __init__(self, session_factory: Callable[[], Session]) -> None:
        self.session_factory = session_factory

    @contextmanager
    def reads(self) -> Iterator[SqlAssignmentReads]:
        with self.session_factory() as session:
            yield SqlAssignmentReads(session)

    def store_sticky(self, rows: list[dict[str, Any]]) -> None:
        with self.session_factory() as session:
            dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
            stmt = dialect.insert(UnitAssignment).on_conflict_do_nothing(
                index_elements=["experiment_id", "unit_id"]
            )
            session.execute(stmt, rows)
            session.commit()
