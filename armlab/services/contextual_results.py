"""The ``contextual`` block of an experiment's results: per-segment weights and effects, SRM
per segment and the value of personalisation, for experiments whose policy is contextual
(``segment_thompson``, ``linear_thompson``); None for the others.

Inputs: the policy's features (``experiment.policy_params["features"]``), the matured
impressions with their contexts (served before now - attribution window, through
``evidence.logged_contexts``) and the latest allocation snapshot's ``stats["contextual"]``
(:func:`armlab.core.policies.contextual_snapshot.allocation_from_dict`). The statistics are
:mod:`armlab.core.stats.segments` and :mod:`armlab.core.stats.personalisation` (see their
module docs for why they stay valid under the contextual allocation). Computed per call (a scan
of the experiment's matured impressions; no stored running state: each p-value and confidence
sequence is this look's, always valid at any time it is looked at).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from armlab.core.policies import CONTEXTUAL_POLICY_NAMES
from armlab.core.policies.context_features import ContextParams, ContextSpec
from armlab.core.policies.contextual import SegmentAllocation
from armlab.core.policies.contextual_snapshot import (
    ContextualAllocation,
    allocation_from_dict,
)
from armlab.core.records import ExperimentRecord
from armlab.core.specs import SequentialSpec
from armlab.core.stats.adaptive import DEFAULT_PLAN_IMPRESSIONS
from armlab.core.stats.personalisation import personalisation_value
from armlab.core.stats.segment_units import per_unit_rows
from armlab.core.stats.segments import (
    ContextRow,
    SegmentDesign,
    SegmentTable,
    segment_effects,
    segment_indices,
    segment_label_text,
    segment_srm,
    segment_table,
)
from armlab.errors import ArmlabError
from armlab.services.ports import UnitOfWorkPort


def is_contextual(experiment: ExperimentRecord) -> bool:
    return experiment.policy_name in CONTEXTUAL_POLICY_NAMES


def _design(experiment: ExperimentRecord) -> SegmentDesign:
    seq = SequentialSpec.model_validate(experiment.sequential or {})
    keys = [a.key for a in experiment.arms]
    return SegmentDesign(
        control=experiment.control_arm_key,
        treatments=tuple(k for k in keys if k != experiment.control_arm_key),
        # unit user: the terms are per-user totals, not 0/1 (as the per-arm test's design)
        alpha=seq.alpha, binary=experiment.reward_kind == "binary" and experiment.unit != "user",
        min_samples=seq.min_samples, min_events=seq.min_events,
        horizon=float(seq.max_n or DEFAULT_PLAN_IMPRESSIONS),
        floor=float(experiment.exploration_floor or 0.0),
        correction=seq.correction,
    )


def _allocation(uow: UnitOfWorkPort, experiment: ExperimentRecord
                ) -> tuple[ContextualAllocation | None, dict[str, Any] | None, str]:
    # the policy's own newest snapshot: after a stop or ship the newest one is terminal
    snap = uow.evidence.latest_policy_snapshot(experiment.id, experiment.policy_name)
    raw = (snap.stats or {}).get("contextual") if snap is not None else None
    if not raw:
        return None, None, "no contextual allocation snapshot yet"
    try:
        return allocation_from_dict(raw), raw, ""
    except ArmlabError as exc:
        return None, raw, exc.message


def _segment_rows(table: SegmentTable, arms: Sequence[str], raw: dict[str, Any] | None,
                  seg_of: np.ndarray, probs: np.ndarray | None
                  ) -> list[dict[str, Any]]:
    """Per segment with data: impressions, share, plain means and the learned weights (the
    mean P(arm | context) of the snapshot over the segment's matured contexts; its row for
    segment_thompson)."""
    imps = table.impressions
    total = sum(imps) or 1.0
    sources = [s.get("source") for s in (raw or {}).get("segments", [])]
    out = []
    for g, seg in enumerate(table.sums):
        if imps[g] <= 0:
            continue
        weights: dict[str, float] | None = None
        mask = seg_of == g
        if probs is not None and mask.any():
            w = probs[mask].mean(axis=0)
            weights = {a: float(x) for a, x in zip(arms, w, strict=True)}
        out.append({
            "segment_index": g, "segment": table.labels[g],
            "label": segment_label_text(table.labels[g]), "impressions": int(imps[g]),
            "share": imps[g] / total,
            "means": {a: seg[a].mean for a in arms},
            "impressions_by_arm": {a: int(seg[a].n) for a in arms},
            "weights": weights, "source": sources[g] if g < len(sources) else None,
        })
    return out


def _personalisation(arms: Sequence[str], rows: Sequence[ContextRow],
                     probs: np.ndarray | None, reason: str, per: str = "impression"
                     ) -> dict[str, Any]:
    if probs is None:
        return {"available": False, "reason": reason}
    try:
        res = personalisation_value(arms, [r[0] for r in rows], [r[1] for r in rows],
                                    [r[2] for r in rows], probs)
    except ArmlabError as exc:
        return {"available": False, "reason": exc.message}
    single = [a for a, share in res["policy_share"].items() if share >= 1.0]
    if single:
        return {"available": False,
                "reason": f"the learned policy picks {single[0]} in every matured context: "
                          "nothing is personalised yet"}
    res["available"] = True
    res["reason"] = ""
    res["summary"] = (f"serving by segment gains {res['gain']:+.4g} "
                      f"[{res['cs_low']:+.4g}, {res['cs_high']:+.4g}] per {per} over the "
                      f"best single arm ({res['best_arm']})")
    return res


def _matured(uow: UnitOfWorkPort, experiment: ExperimentRecord, spec: ContextSpec,
             arms: Sequence[str], now: datetime
             ) -> tuple[list[ContextRow], np.ndarray, int, dict[str, Any] | None]:
    """The matured rows the analysis can read (a known arm, a propensity in (0, 1], a
    context the features read), their segment indices and how many were left out. ``unit:
    user``: one row per (user, arm), :func:`~armlab.core.stats.segment_units.per_unit_rows`
    (the user's total reward, sticky propensity and first context; left-out rows are then
    users), and {"impressions", "users", "changed_segment"}; None otherwise."""
    cutoff = now - timedelta(seconds=int(experiment.attribution_window_s or 0))
    known = set(arms)
    per_user: dict[str, Any] | None = None
    if experiment.unit == "user":
        units = [u for u in uow.evidence.logged_unit_contexts(experiment.id, cutoff)
                 if u[1][0] in known and 0.0 < u[1][2] <= 1.0]
        logged, idx, moved = per_unit_rows(units, segment_indices(
            spec, [u[1][3] for u in units]))
        per_user = {"impressions": len(units), "changed_segment": moved}
    else:
        logged = uow.evidence.logged_contexts(experiment.id, cutoff)
        idx = segment_indices(spec, [r[3] for r in logged])
    keep = [i for i, r in enumerate(logged)
            if r[0] in known and idx[i] >= 0 and 0.0 < r[2] <= 1.0]
    if per_user is not None:
        per_user["users"] = len(keep)
    return [logged[i] for i in keep], idx[keep], len(logged) - len(keep), per_user


def _probs(alloc: ContextualAllocation | None, raw: dict[str, Any] | None,
           arms: Sequence[str], rows: Sequence[ContextRow], idx: np.ndarray, reason: str
           ) -> tuple[np.ndarray | None, str]:
    """The learned allocation's P(arm | context) for every row, (N, len(arms)) in the
    experiment's arm order: a segment policy's rows by index (without re-reading the
    contexts); an arm the snapshot leaves out (rolled back: ``contextual["arms"]`` lists the
    arms it serves) has 0."""
    if alloc is None or not rows:
        return None, reason or "no matured impressions yet"
    try:
        p = (alloc.weights[idx] if isinstance(alloc, SegmentAllocation)
             else alloc.propensities([r[3] or {} for r in rows]))
    except ArmlabError as exc:
        return None, exc.message
    served = list((raw or {}).get("arms") or arms)
    if p.shape[1] != len(served):
        return None, "the snapshot's arms do not match its allocation"
    out = np.zeros((p.shape[0], len(arms)))
    pos = {a: i for i, a in enumerate(arms)}
    for j, a in enumerate(served):
        if a in pos:
            out[:, pos[a]] = p[:, j]
    return out, ""


def contextual_block(uow: UnitOfWorkPort, experiment: ExperimentRecord, *, now: datetime
                     ) -> dict[str, Any] | None:
    """The results' ``contextual`` block (module doc); None for a non-contextual policy."""
    if not is_contextual(experiment):
        return None
    try:
        params = ContextParams(features=(experiment.policy_params or {}).get("features"))
        spec = ContextSpec(params.features)
    except (ArmlabError, ValueError) as exc:
        return {"policy": experiment.policy_name, "error": f"policy.params.features: {exc}"}
    arms = [a.key for a in experiment.arms]
    rows, idx, skipped, per_user = _matured(uow, experiment, spec, arms, now)
    table = segment_table(spec, arms, rows, idx)
    alloc, raw, reason = _allocation(uow, experiment)
    probs, reason = _probs(alloc, raw, arms, rows, idx, reason)
    design = _design(experiment)
    has_segments = bool(spec.categorical)
    warnings = []
    if per_user and per_user["changed_segment"]:
        warnings.append(f"unit user: {per_user['changed_segment']} of {len(rows)} users had "
                        "impressions in more than one segment; each counts once, in the "
                        "segment of its first impression")
    return {
        "policy": experiment.policy_name,
        "features": [f.model_dump() for f in spec.features],
        "matured_impressions": per_user["impressions"] if per_user else len(rows),
        "skipped_rows": skipped,
        # unit user: the tests' terms are users (segment_units), "per_user" says how many
        "per_user": per_user,
        "declared_segments": spec.n_segments if has_segments else 0,
        "segments": _segment_rows(table, arms, raw, idx, probs)
        if has_segments else [],
        "effects": segment_effects(table, design) if has_segments else None,
        "srm": segment_srm(table, min_samples=design.min_samples) if has_segments else [],
        "personalisation": _personalisation(arms, rows, probs, reason,
                                            "user" if per_user else "impression"),
        "warnings": warnings,
    }
