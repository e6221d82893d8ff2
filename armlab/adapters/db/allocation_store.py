"""The allocator's storage on the database: its ports (:mod:`armlab.services.ports_allocation`)
over the unit of work.

:class:`AllocationUnitOfWork` is a :class:`~armlab.adapters.db.uow.UnitOfWork` that can also
take an experiment's row lock (:func:`~armlab.adapters.db.repositories.lock_experiment`) and
read the immature part of its statistics, through the (experiment_id, arm_key, served_at)
index of ``impressions``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from armlab.adapters.db.contextual_queries import ContextSums, matured_context_sums
from armlab.adapters.db.models import Experiment, Impression
from armlab.adapters.db.repositories import lock_experiment
from armlab.adapters.db.retry import SqlFailures
from armlab.adapters.db.uow import UnitOfWork


class AllocationUnitOfWork(UnitOfWork):
    """One experiment's transaction in an allocation pass."""

    def __enter__(self) -> AllocationUnitOfWork:
        super().__enter__()
        return self

    def lock_experiment(self, experiment_id: int) -> Experiment | None:
        """The experiment with its arms, locked until the commit (``FOR NO KEY UPDATE``)."""
        return self.session.scalar(lock_experiment(
            select(Experiment)
            .options(selectinload(Experiment.arms))
            .where(Experiment.id == experiment_id)
        ))

    def immature_sums(self, experiment_id: int, cutoff: datetime
                      ) -> dict[str, tuple[float, float, float]]:
        """Per arm: (n, reward sum, reward sum of squares) of impressions served after
        ``cutoff``."""
        rows = self.session.execute(
            select(
                Impression.arm_key,
                func.count().label("n"),
                func.coalesce(func.sum(Impression.reward), 0.0).label("s"),
                func.coalesce(func.sum(Impression.reward * Impression.reward), 0.0).label("q"),
            )
            .where(Impression.experiment_id == experiment_id, Impression.served_at > cutoff)
            .group_by(Impression.arm_key)
        )
        return {row.arm_key: (float(row.n), float(row.s), float(row.q)) for row in rows}

    def matured_context_sums(self, experiment_id: int, cutoff: datetime,
                             arms: Sequence[str], features: Sequence[str]
                             ) -> Iterator[ContextSums]:
        """The matured impressions of ``arms`` by arm and declared feature values
        (:mod:`armlab.adapters.db.contextual_queries`)."""
        return matured_context_sums(self.session, experiment_id, cutoff, arms, features)


class SqlAllocationStore(SqlFailures):
    """``SqlAllocationStore(session_factory)``: the allocator's storage on one database."""

    def __init__(self, session_factory: Callable[[], Session]) -> None:
        self.session_factory = session_factory

    def active_experiment_ids(self, statuses: Sequence[str]) -> list[int]:
        with self.session_factory() as session:
            return list(session.scalars(
                select(Experiment.id)
                .where(Experiment.status.in_(statuses))
                .order_by(Experiment.id)
            ))

    def unit(self) -> AllocationUnitOfWork:
        return AllocationUnitOfWork(self.session_factory)
