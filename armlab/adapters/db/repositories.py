"""Repositories: how the use cases read and write experiments, audit rows and evidence.

The services talk to these through the protocols of :mod:`armlab.services.ports`; the unit of
work (:class:`armlab.adapters.db.uow.UnitOfWork`) hands out these SQL versions, and tests can
hand out in-memory ones instead. Everything happens in the unit of work's session and
transaction; nothing here commits.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, inspect, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from armlab.adapters.db.interleaving_queries import latest_look, pair_sums, pair_tallies
from armlab.adapters.db.models import AllocationSnapshot, AuditLog, Decision, Experiment
from armlab.adapters.db.queries import (
    arm_sums,
    guardrail_sums,
    guardrail_sums_served_after,
    latest_decisions,
    latest_snapshot,
    sums_served_after,
    unit_covariate_sums,
    unit_guardrail_sums,
    unit_sums,
)
from armlab.adapters.db.records import audit_row, decision_row, experiment_row, snapshot_row
from armlab.adapters.db.segment_queries import logged_contexts, logged_unit_contexts
from armlab.core.evidence import ArmSums
from armlab.core.records import NewAuditEntry, NewDecision, NewExperiment, NewSnapshot
from armlab.core.stats.cuped import CovariateSums
from armlab.core.stats.noninferiority_units import UnitSums
from armlab.core.stats.segments import ContextRow
from armlab.errors import ExperimentExists

_Sel = TypeVar("_Sel", bound=Select[Any])


def changed_unflushed(obj: object, attribute: str) -> bool:
    """True when ``obj`` is a persistent ORM object (stored, in a session) whose ``attribute``
    was changed in memory and not flushed yet; False for objects that were never stored (a
    new object, or one held by an in-memory unit of work)."""
    state = inspect(obj)
    return bool(state.persistent and state.attrs[attribute].history.has_changes())


def lock_experiment(stmt: _Sel) -> _Sel:
    """``stmt`` (a select of experiments) that also locks the rows it reads until the
    transaction ends: ``SELECT ... FOR NO KEY UPDATE`` on PostgreSQL, the lock an UPDATE of a
    non-key column takes (two such locks exclude each other, while inserts of rows that
    reference the experiment, which take FOR KEY SHARE, do not wait); SQLite, which
    serialises writers anyway, renders nothing. Callers that read an experiment's previous
    state (its status, its last recorded look of the sequential test) and write from it take
    it first, so two of them cannot interleave."""
    return stmt.with_for_update(of=Experiment, key_share=True)


class SqlExperiments:
    """Experiments with their arms."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, key: str, *, for_update: bool = False) -> Experiment | None:
        """One experiment with its arms. ``for_update``: lock its row until the transaction
        ends (see :func:`lock_experiment`)."""
        stmt = (select(Experiment).where(Experiment.key == key)
                .options(selectinload(Experiment.arms)))
        if for_update:
            stmt = lock_experiment(stmt)
        return self.session.scalars(stmt).one_or_none()

    def list(self, status: str | None = None) -> list[Experiment]:
        """Newest first, optionally only those with ``status``."""
        stmt = select(Experiment).options(selectinload(Experiment.arms)).order_by(
            Experiment.id.desc()
        )
        if status is not None:
            stmt = stmt.where(Experiment.status == status)
        return list(self.session.scalars(stmt))

    def add(self, new: NewExperiment) -> Experiment:
        """Insert it (and its arms) now; ExperimentExists when another writer took the key."""
        experiment = experiment_row(new)
        self.session.add(experiment)
        try:
            self.session.flush()
        except IntegrityError as exc:  # lost a race with another create of the same key
            self.session.rollback()
            raise ExperimentExists(
                f"an experiment with key {experiment.key!r} already exists"
            ) from exc
        return experiment

    def unflushed_change(self, record: object, attribute: str) -> bool:
        return changed_unflushed(record, attribute)

    def keys_starting_with(self, prefix: str) -> set[str]:
        return set(self.session.scalars(
            select(Experiment.key).where(Experiment.key.like(f"{prefix}%"))
        ))


class SqlAuditTrail:
    """The audit log: one row per state change or automated decision."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, row: NewAuditEntry) -> None:
        self.session.add(audit_row(row))

    def for_experiment(self, experiment_id: int) -> list[AuditLog]:
        """Oldest first."""
        return list(self.session.scalars(
            select(AuditLog).where(AuditLog.experiment_id == experiment_id).order_by(AuditLog.id)
        ))


class SqlEvidence:
    """What the statistics read and write: per-arm totals, snapshots, decision rows."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def arm_sums(self, experiment_id: int) -> dict[str, ArmSums]:
        return arm_sums(self.session, experiment_id)

    def sums_served_after(self, experiment_id: int, cutoff: datetime) -> dict[str, ArmSums]:
        return sums_served_after(self.session, experiment_id, cutoff)

    def unit_sums(self, experiment_id: int, cutoff: datetime | None) -> dict[str, ArmSums]:
        return unit_sums(self.session, experiment_id, cutoff)

    def unit_covariate_sums(self, experiment_id: int, cutoff: datetime | None, *,
                            pre_from: datetime, pre_to: datetime, covariate: str
                            ) -> dict[str, CovariateSums]:
        return unit_covariate_sums(self.session, experiment_id, cutoff, pre_from=pre_from,
                                   pre_to=pre_to, covariate=covariate)

    def guardrail_sums(self, experiment_id: int) -> dict[str, dict[str, ArmSums]]:
        return guardrail_sums(self.session, experiment_id)

    def guardrail_sums_served_after(self, experiment_id: int, cutoff: datetime
                                    ) -> dict[str, dict[str, ArmSums]]:
        return guardrail_sums_served_after(self.session, experiment_id, cutoff)

    def unit_guardrail_sums(self, experiment_id: int, cutoff: datetime | None
                            ) -> dict[str, dict[str, UnitSums]]:
        return unit_guardrail_sums(self.session, experiment_id, cutoff)

    def latest_snapshot(self, experiment_id: int) -> AllocationSnapshot | None:
        return latest_snapshot(self.session, experiment_id)

    def latest_policy_snapshot(self, experiment_id: int, policy_name: str
                               ) -> AllocationSnapshot | None:
        return latest_snapshot(self.session, experiment_id, policy_name)

    def latest_decisions(self, experiment_id: int) -> dict[str, Decision]:
        return latest_decisions(self.session, experiment_id)

    def add_decision(self, row: NewDecision) -> None:
        self.session.add(decision_row(row))

    def add_snapshot(self, row: NewSnapshot) -> None:
        self.session.add(snapshot_row(row))

    def interleaving_sums(self, experiment_id: int, aggregate: str
                          ) -> tuple[float, dict[tuple[str, str], tuple[float, float]]]:
        return pair_sums(self.session, experiment_id, aggregate)

    def interleaving_tallies(self, experiment_id: int
                             ) -> dict[tuple[str, str], tuple[int, int, int, int, int]]:
        return pair_tallies(self.session, experiment_id)

    def latest_look(self, experiment_id: int, row_key: str) -> Decision | None:
        return latest_look(self.session, experiment_id, row_key)

    def logged_contexts(self, experiment_id: int, cutoff: datetime) -> list[ContextRow]:
        return logged_contexts(self.session, experiment_id, cutoff)

    def logged_unit_contexts(self, experiment_id: int, cutoff: datetime
                             ) -> list[tuple[str, ContextRow]]:
        return logged_unit_contexts(self.session, experiment_id, cutoff)
