"""CUPED on stored evidence (``unit: user`` with ``sequential.cuped``): the per-user sums of a
look, adjusted with each user's pre-period behaviour.

X_u is read from the impressions the platform already stores: the user's impressions of any
other experiment served in the ``pre_period_days`` before this experiment started
(``started_at``), summed as the spec's ``covariate`` says (rewards, feedback events or
impressions; 0 for a user the pre-period did not see). X_u is fixed before the user's first
exposure, so it cannot depend on the arm, and the IPW test on Y' = Y - theta X keeps its
guarantee for any theta (:mod:`armlab.core.stats.cuped`). theta is re-estimated at every look
from the same users the look analyses, and the plan (tau², the horizon boundary's V_plan) is
frozen at the look gate from the variance of the adjusted sums, like any other look's sums:
once CUPED is on, every look of the experiment runs on the adjusted outcome.

The fit (theta, rho, the variance ratio, the users the pre-period saw, the window) is what
:func:`apply_cuped` returns beside the sums; the evaluation carries it as ``cuped``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from armlab.core.clock import as_utc
from armlab.core.evidence import ArmSums
from armlab.core.records import ExperimentRecord
from armlab.core.specs import SequentialSpec
from armlab.core.stats.cuped import adjust_arms
from armlab.services.ports import Evidence


def apply_cuped(evidence: Evidence, experiment: ExperimentRecord, sums: dict[str, ArmSums],
                cutoff: datetime) -> tuple[dict[str, ArmSums], dict[str, Any] | None]:
    """(the look's sums, the ``cuped`` block): the sums unchanged and None when the
    experiment has no ``sequential.cuped``; else the sums of Y - theta X and the fit.
    Before the start there is no pre-period: the sums stay as they are (``applied`` false)."""
    spec = SequentialSpec.model_validate(experiment.sequential or {}).cuped
    if spec is None or experiment.unit != "user":
        return sums, None
    block: dict[str, Any] = {"applied": False, "covariate": spec.covariate,
                             "pre_period_days": spec.pre_period_days}
    if experiment.started_at is None:
        return sums, block | {"reason": "not started: no pre-period yet"}
    pre_to = as_utc(experiment.started_at)
    pre_from = pre_to - timedelta(days=spec.pre_period_days)
    cov = evidence.unit_covariate_sums(experiment.id, cutoff, pre_from=pre_from, pre_to=pre_to,
                                       covariate=spec.covariate)
    adjusted, fit = adjust_arms(sums, cov)
    block |= {"applied": True, "pre_from": pre_from.isoformat(), "pre_to": pre_to.isoformat(),
              **fit.as_dict()}
    return adjusted, block


def add_cuped(ev: dict[str, Any], block: dict[str, Any] | None, raw: dict[str, ArmSums]
              ) -> None:
    """The ``cuped`` block on an evaluation (in place), and each arm's plain means from the
    unadjusted sums (the test's estimate and interval are of the adjusted outcome, whose
    difference of means is the same effect; its per-arm levels are not the users' means)."""
    if block is None:
        return
    ev["cuped"] = block
    for e in ev.get("arms") or []:
        for side, arm in (("control", e.get("control")), ("treatment", e.get("arm"))):
            s = raw.get(str(arm))
            e[f"mean_{side}"] = s.reward_sum / s.n if s is not None and s.n else None
