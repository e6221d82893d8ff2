"""Per-arm results of one experiment, as served by ``GET /v1/experiments/{key}/results``.

Impressions and reward sums are SUMs over the partition shards of ``arm_stats`` (each Kafka
partition's consumer owns its own rows, see models.ArmStats); the traffic weight is the latest
allocation snapshot, or a uniform split when the allocator has not written one yet; a shipped
experiment serves its shipped arm only and a stopped one its control only.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from armlab.platform.models import AllocationSnapshot, ArmStats, Experiment


def _arm_totals(session: Session, experiment_id: int) -> dict[str, dict[str, float]]:
    rows = session.execute(
        select(
            ArmStats.arm_key,
            func.coalesce(func.sum(ArmStats.n), 0),
            func.coalesce(func.sum(ArmStats.reward_sum), 0.0),
            func.coalesce(func.sum(ArmStats.feedback_n), 0),
        )
        .where(ArmStats.experiment_id == experiment_id)
        .group_by(ArmStats.arm_key)
    )
    return {
        key: {"n": float(n), "reward_sum": float(rs), "feedback_n": float(fb)}
        for key, n, rs, fb in rows
    }


def latest_snapshot(session: Session, experiment_id: int) -> AllocationSnapshot | None:
    return session.scalars(
        select(AllocationSnapshot)
        .where(AllocationSnapshot.experiment_id == experiment_id)
        .order_by(AllocationSnapshot.id.desc())
        .limit(1)
    ).one_or_none()


def build_results(session: Session, experiment: Experiment) -> dict[str, Any]:
    """{"key","status","shipped_arm","control_arm","arms":[...],"snapshot","sequential"}.

    ``sequential`` is None here; armlab.stats fills it with its evaluation.
    """
    totals = _arm_totals(session, experiment.id)
    snap = latest_snapshot(session, experiment.id)
    keys = [a.key for a in experiment.arms]
    # What is actually served: a shipped arm takes everything, a stopped experiment serves its
    # control (DESIGN.md, Registry); otherwise the latest snapshot, uniform before the first.
    if experiment.status == "shipped" and experiment.shipped_arm_key in keys:
        weights = {k: 1.0 if k == experiment.shipped_arm_key else 0.0 for k in keys}
    elif experiment.status == "stopped":
        weights = {k: 1.0 if k == experiment.control_arm_key else 0.0 for k in keys}
    elif snap is not None:
        weights = {k: float(snap.weights.get(k, 0.0)) for k in keys}
    else:
        weights = {k: 1.0 / len(keys) for k in keys} if keys else {}
    arms = []
    for arm in experiment.arms:
        t = totals.get(arm.key, {"n": 0.0, "reward_sum": 0.0, "feedback_n": 0.0})
        n = int(t["n"])
        arms.append(
            {
                "key": arm.key,
                "control": arm.is_control,
                "impressions": n,
                "feedback": int(t["feedback_n"]),
                "reward_sum": t["reward_sum"],
                "mean": (t["reward_sum"] / n) if n > 0 else None,
                "weight": weights.get(arm.key, 0.0),
            }
        )
    snapshot = (
        {
            "id": snap.id,
            "created_at": snap.created_at.isoformat() if snap.created_at else None,
            "policy_name": snap.policy_name,
            "policy_version": snap.policy_version,
            "weights": dict(snap.weights),
            "stats": dict(snap.stats or {}),
        }
        if snap is not None
        else None
    )
    return {
        "key": experiment.key,
        "status": experiment.status,
        "shipped_arm": experiment.shipped_arm_key,
        "control_arm": experiment.control_arm_key,
        "arms": arms,
        "snapshot": snapshot,
        # stats area (armlab.platform.decisions): always-valid estimates, p-values, confidence
        # sequences, decisions and the SRM check per treatment arm.
        "sequential": _sequential(session, experiment),
    }


def _sequential(session: Session, experiment: Experiment) -> dict[str, Any]:
    """Added by the stats area: the sequential evaluation, or the reason it is unavailable."""
    from armlab.errors import ArmlabError
    from armlab.platform.decisions import evaluate_experiment

    try:
        return evaluate_experiment(session, experiment)
    except ArmlabError as exc:
        return {"error": exc.message}
