"""Per-arm results of one experiment, as served by ``GET /v1/experiments/{key}/results``.

Impressions and reward sums are the per-arm totals of the evidence repository;
the weights are what is actually served (:mod:`armlab.core.serving`); ``sequential`` is the
last recorded look of the always-valid test (:func:`armlab.services.decisions.shown_evaluation`:
the same running state the allocator, the report and the ship guard read, so its p-values
never rise between calls and a stopped experiment shows the evidence frozen at its stop), or
the reason it is unavailable. ``guardrails`` (per guardrail and treatment arm: state, estimate,
confidence sequence, p-value) and ``recommendation`` (ship / keep control / continue, with the
reasons) come from the same look; each arm says whether a guardrail rolled it back.

``design`` is ``ab`` or ``interleaving``. An interleaving experiment has no ``sequential``
(null), guardrails or recommendation; its ``interleaving`` block is the last recorded look of
its test per pair of rankers with the live win tallies and the rankers' choice probabilities
(:func:`armlab.services.interleaving_evaluation.shown_interleaving`); null for A/B.

``contextual`` (contextual policies only, else null): per-segment weights and effects, SRM per
segment and the value of personalisation (:mod:`armlab.services.contextual_results`).
"""

from __future__ import annotations

from typing import Any

from armlab.core.clock import utcnow
from armlab.core.evidence import ArmSums
from armlab.core.records import ExperimentRecord, SnapshotRecord
from armlab.core.serving import served_weights
from armlab.errors import ArmlabError
from armlab.services.contextual_results import contextual_block
from armlab.services.decisions import shown_evaluation
from armlab.services.interleaving_evaluation import is_interleaving, shown_interleaving
from armlab.services.ports import UnitOfWorkPort


def build_results(uow: UnitOfWorkPort, experiment: ExperimentRecord) -> dict[str, Any]:
    """{"key","status","shipped_arm","control_arm","arms":[...],"snapshot","sequential"}."""
    totals = uow.evidence.arm_sums(experiment.id)
    snap = uow.evidence.latest_snapshot(experiment.id)
    keys = [a.key for a in experiment.arms]
    weights = served_weights(
        experiment.status, keys, control=experiment.control_arm_key,
        shipped=experiment.shipped_arm_key, snapshot=snap.weights if snap is not None else None,
    )
    arms = []
    for arm in experiment.arms:
        t = totals.get(arm.key) or ArmSums()
        arms.append(
            {
                "key": arm.key,
                "control": arm.is_control,
                "impressions": int(t.n),
                "feedback": int(t.feedback_n),
                "reward_sum": t.reward_sum,
                "mean": t.mean,
                "weight": weights.get(arm.key, 0.0),
                "rolled_back": arm.key in (experiment.rolled_back or {}),
            }
        )
    snapshot = _snapshot_view(snap)
    if is_interleaving(experiment):
        return {"key": experiment.key, "status": experiment.status, "design": "interleaving",
                "shipped_arm": experiment.shipped_arm_key,
                "control_arm": experiment.control_arm_key, "arms": arms, "snapshot": snapshot,
                "sequential": None, "guardrails": [], "recommendation": None,
                "interleaving": shown_interleaving(uow.evidence, experiment),
                "contextual": None}
    try:
        sequential: dict[str, Any] = shown_evaluation(uow.evidence, experiment)
    except ArmlabError as exc:
        sequential = {"error": exc.message}
    return {
        "key": experiment.key,
        "status": experiment.status,
        "design": "ab",
        "shipped_arm": experiment.shipped_arm_key,
        "control_arm": experiment.control_arm_key,
        "arms": arms,
        "snapshot": snapshot,
        "sequential": sequential,
        "guardrails": list(sequential.get("guardrails") or []),
        "recommendation": sequential.get("recommendation"),
        "interleaving": None,
        "contextual": _contextual(uow, experiment),
    }


def _snapshot_view(snap: SnapshotRecord | None) -> dict[str, Any] | None:
    """The latest allocation snapshot as the results show it."""
    if snap is None:
        return None
    return {
        "id": snap.id,
        "created_at": snap.created_at.isoformat() if snap.created_at else None,
        "policy_name": snap.policy_name,
        "policy_version": snap.policy_version,
        "weights": dict(snap.weights),
        "stats": dict(snap.stats or {}),
    }


def _contextual(uow: UnitOfWorkPort, experiment: ExperimentRecord) -> dict[str, Any] | None:
    """The contextual block, or the reason it is unavailable (the rest of the results still
    show)."""
    try:
        return contextual_block(uow, experiment, now=utcnow())
    except ArmlabError as exc:
        return {"policy": experiment.policy_name, "error": exc.message}
