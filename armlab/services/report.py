"""What an experiment's report shows, read once from the database as plain values.

A read model: it queries the unit of work's session directly for the snapshots, impressions,
decisions and audit rows over time, and adds the experiment's results.
:mod:`armlab.entrypoints.report` renders them as HTML. No writes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select

from armlab.adapters.db.models import AllocationSnapshot, AuditLog, Decision, Experiment, Impression
from armlab.adapters.db.uow import UnitOfWork
from armlab.core.clock import as_utc_or_none
from armlab.services.registry import get_experiment
from armlab.services.results import build_results


@dataclass
class ReportData:
    """Everything the page shows, read once from the database (plain Python values)."""

    key: str
    name: str
    description: str
    status: str
    policy: str
    control: str
    shipped_arm: str | None
    arms: list[dict[str, Any]]
    sequential: dict[str, Any]
    created_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    snapshots: list[tuple[datetime, dict[str, float]]] = field(default_factory=list)
    impressions: list[tuple[datetime, str, float]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    extra_sections: list[tuple[str, str]] = field(default_factory=list)


def collect(uow: UnitOfWork, experiment: Experiment) -> ReportData:
    """Read the report's data for ``experiment`` (no writes)."""
    session = uow.session
    eid = experiment.id
    snaps = session.execute(
        select(AllocationSnapshot.created_at, AllocationSnapshot.weights)
        .where(AllocationSnapshot.experiment_id == eid)
        .order_by(AllocationSnapshot.id)
    ).all()
    imps = session.execute(
        select(Impression.served_at, Impression.arm_key, Impression.reward)
        .where(Impression.experiment_id == eid)
        .order_by(Impression.served_at, Impression.impression_id)
    ).all()
    decs = session.scalars(
        select(Decision).where(Decision.experiment_id == eid).order_by(Decision.id)
    ).all()
    audit = session.scalars(
        select(AuditLog).where(AuditLog.experiment_id == eid).order_by(AuditLog.id)
    ).all()
    try:
        results = build_results(uow, experiment)
    except Exception as exc:  # noqa: BLE001 - the page still renders without the summary
        results = {"error": str(exc)}
    return ReportData(
        key=experiment.key,
        name=experiment.name,
        description=experiment.description or "",
        status=experiment.status,
        policy=experiment.policy_name,
        control=experiment.control_arm_key,
        shipped_arm=experiment.shipped_arm_key,
        arms=[{"key": a.key, "control": a.is_control, "variant": a.variant}
              for a in experiment.arms],
        sequential=dict(experiment.sequential or {}),
        created_at=as_utc_or_none(experiment.created_at),
        started_at=as_utc_or_none(experiment.started_at),
        ended_at=as_utc_or_none(experiment.ended_at),
        snapshots=[(as_utc_or_none(t), {k: float(v) for k, v in (w or {}).items()})  # type: ignore[misc]
                   for t, w in snaps],
        impressions=[(as_utc_or_none(t), str(a), float(r)) for t, a, r in imps],  # type: ignore[misc]
        decisions=[
            {"at": as_utc_or_none(d.at), "arm": d.arm_key, "decision": d.decision,
             "estimate": d.estimate, "p_value": d.p_value, "ci_low": d.ci_low,
             "ci_high": d.ci_high, "n_control": d.n_control, "n_treatment": d.n_treatment,
             "guardrails": list(((d.evidence or {}).get("entry") or {}).get("guardrails")
                                or [])}
            for d in decs
        ],
        audit=[
            {"at": as_utc_or_none(a.at), "actor": a.actor, "action": a.action, "reason": a.reason,
             "before": a.before, "after": a.after, "evidence": a.evidence}
            for a in audit
        ],
        results=results,
    )


def collect_by_key(uow: UnitOfWork, key: str) -> ReportData:
    """:func:`collect` for the experiment ``key`` (ExperimentNotFound if unknown)."""
    return collect(uow, get_experiment(uow, key=key))


class ReportReads:
    """The report's read use case in its own unit of work (read only);
    :attr:`armlab.bootstrap.Services.reports` wires it."""

    def __init__(self, uow_factory: Callable[[], Any]) -> None:
        self._uow = uow_factory

    def collect(self, key: str) -> ReportData:
        """What the report of experiment ``key`` shows (ExperimentNotFound if unknown)."""
        with self._uow() as uow:
            return collect_by_key(uow, key)
