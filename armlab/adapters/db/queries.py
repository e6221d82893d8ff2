"""Read queries several services share, each written once.

* :func:`arm_totals` / :func:`arm_sums`: the per-arm sufficient statistics, i.e. the
  ``arm_stats`` shards (one per Kafka partition) summed per arm;
* :func:`latest_snapshot`: an experiment's newest allocation snapshot;
* :func:`latest_decisions`: the newest sequential decision row of each arm.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from armlab.adapters.db.models import AllocationSnapshot, Arm, ArmStats, Decision
from armlab.core.evidence import FIELDS, ArmSums


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


def latest_snapshot(session: Session, experiment_id: int) -> AllocationSnapshot | None:
    return session.scalars(
        select(AllocationSnapshot)
        .where(AllocationSnapshot.experiment_id == experiment_id)
        .order_by(AllocationSnapshot.id.desc())
        .limit(1)
    ).one_or_none()


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
