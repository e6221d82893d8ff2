"""The dashboard's reads (:class:`SqlDashboardQueries`, the unit of work's ``dashboard``):
what the experiment list, an experiment's page and its charts read, as plain values.

The services shape them into view models (:mod:`armlab.services.dashboard`); the chart series
and their dialect-specific SQL live in :mod:`armlab.adapters.db.chart_queries`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from armlab.adapters.db.chart_queries import chart_series
from armlab.adapters.db.consumer_store import read_counters, read_dead_letters
from armlab.adapters.db.models import (
    AllocationSnapshot,
    ConsumerLag,
    ConsumerOffset,
    Decision,
    Impression,
)
from armlab.adapters.db.queries import arm_totals
from armlab.core.clock import as_utc, as_utc_or_none
from armlab.core.evidence import ArmSums
from armlab.core.readings import ChartSeries, ConsumerPosition, LatestDecision


class SqlDashboardQueries:
    """Implements :class:`armlab.services.ports.DashboardQueries` in the unit of work's
    session (reads only)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def impressions_by_experiment(self) -> dict[int, int]:
        """Impressions per experiment id (the ``arm_stats`` totals of its arms)."""
        out: dict[int, int] = {}
        for (eid, _), s in arm_totals(self.session).items():
            out[eid] = out.get(eid, 0) + int(s.n)
        return out

    def latest_decisions(self) -> dict[int, dict[str, LatestDecision]]:
        """Every experiment's newest decision per arm: experiment id -> arm -> decision."""
        latest = (
            select(func.max(Decision.id).label("id"))
            .group_by(Decision.experiment_id, Decision.arm_key)
            .subquery()
        )
        out: dict[int, dict[str, LatestDecision]] = {}
        for d in self.session.scalars(select(Decision).join(latest, Decision.id == latest.c.id)):
            srm = bool((d.evidence or {}).get("srm", {}).get("mismatch"))
            out.setdefault(d.experiment_id, {})[d.arm_key] = LatestDecision(d.decision, srm)
        return out

    def last_snapshot_times(self) -> dict[int, datetime]:
        """Experiment id -> when its newest allocation snapshot was written."""
        return {
            int(eid): as_utc(at) for eid, at in self.session.execute(
                select(AllocationSnapshot.experiment_id, func.max(AllocationSnapshot.created_at))
                .group_by(AllocationSnapshot.experiment_id))
        }

    def raw_arm_sums(self, experiment_id: int, matured_before: datetime) -> tuple[
            dict[str, ArmSums], dict[str, float]]:
        """Per-arm impressions and reward sums, and impressions served at or before
        ``matured_before``, scanned from ``impressions`` (the benchmark's baseline)."""
        rows = self.session.execute(
            select(Impression.arm_key, func.count(),
                   func.coalesce(func.sum(Impression.reward), 0.0),
                   func.coalesce(func.sum(Impression.reward * Impression.reward), 0.0),
                   func.count().filter(Impression.served_at <= matured_before))
            .where(Impression.experiment_id == experiment_id).group_by(Impression.arm_key)
        ).all()
        sums = {str(a): ArmSums(n=float(n), reward_sum=float(s), reward_sumsq=float(q))
                for a, n, s, q, _ in rows}
        matured = {str(a): float(m) for a, _, _, _, m in rows}
        return sums, matured

    def consumer_positions(self) -> list[ConsumerPosition]:
        """Per (group, topic, partition), in that order: the stored offset and the newest
        lag report."""
        lag = {
            (g, t, int(p)): (hw, lg, who, as_utc(at))
            for g, t, p, hw, lg, who, at in self.session.execute(
                select(ConsumerLag.group_id, ConsumerLag.topic, ConsumerLag.partition,
                       ConsumerLag.high_watermark, ConsumerLag.lag, ConsumerLag.consumer,
                       ConsumerLag.reported_at))
        }
        out = []
        for g, t, p, o, u in self.session.execute(
                select(ConsumerOffset.group_id, ConsumerOffset.topic, ConsumerOffset.partition,
                       ConsumerOffset.next_offset, ConsumerOffset.updated_at)
                .order_by(ConsumerOffset.group_id, ConsumerOffset.topic,
                          ConsumerOffset.partition)):
            hw, lg, who, at = lag.get((g, t, int(p)), (None, None, None, None))
            out.append(ConsumerPosition(
                group=g, topic=t, partition=int(p), next_offset=int(o),
                updated_at=as_utc_or_none(u),
                high_watermark=None if hw is None else int(hw),
                lag=None if lg is None else int(lg), consumer=who, reported_at=at))
        return out

    def dead_letters_since(self, since: datetime) -> dict[str, int]:
        """Dead letters by reason in the per-minute buckets from ``since`` on."""
        return read_dead_letters(self.session, since)

    def ingest_counters(self) -> dict[str, int]:
        """The consumers' outcome counters by reason, all time."""
        return read_counters(self.session)

    def chart_series(self, experiment_id: int, *, source: str, max_points: int,
                     sql_json: bool | None = None) -> ChartSeries:
        """See :func:`armlab.adapters.db.chart_queries.chart_series`."""
        return chart_series(self.session, experiment_id, source=source,
                            max_points=max_points, sql_json=sql_json)
