"""What an experiment's report shows, read once from storage as plain values.

A read model: it reads the snapshots, the decisions and the impressions over time through the
unit of work's ``report`` port (:class:`armlab.services.ports.ReportQueries`), the audit trail,
and adds the experiment's results. The impressions come aggregated per time bucket and arm
(at most about :data:`MAX_REWARD_BUCKETS` buckets, however many impressions there are).
:mod:`armlab.entrypoints.report` renders them as HTML. No writes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from armlab.core.clock import as_utc_or_none
from armlab.core.readings import RewardBucket
from armlab.core.records import ExperimentRecord
from armlab.services.interleaving_evaluation import ROW_KEY, policy_label
from armlab.services.ports import ReadsUnitOfWork
from armlab.services.registry import get_experiment
from armlab.services.results import build_results

#: The reward chart's resolution: the impressions are summed per arm in this many equal time
#: buckets (about one per pixel of the chart), so the report reads a bounded number of rows.
MAX_REWARD_BUCKETS = 1000


@dataclass
class ReportData:
    """Everything the page shows, read once from the database (plain Python values).

    ``impressions``: per time bucket and arm, ``(the last impression's serving time, arm,
    impressions, reward sum)`` in time order (one row per impression where no two of an
    arm's share a bucket); ``first_impression_at``: when the first one was served.
    """

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
    impressions: list[RewardBucket] = field(default_factory=list)
    first_impression_at: datetime | None = None
    decisions: list[dict[str, Any]] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    extra_sections: list[tuple[str, str]] = field(default_factory=list)
    #: interleaving experiments: (time, the pairs of that recorded look) per look
    interleaving_looks: list[tuple[datetime, list[dict[str, Any]]]] = field(
        default_factory=list)


def _decision_row(d: dict[str, Any]) -> dict[str, Any]:
    """A stored decision row as the report shows it: its guardrail entries brought out."""
    evidence = d.get("evidence") or {}
    row = {k: v for k, v in d.items() if k != "evidence"}
    row["guardrails"] = list((evidence.get("entry") or {}).get("guardrails") or [])
    return row


def collect(uow: ReadsUnitOfWork, experiment: ExperimentRecord) -> ReportData:
    """Read the report's data for ``experiment`` (no writes)."""
    reads = uow.report
    eid = experiment.id
    snapshots = reads.snapshots(eid)
    first_at, buckets = reads.reward_buckets(eid, MAX_REWARD_BUCKETS)
    stored = reads.decisions(eid)
    decisions = [_decision_row(d) for d in stored if d.get("arm") != ROW_KEY]
    looks = [(d["at"], list(((d.get("evidence") or {}).get("interleaving") or {})
                            .get("pairs") or [])) for d in stored if d.get("arm") == ROW_KEY]
    audit = uow.audit.for_experiment(eid)
    try:  # last: a failure here (an aborted transaction on PostgreSQL) spoils no read above
        results = build_results(uow, experiment)
    except Exception as exc:  # noqa: BLE001 - the page still renders without the summary
        results = {"error": str(exc)}
    return ReportData(
        key=experiment.key,
        name=experiment.name,
        description=experiment.description or "",
        status=experiment.status,
        policy=policy_label(experiment),
        control=experiment.control_arm_key,
        shipped_arm=experiment.shipped_arm_key,
        arms=[{"key": a.key, "control": a.is_control, "variant": a.variant}
              for a in experiment.arms],
        sequential=dict(experiment.sequential or {}),
        created_at=as_utc_or_none(experiment.created_at),
        started_at=as_utc_or_none(experiment.started_at),
        ended_at=as_utc_or_none(experiment.ended_at),
        snapshots=snapshots,
        impressions=buckets,
        first_impression_at=first_at,
        decisions=decisions,
        audit=[
            {"at": as_utc_or_none(a.at), "actor": a.actor, "action": a.action, "reason": a.reason,
             "before": a.before, "after": a.after, "evidence": a.evidence}
            for a in audit
        ],
        results=results,
        interleaving_looks=looks,
    )


def collect_by_key(uow: ReadsUnitOfWork, key: str) -> ReportData:
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
