"""Read queries several services share, each written once.

* :func:`arm_totals` / :func:`arm_sums`: the per-arm sufficient statistics, i.e. the
  ``arm_stats`` shards (one per Kafka partition) summed per arm;
* :func:`sums_served_after`: the same sums over the impressions served after a time (what
  is still inside its attribution window, or was logged after a stop), from ``impressions``;
* :func:`unit_sums`: the sums with one term per randomisation unit (``unit: user``), each
  unit's rewards added up, over the impressions served up to a time;
* :func:`unit_covariate_sums`: per arm the CUPED covariate sums of those units (``unit: user``
  with ``sequential.cuped``): X_u = the unit's behaviour over the impressions of any other
  experiment served in a pre-period;
* :func:`guardrail_sums` / :func:`guardrail_sums_served_after`: the same per arm and
  guardrail metric, from ``guardrail_stats`` and from the impressions' ``guardrail_values``;
* :func:`unit_guardrail_sums`: the guardrail sums with one term per unit (``unit: user``), from
  the impressions' ``guardrail_values``, over the impressions served up to a time;
* :func:`latest_snapshot`: an experiment's newest allocation snapshot;
* :func:`latest_decisions`: the newest sequential decision row of each arm.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, cast, func, select
from sqlalchemy.orm import Session, aliased

from armlab.adapters.db.models import (
    AllocationSnapshot,
    Arm,
    ArmStats,
    Decision,
    GuardrailStats,
    Impression,
)
from armlab.core.evidence import FIELDS, ArmSums
from armlab.core.stats.cuped import CovariateSums
from armlab.core.stats.noninferiority_units import UnitSums


def arm_totals(
    session: Session, experiment_id: int | None = None
) -> dict[tuple[int, str], ArmSums]:
    """``arm_stats`` summed over partitions, keyed by (experiment id, arm key)."""
    cols = [func.coalesce(func.sum(getattr(ArmStats, f)), 0) for f in FIELDS]
    q = select(ArmStats.experiment_id, ArmStats.arm_key, *cols).group_by(
        ArmStats.experiment_id, ArmStats.arm_key
    )
    if experiment_id is not None:
        q = q.where(ArmStats.experiment_id == experiment_id)
    out: dict[tuple[int, str], ArmSums] = {}
    for exp_id, key, *vals in session.execute(q):
        out[(int(exp_id), str(key))] = ArmSums(*(float(v) for v in vals))
    return out


def arm_sums(session: Session, experiment_id: int) -> dict[str, ArmSums]:
    """The experiment's per-arm totals by arm key (arms without data are absent)."""
    return {arm: s for (_, arm), s in arm_totals(session, experiment_id).items()}


def sums_served_after(
    session: Session, experiment_id: int, cutoff: datetime
) -> dict[str, ArmSums]:
    """Per-arm sums (the ``ArmSums`` fields) over impressions with ``served_at > cutoff``;
    read through the (experiment_id, arm_key, served_at) index."""
    i = Impression
    p, r = i.propensity, i.reward
    q = (
        select(
            i.arm_key, func.count(), func.sum(r), func.sum(r * r), func.sum(1.0 / p),
            func.sum(r / p), func.sum(r * r / (p * p)), func.sum(1.0 / (p * p)),
            func.sum(i.feedback_count),
        )
        .where(i.experiment_id == experiment_id, i.served_at > cutoff)
        .group_by(i.arm_key)
    )
    return {str(k): ArmSums(*(float(v or 0.0) for v in vals)) for k, *vals in session.execute(q)}


def unit_sums(
    session: Session, experiment_id: int, cutoff: datetime | None
) -> dict[str, ArmSums]:
    """Per-arm sums with one term per unit: n = units, reward_sum = sum_u Y_u,
    reward_sumsq = sum_u Y_u², ipw_* = the same with the unit's (sticky) propensity p_u,
    feedback_n = feedback events; Y_u = the unit's total reward over its impressions served
    up to ``cutoff`` (all when None). A full scan of the experiment's impressions."""
    i = Impression
    per_unit = select(
        i.arm_key.label("arm"), func.sum(i.reward).label("y"),
        func.max(i.propensity).label("p"), func.sum(i.feedback_count).label("f"),
    ).where(i.experiment_id == experiment_id)
    if cutoff is not None:
        per_unit = per_unit.where(i.served_at <= cutoff)
    u = per_unit.group_by(i.arm_key, i.unit_id).subquery()
    y, p = u.c.y, u.c.p
    q = select(
        u.c.arm, func.count(), func.sum(y), func.sum(y * y), func.sum(1.0 / p),
        func.sum(y / p), func.sum(y * y / (p * p)), func.sum(1.0 / (p * p)), func.sum(u.c.f),
    ).group_by(u.c.arm)
    return {str(k): ArmSums(*(float(v or 0.0) for v in vals)) for k, *vals in session.execute(q)}


def unit_covariate_sums(
    session: Session, experiment_id: int, cutoff: datetime | None, *, pre_from: datetime,
    pre_to: datetime, covariate: str,
) -> dict[str, CovariateSums]:
    """Per arm the :class:`CovariateSums` of the units :func:`unit_sums` analyses (same Y_u,
    same sticky p_u, same ``cutoff``), with X_u over the unit's impressions of any *other*
    experiment served in [``pre_from``, ``pre_to``): ``covariate`` reward = their rewards'
    sum, feedback = their feedback events, impressions = their count; 0 for a unit the
    pre-period did not see. One query: the experiment's per-unit scan joined to the
    pre-period's per-unit aggregate (a ``served_at`` range, so PostgreSQL reads only the
    pre-period's weekly partitions)."""
    i = Impression
    per_unit = select(
        i.arm_key.label("arm"), i.unit_id.label("unit"), func.sum(i.reward).label("y"),
        func.max(i.propensity).label("p"),
    ).where(i.experiment_id == experiment_id)
    if cutoff is not None:
        per_unit = per_unit.where(i.served_at <= cutoff)
    u = per_unit.group_by(i.arm_key, i.unit_id).subquery()
    h = aliased(Impression)
    value = {"reward": func.sum(h.reward), "feedback": func.sum(h.feedback_count),
             "impressions": func.count()}[covariate]
    pre = (select(h.unit_id.label("unit"), cast(value, Float).label("x"))
           .where(h.served_at >= pre_from, h.served_at < pre_to,
                  h.experiment_id != experiment_id)
           .group_by(h.unit_id).subquery())
    x, y, p = func.coalesce(pre.c.x, 0.0), u.c.y, u.c.p
    q = (select(u.c.arm, func.count(pre.c.unit), func.sum(x), func.sum(x * x), func.sum(x * y),
                func.sum(x / p), func.sum(x * x / (p * p)), func.sum(x * y / (p * p)))
         .select_from(u.outerjoin(pre, pre.c.unit == u.c.unit))
         .group_by(u.c.arm))
    return {str(k): CovariateSums(*(float(v or 0.0) for v in vals))
            for k, *vals in session.execute(q)}


def guardrail_sums(session: Session, experiment_id: int) -> dict[str, dict[str, ArmSums]]:
    """``guardrail_stats`` summed over partitions: metric key -> arm key -> sums."""
    g = GuardrailStats
    cols = [func.coalesce(func.sum(getattr(g, f)), 0) for f in FIELDS]
    q = (select(g.metric, g.arm_key, *cols).where(g.experiment_id == experiment_id)
         .group_by(g.metric, g.arm_key))
    out: dict[str, dict[str, ArmSums]] = {}
    for metric, arm, *vals in session.execute(q):
        out.setdefault(str(metric), {})[str(arm)] = ArmSums(*(float(v) for v in vals))
    return out


def guardrail_sums_served_after(
    session: Session, experiment_id: int, cutoff: datetime
) -> dict[str, dict[str, ArmSums]]:
    """The guardrail sums (metric -> arm -> sums) over impressions served after ``cutoff``,
    added up in Python from each impression's ``guardrail_values`` (a JSON column: one
    portable query; the rows read are those still inside the attribution window)."""
    i = Impression
    q = select(i.arm_key, i.propensity, i.guardrail_values).where(
        i.experiment_id == experiment_id, i.served_at > cutoff,
        i.guardrail_values.is_not(None))
    out: dict[str, dict[str, ArmSums]] = {}
    for arm, p, values in session.execute(q):
        for metric, (y, count) in (values or {}).items():
            s = out.setdefault(str(metric), {}).setdefault(str(arm), ArmSums())
            s.add_impression(float(p))
            s.add_reward_change(0.0, float(y), float(p))
            s.feedback_n += float(count)
    return out


def unit_guardrail_sums(
    session: Session, experiment_id: int, cutoff: datetime | None
) -> dict[str, dict[str, UnitSums]]:
    """metric -> arm -> :class:`UnitSums`: per unit (and metric) its impressions carrying the
    metric, their values' sum and sum of squares and events, and its sticky propensity (the
    maximum logged, as :func:`unit_sums`), over the impressions served up to ``cutoff`` (all
    when None). The JSON is read in Python (one portable query; a scan of the experiment's
    impressions with guardrail values, like :func:`unit_sums`)."""
    i = Impression
    q = select(i.arm_key, i.unit_id, i.propensity, i.guardrail_values).where(
        i.experiment_id == experiment_id, i.guardrail_values.is_not(None))
    if cutoff is not None:
        q = q.where(i.served_at <= cutoff)
    # (metric, arm, unit) -> [impressions, sum y, sum y², events, propensity]
    acc: dict[tuple[str, str, str], list[float]] = {}
    for arm, unit, p, values in session.execute(q):
        for metric, (y, count) in (values or {}).items():
            a = acc.setdefault((str(metric), str(arm), str(unit)), [0.0, 0.0, 0.0, 0.0, 0.0])
            y = float(y)
            a[0] += 1.0
            a[1] += y
            a[2] += y * y
            a[3] += float(count)
            a[4] = max(a[4], float(p))
    out: dict[str, dict[str, UnitSums]] = {}
    for (metric, arm, _), (n, y, ysq, events, p) in acc.items():
        out.setdefault(metric, {}).setdefault(arm, UnitSums()).add_unit(n, y, ysq, events, p)
    return out


def latest_snapshot(session: Session, experiment_id: int,
                    policy_name: str | None = None) -> AllocationSnapshot | None:
    """The experiment's newest snapshot (of that policy when ``policy_name`` is given)."""
    q = select(AllocationSnapshot).where(AllocationSnapshot.experiment_id == experiment_id)
    if policy_name is not None:
        q = q.where(AllocationSnapshot.policy_name == policy_name)
    return session.scalars(q.order_by(AllocationSnapshot.id.desc()).limit(1)).one_or_none()


def latest_decisions(session: Session, experiment_id: int) -> dict[str, Decision]:
    """Most recent decision row of each arm: one probe of the (experiment_id, arm_key, id)
    index per arm of the experiment, not a scan of its whole decision history."""
    newest = (
        select(func.max(Decision.id))
        .where(Decision.experiment_id == experiment_id, Decision.arm_key == Arm.key)
        .scalar_subquery()
    )
    ids = select(newest).where(Arm.experiment_id == experiment_id)
    rows = session.scalars(select(Decision).where(Decision.id.in_(ids)))
    return {d.arm_key: d for d in rows}
