"""Sequential decisions per treatment arm against the control, as a pure function of the
per-arm sums, the experiment's design and each arm's previous look.

:func:`evaluate` returns the always-valid evaluation: estimate, running p-value (the minimum
with the previous one), running confidence sequence (the intersection with the previous one),
multiplicity-adjusted p-value (Holm or Bonferroni over the treatment arms), a decision
(continue / treatment_better / treatment_worse / futile) and an always-valid sample-ratio-
mismatch check that allows for time-varying weights. :func:`ship_problem` says whether the
evaluation argues against shipping an arm. Reading the sums and storing decisions is
:mod:`armlab.services.decisions`' job.

Method: the adaptive-valid IPW test (:mod:`armlab.core.stats.adaptive`) whenever allocation can
depend on the data (every policy except ``uniform``); plain mSPRT on the arm means
(:mod:`armlab.core.stats.msprt`) for ``uniform``, where the per-arm samples are i.i.d. (the
setting of Johari, Koomen, Pekelis & Walsh 2022) and the plain test is a little more efficient.
``sequential.method`` overrides the choice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from armlab.core.evidence import ArmSums
from armlab.core.specs import SequentialSpec
from armlab.core.stats.adaptive import (
    DEFAULT_PLAN_IMPRESSIONS,
    informative,
    ipw_msprt,
    planned_variance,
    srm_check,
)
from armlab.core.stats.msprt import (
    HorizonBoundary,
    MsprtResult,
    MsprtState,
    bonferroni_adjust,
    holm_adjust,
    msprt_two_sample,
    tau2_for_horizon,
    variance_for_tau2,
)
from armlab.errors import StatsError

SRM_ALPHA = 0.001
TERMINAL = ("treatment_better", "treatment_worse", "futile")


@dataclass(frozen=True)
class Design:
    """What the evaluation needs to know about an experiment."""

    arm_keys: tuple[str, ...]
    control: str
    binary: bool
    policy_name: str
    exploration_floor: float
    sequential: SequentialSpec

    @property
    def treatments(self) -> list[str]:
        return [k for k in self.arm_keys if k != self.control]


@dataclass(frozen=True)
class PriorLook:
    """What an arm's last stored evaluation carries into the next one."""

    p_value: float | None
    ci_low: float | None
    ci_high: float | None
    method: str | None
    tau2: float | None
    looks: int
    srm_p: float | None = None
    alternative: str = "two-sided"
    decision: str | None = None
    boundary: str = "mixture"


def _num(x: float | None) -> float | None:
    if x is None or (isinstance(x, float) and (math.isinf(x) or math.isnan(x))):
        return None
    return float(x)


def _pooled_variance(sums: Sequence[ArmSums], binary: bool) -> float:
    n = sum(s.n for s in sums)
    if n < 2:
        return 0.0
    mean = sum(s.reward_sum for s in sums) / n
    if binary:
        return mean * (1 - mean)
    return max(sum(s.reward_sumsq for s in sums) / n - mean * mean, 0.0) * n / (n - 1)


def evaluate(
    design: Design,
    arm_sums: Mapping[str, ArmSums],
    previous: Mapping[str, PriorLook],
    *,
    now: datetime,
) -> dict[str, Any]:
    """Always-valid evaluation of every treatment arm against the control (see module doc)."""
    seq = design.sequential
    alpha, theta0, min_samples = seq.alpha, seq.theta0, seq.min_samples
    min_events = seq.min_events
    alternative = seq.alternative
    boundary = seq.boundary
    max_n, correction, min_effect = seq.max_n, seq.correction, seq.min_effect
    binary, control = design.binary, design.control
    arm_keys = list(design.arm_keys)
    treatments = design.treatments
    sums = {k: arm_sums.get(k) or ArmSums() for k in arm_keys}
    t_total = sum(s.n for s in sums.values())
    warnings: list[str] = []

    method: str = seq.method
    if method == "auto":
        method = "plain" if design.policy_name == "uniform" else "ipw"
    if method == "ipw" and any(s.n > 0 and s.ipw_n <= 0 for s in sums.values()):
        warnings.append("propensities not logged for some arm: fell back to plain mSPRT, which "
                        "is not valid under adaptive allocation")
        method = "plain"
    if method == "ipw" and design.exploration_floor <= 0.0:
        warnings.append("exploration_floor is 0: the IPW test needs propensities bounded away "
                        "from 0 for its guarantee")

    # tau²: the experiment's setting, else the value frozen at the first evaluation that had
    # data (carried in the evidence), else Howard et al.'s horizon rule applied to the
    # variance of the estimate the method will have at the planned horizon (max_n
    # impressions, or DEFAULT_PLAN_IMPRESSIONS): see ``planned_variance``.
    tau2 = seq.tau2
    tau2_source = "experiment"
    horizon = float(max_n or DEFAULT_PLAN_IMPRESSIONS)
    if tau2 is None:
        frozen = [p.tau2 for p in previous.values() if p.method == method]
        if frozen and frozen[0]:
            tau2, tau2_source = float(frozen[0]), "frozen"
        else:
            sigma2 = _pooled_variance(list(sums.values()), binary)
            enough = all(s.n >= max(min_samples, 1) for s in sums.values())
            if sigma2 > 0 and enough:
                v_star = planned_variance(sigma2, horizon, len(arm_keys), method=method,
                                          floor=(0.0 if design.policy_name == "uniform"
                                                 else design.exploration_floor))
                tau2 = tau2_for_horizon(v_star, alpha)
                tau2_source = "horizon"
    m = max(len(treatments), 1)
    cs_alpha = alpha / m  # simultaneous coverage of the confidence sequences (Bonferroni)
    # The horizon boundary's plan: the Var(D) at the horizon that tau² was tuned for (frozen
    # with tau², so fixed before the data it tests), on the sum scale t·D, where t counts
    # all arms' impressions for IPW and the pair's for plain (see HorizonBoundary).
    plan: HorizonBoundary | None = None
    if boundary == "horizon" and tau2 is not None:
        t_plan = horizon if method == "ipw" else 2.0 * horizon / max(len(arm_keys), 2)
        plan = HorizonBoundary(t_plan * t_plan * variance_for_tau2(tau2, alpha), 0.0)

    results: dict[str, MsprtResult | None] = {}
    for k in treatments:
        a, b = sums[control], sums[k]
        prev = previous.get(k)
        state = MsprtState()
        if (prev is not None and prev.method == method and tau2 is not None
                and prev.tau2 == tau2 and prev.p_value is not None
                and prev.alternative == alternative and prev.boundary == boundary):
            state = MsprtState(
                min(max(float(prev.p_value), 0.0), 1.0),
                -math.inf if prev.ci_low is None else float(prev.ci_low),
                math.inf if prev.ci_high is None else float(prev.ci_high),
                prev.looks,
            )
        if tau2 is None:
            results[k] = None
            continue
        try:
            if method == "ipw":
                results[k] = ipw_msprt(t_total, a, b, tau2=tau2, theta0=theta0, alpha=cs_alpha,
                                       binary=binary, min_samples=min_samples,
                                       min_events=min_events, state=state,
                                       alternative=alternative, horizon=plan)
            else:
                gate = informative(a, b, binary=binary, min_samples=min_samples,
                                   min_events=min_events)
                results[k] = msprt_two_sample(
                    "bernoulli" if binary else "normal", a.n, a.reward_sum, a.reward_sumsq,
                    b.n, b.reward_sum, b.reward_sumsq, tau2=tau2, theta0=theta0,
                    alpha=cs_alpha, min_samples=min_samples, state=state, gate=gate,
                    alternative=alternative, horizon=plan)
        except StatsError as exc:
            warnings.append(f"arm {k}: {exc.message}")
            results[k] = None

    raw_p = [r.p_value if (r := results[k]) is not None else 1.0 for k in treatments]
    adjusted = (holm_adjust(raw_p) if correction == "holm" else bonferroni_adjust(raw_p)) \
        if treatments else []
    horizon_reached = max_n is not None and t_total >= float(max_n)

    prev_srm = [p.srm_p for p in previous.values() if p.srm_p is not None]
    srm = srm_check(
        {k: s.n for k, s in sums.items()},
        {k: s.ipw_n for k, s in sums.items()},
        {k: s.ipw_n_sq for k, s in sums.items()},
        alpha=SRM_ALPHA, min_samples=min_samples,
        previous_p=min(prev_srm) if prev_srm else 1.0,
    )

    arms_out = []
    for k, p_adj in zip(treatments, adjusted, strict=True):
        r = results[k]
        a, b = sums[control], sums[k]
        entry: dict[str, Any] = {
            "arm": k, "control": control, "n_control": a.n, "n_treatment": b.n,
            "mean_control": a.reward_sum / a.n if a.n else None,
            "mean_treatment": b.reward_sum / b.n if b.n else None,
        }
        if r is None or r.looks == 0:
            entry.update(decision="continue", reason="no tau2 yet: too few samples",
                         estimate=None, p_value=1.0, p_adjusted=1.0, ci_low=None,
                         ci_high=None, valid=False, looks=0)
        else:
            decision, reason = "continue", r.reason or "evidence not conclusive"
            if p_adj <= alpha:
                # Direction: kept from the look that first rejected (the running p cannot
                # rise, the direction must not flip); else the side of theta0 the running
                # confidence sequence excludes; else the sign of the estimate. With Holm the
                # adjusted p can reach alpha while the Bonferroni-level (alpha/m) confidence
                # sequence still contains theta0: one finite side of it says nothing.
                prev = previous.get(k)
                kept = prev.decision if prev is not None and r.looks > 1 else None
                if kept in ("treatment_better", "treatment_worse"):
                    decision = str(kept)
                elif r.ci_low > theta0 or r.ci_high < theta0:
                    decision = "treatment_better" if r.ci_low > theta0 else "treatment_worse"
                else:
                    decision = "treatment_better" if r.estimate > theta0 else "treatment_worse"
                reason = f"adjusted always-valid p {p_adj:.4g} <= alpha {alpha}"
            elif (min_effect is not None and r.valid
                  and -float(min_effect) < r.ci_low and r.ci_high < float(min_effect)):
                decision, reason = "futile", (f"confidence sequence inside ±{min_effect}: no "
                                              "meaningful effect")
            elif horizon_reached:
                decision, reason = "futile", f"max_n={max_n} impressions reached"
            elif not r.valid:
                reason = r.reason
            entry.update(
                decision=decision, reason=reason, estimate=r.estimate, p_value=r.p_value,
                p_adjusted=p_adj, p_now=r.p_now, ci_low=_num(r.ci_low), ci_high=_num(r.ci_high),
                log_lambda=r.log_lambda, valid=r.valid, looks=r.looks, cs_empty=r.cs_empty,
            )
        arms_out.append(entry)

    decided = [e for e in arms_out if e["decision"] in TERMINAL]
    stop = bool(arms_out) and len(decided) == len(arms_out)
    stop_reason = ""
    if stop:
        stop_reason = "; ".join(f"{e['arm']}: {e['decision']} ({e['reason']})" for e in arms_out)
    if srm.mismatch:
        warnings.append(f"sample-ratio mismatch (always-valid p {srm.p_value:.3g}): the served "
                        "traffic does not match the logged propensities; results are suspect")
    return {
        "method": method,
        "alpha": alpha,
        "cs_alpha": cs_alpha,
        "tau2": tau2,
        "tau2_source": tau2_source if tau2 is not None else None,
        "theta0": theta0,
        "correction": correction,
        "min_samples": min_samples,
        "min_events": min_events,
        "alternative": alternative,
        "boundary": boundary,
        "horizon_plan": None if plan is None else {
            "impressions": horizon, "info": plan.info, "share": plan.share},
        "max_n": max_n,
        "impressions": t_total,
        "control": control,
        "arms": arms_out,
        "srm": srm.as_dict(),
        "stop": stop and not srm.mismatch,
        "stop_reason": stop_reason,
        "warnings": warnings,
        "evaluated_at": now.isoformat(),
    }


def ship_problem(evaluation: Mapping[str, Any], *, arm: str, control: str) -> str:
    """Why the evaluation argues against shipping ``arm`` ('' when it does not).

    Against: shipping a treatment whose latest evaluation is not ``treatment_better`` (once
    the test has looked at enough data), or shipping the control while some treatment is
    ``treatment_better``. Without enough data there is no evidence either way.
    """
    arms = evaluation.get("arms", [])
    if arm == control:
        better = [e["arm"] for e in arms if e["decision"] == "treatment_better"]
        if better:
            return f"treatment arm(s) {', '.join(better)} are better than the control {arm!r}"
        return ""
    e = next((x for x in arms if x["arm"] == arm), None)
    if e is None or not e.get("valid") or e["decision"] == "treatment_better":
        return ""
    lo, hi = e.get("ci_low"), e.get("ci_high")
    return (f"arm {arm!r} is {e['decision'].replace('_', ' ')} against control {control!r}: "
            f"estimate {e['estimate']:+.4g}, always-valid p {e['p_adjusted']:.3g}, confidence "
            f"sequence [{'-inf' if lo is None else f'{lo:.4g}'}, "
            f"{'inf' if hi is None else f'{hi:.4g}'}]")
