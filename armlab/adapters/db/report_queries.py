"""An experiment's history as the report and off-policy evaluation read it, as plain values.

* :class:`SqlReportQueries` (the unit of work's ``report``): the allocation snapshots and the
  decision rows in order, and the impressions aggregated in SQL per time bucket and arm (a
  bounded number of rows however many impressions there are);
* :class:`SqlImpressionLog` (the unit of work's ``impression_log``): the logged impressions
  with their propensities, the input of off-policy evaluation.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from armlab.adapters.db.chart_queries import epoch_bin, time_bounds
from armlab.adapters.db.models import AllocationSnapshot, Decision, Impression
from armlab.core.clock import as_utc
from armlab.core.readings import LoggedRow, RewardBucket


class SqlReportQueries:
    """Implements :class:`armlab.services.ports.ReportQueries` in the unit of work's session."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def snapshots(self, experiment_id: int) -> list[tuple[datetime, dict[str, float]]]:
        """Every allocation snapshot, oldest first: (when, weight by arm)."""
        rows = self.session.execute(
            select(AllocationSnapshot.created_at, AllocationSnapshot.weights)
            .where(AllocationSnapshot.experiment_id == experiment_id)
            .order_by(AllocationSnapshot.id)
        )
        return [(as_utc(t), {k: float(v) for k, v in (w or {}).items()}) for t, w in rows]

    def reward_buckets(self, experiment_id: int, max_buckets: int) -> tuple[
            datetime | None, list[RewardBucket]]:
        """The first impression's serving time, and the impressions counted and their rewards
        summed per arm in each of at most about ``max_buckets`` equal time buckets spanning
        them (one grouped scan; each bucket is dated by its last impression), in time order.
        Where no two impressions of an arm share a bucket, that is every impression."""
        where = Impression.experiment_id == experiment_id
        bounds = time_bounds(self.session, Impression.served_at, where)
        if bounds is None:
            return None, []
        lo, hi = bounds
        width = max((hi - lo).total_seconds() / max_buckets, 1e-3)
        b = epoch_bin(self.session, Impression.served_at, width).label("b")
        rows = self.session.execute(
            select(b, Impression.arm_key, func.count(),
                   func.coalesce(func.sum(Impression.reward), 0.0),
                   func.max(Impression.served_at))
            .where(where).group_by(b, Impression.arm_key).order_by(b, Impression.arm_key)
        )
        return lo, [(as_utc(last), str(arm), int(n), float(r)) for _, arm, n, r, last in rows]

    def decisions(self, experiment_id: int) -> list[dict[str, Any]]:
        """Every sequential-test decision row, oldest first, with its evidence."""
        rows = self.session.scalars(
            select(Decision).where(Decision.experiment_id == experiment_id).order_by(Decision.id)
        )
        return [
            {"at": as_utc(d.at), "arm": d.arm_key, "decision": d.decision,
             "estimate": d.estimate, "p_value": d.p_value, "ci_low": d.ci_low,
             "ci_high": d.ci_high, "n_control": d.n_control, "n_treatment": d.n_treatment,
             "evidence": d.evidence}
            for d in rows
        ]


class SqlImpressionLog:
    """Implements :class:`armlab.services.ports.ImpressionLog` in the unit of work's session."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def logged(self, experiment_id: int) -> list[LoggedRow]:
        """The experiment's impressions in serving order: (arm, reward, propensity, served
        at, context)."""
        rows = self.session.execute(
            select(Impression.arm_key, Impression.reward, Impression.propensity,
                   Impression.served_at, Impression.context)
            .where(Impression.experiment_id == experiment_id)
            .order_by(Impression.served_at, Impression.impression_id)
        )
        return [(str(a), float(r), float(p), as_utc(t), ctx) for a, r, p, t, ctx in rows]
