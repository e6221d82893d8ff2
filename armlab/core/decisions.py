"""Sequential decisions per treatment arm against the control, as a pure function of the
per-arm sums, the experiment's design and each arm's previous look.

:func:`evaluate` returns the always-valid :class:`Evaluation`: per treatment arm an
:class:`ArmLook` with the estimate, running p-value (the minimum with the previous one),
running confidence sequence (the intersection with the previous one), multiplicity-adjusted
p-value (Holm or Bonferroni over the treatment arms) and a :class:`Decision` (continue /
treatment_better / treatment_worse / futile / inconclusive), and an always-valid
sample-ratio-mismatch check that allows for time-varying weights. :func:`ship_problem` says
whether the evaluation argues against shipping an arm. Reading the sums and storing decisions is
:mod:`armlab.services.decisions`' job; ``Evaluation.as_dict`` is the stored and served form
and ``Evaluation.from_dict`` reads it back.

The steps of one look: :func:`choose_method`, :func:`plan_look` (tau² and the horizon plan),
:func:`arm_test` per treatment arm, then :func:`arm_decision` (the per-arm stopping rule) and
:func:`stopping_rule` (the experiment stops when every arm is decided).

Method: the adaptive-valid IPW test (:mod:`armlab.core.stats.adaptive`) whenever allocation can
depend on the data (every policy except ``uniform``); plain mSPRT on the arm means
(:mod:`armlab.core.stats.msprt`) for ``uniform``, where the per-arm samples are i.i.d. (the
setting of Johari, Koomen, Pekelis & Walsh 2022) and the plain test is a little more efficient.
``sequential.method`` overrides the choice.

The values (:class:`Design`, :class:`PriorLook`, :class:`LookPlan`, :class:`HorizonPlan`,
:class:`ArmLook`, :class:`Evaluation`, :class:`Decision`) are declared in
:mod:`armlab.core.decision_types` and re-exported here; this module holds the steps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime

from armlab.core.decision_types import (
    TERMINAL,
    ArmLook,
    Decision,
    Design,
    Evaluation,
    HorizonPlan,
    LookPlan,
    PriorLook,
)
from armlab.core.evidence import ArmSums
from armlab.core.specs import SequentialSpec
from armlab.core.stats.adaptive import (
    DEFAULT_PLAN_IMPRESSIONS,
    SrmResult,
    events,
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

# DEFAULT_PLAN_IMPRESSIONS and planned_variance are named through this module too.
__all__ = [
    "DEFAULT_PLAN_IMPRESSIONS", "SRM_ALPHA", "TERMINAL", "ArmLook", "Decision", "Design",
    "Evaluation", "HorizonPlan", "LookPlan", "PriorLook", "arm_decision", "arm_look",
    "arm_test", "choose_method", "evaluate", "plan_look", "planned_variance", "ship_problem",
    "stopping_rule",
]

SRM_ALPHA = 0.001


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


def choose_method(design: Design, sums: Mapping[str, ArmSums]) -> tuple[str, list[str]]:
    """The test's method (see the module doc) and the warnings the choice raises."""
    warnings: list[str] = []
    method: str = design.sequential.method
    if method == "auto":
        method = "plain" if design.policy_name == "uniform" else "ipw"
    if method == "ipw" and any(s.n > 0 and s.ipw_n <= 0 for s in sums.values()):
        warnings.append("propensities not logged for some arm: fell back to plain mSPRT, which "
                        "is not valid under adaptive allocation")
        method = "plain"
    if method == "ipw" and design.exploration_floor <= 0.0:
        warnings.append("exploration_floor is 0: the IPW test needs propensities bounded away "
                        "from 0 for its guarantee")
    return method, warnings


def _tau2(design: Design, sums: Mapping[str, ArmSums], previous: Mapping[str, PriorLook],
          method: str, horizon: float) -> tuple[float | None, str]:
    """tau²: the experiment's setting, else the value frozen at the first evaluation that had
    data (carried in the evidence), else Howard et al.'s horizon rule applied to the variance
    of the estimate the method will have at the planned horizon (max_n impressions, or
    DEFAULT_PLAN_IMPRESSIONS): see ``planned_variance``. None while there is too little data."""
    seq = design.sequential
    if seq.tau2 is not None:
        return seq.tau2, "experiment"
    frozen = [p.tau2 for p in previous.values() if p.method == method]
    if frozen and frozen[0]:
        return float(frozen[0]), "frozen"
    sigma2 = _pooled_variance(list(sums.values()), design.binary)
    # Planned at the look gate (min_samples units AND min_events events per arm), not at
    # min_samples alone: looks before it carry no evidence anyway, and at a 5% click rate
    # 100 impressions per arm hold ~5 clicks, a ±30% error in the sigma² the plan (tau² and
    # the horizon boundary's V_plan) is frozen with; that cost the horizon boundary 0.03-0.06
    # power in the validity grid (docs/statistics.md, "Power").
    enough = all(s.n >= max(seq.min_samples, 1)
                 and events(s, binary=design.binary) >= seq.min_events
                 for s in sums.values())
    if sigma2 > 0 and enough:
        v_star = planned_variance(sigma2, horizon, len(design.arm_keys), method=method,
                                  floor=(0.0 if design.policy_name == "uniform"
                                         else design.exploration_floor))
        return tau2_for_horizon(v_star, seq.alpha), "horizon"
    return None, "experiment"


def plan_look(design: Design, sums: Mapping[str, ArmSums], previous: Mapping[str, PriorLook],
              method: str) -> LookPlan:
    """tau² (see :func:`_tau2`), the horizon plan and the confidence sequences' alpha."""
    seq = design.sequential
    horizon = float(seq.max_n or DEFAULT_PLAN_IMPRESSIONS)
    tau2, source = _tau2(design, sums, previous, method, horizon)
    # The horizon boundary's plan: the Var(D) at the horizon that tau² was tuned for (frozen
    # with tau², so fixed before the data it tests), on the sum scale t·D, where t counts
    # all arms' impressions for IPW and the pair's for plain (see HorizonBoundary).
    boundary: HorizonBoundary | None = None
    if seq.boundary == "horizon" and tau2 is not None:
        t_plan = horizon if method == "ipw" else 2.0 * horizon / max(len(design.arm_keys), 2)
        boundary = HorizonBoundary(t_plan * t_plan * variance_for_tau2(tau2, seq.alpha), 0.0)
    # simultaneous coverage of the confidence sequences (Bonferroni over the treatment arms)
    cs_alpha = seq.alpha / max(len(design.treatments), 1)
    return LookPlan(method=method, tau2=tau2, tau2_source=source if tau2 is not None else None,
                    horizon=horizon, boundary=boundary, cs_alpha=cs_alpha)


def _resume(prev: PriorLook | None, plan: LookPlan, seq: SequentialSpec) -> MsprtState:
    """The arm's stored running state when it belongs to the same test, else a fresh one."""
    if (prev is not None and prev.method == plan.method and plan.tau2 is not None
            and prev.tau2 == plan.tau2 and prev.p_value is not None
            and prev.alternative == seq.alternative and prev.boundary == seq.boundary):
        return MsprtState(
            min(max(float(prev.p_value), 0.0), 1.0),
            -math.inf if prev.ci_low is None else float(prev.ci_low),
            math.inf if prev.ci_high is None else float(prev.ci_high),
            prev.looks,
        )
    return MsprtState()


def arm_test(design: Design, plan: LookPlan, tau2: float, control: ArmSums,
             treatment: ArmSums, state: MsprtState, t_total: float) -> MsprtResult:
    """One look of one treatment arm's test against the control, continuing ``state``.
    Raises StatsError on data the test cannot use."""
    seq = design.sequential
    if plan.method == "ipw":
        return ipw_msprt(t_total, control, treatment, tau2=tau2, theta0=seq.theta0,
                         alpha=plan.cs_alpha, binary=design.binary,
                         min_samples=seq.min_samples, min_events=seq.min_events, state=state,
                         alternative=seq.alternative, horizon=plan.boundary)
    a, b = control, treatment
    gate = informative(a, b, binary=design.binary, min_samples=seq.min_samples,
                       min_events=seq.min_events)
    return msprt_two_sample(
        "bernoulli" if design.binary else "normal", a.n, a.reward_sum, a.reward_sumsq,
        b.n, b.reward_sum, b.reward_sumsq, tau2=tau2, theta0=seq.theta0, alpha=plan.cs_alpha,
        min_samples=seq.min_samples, state=state, gate=gate, alternative=seq.alternative,
        horizon=plan.boundary)


def _arm_tests(design: Design, plan: LookPlan, sums: Mapping[str, ArmSums],
               previous: Mapping[str, PriorLook], t_total: float, warnings: list[str]
               ) -> dict[str, MsprtResult | None]:
    """:func:`arm_test` for every treatment arm (None: no tau² yet, or the look failed, which
    adds a warning)."""
    results: dict[str, MsprtResult | None] = {}
    for k in design.treatments:
        state = _resume(previous.get(k), plan, design.sequential)
        if plan.tau2 is None:
            results[k] = None
            continue
        try:
            results[k] = arm_test(design, plan, plan.tau2, sums[design.control], sums[k],
                                  state, t_total)
        except StatsError as exc:
            warnings.append(f"arm {k}: {exc.message}")
            results[k] = None
    return results


def _direction(r: MsprtResult, theta0: float, prev: PriorLook | None) -> Decision:
    """The side of a rejection: kept from the look that first rejected (the running p cannot
    rise, the direction must not flip); else the side of theta0 the running confidence
    sequence excludes; else the sign of the estimate. With Holm the adjusted p can reach
    alpha while the Bonferroni-level (alpha/m) confidence sequence still contains theta0:
    one finite side of it says nothing."""
    kept = prev.decision if prev is not None and r.looks > 1 else None
    if kept in (Decision.TREATMENT_BETTER, Decision.TREATMENT_WORSE):
        return Decision(kept)
    if r.ci_low > theta0 or r.ci_high < theta0:
        return Decision.TREATMENT_BETTER if r.ci_low > theta0 else Decision.TREATMENT_WORSE
    return Decision.TREATMENT_BETTER if r.estimate > theta0 else Decision.TREATMENT_WORSE


def arm_decision(seq: SequentialSpec, r: MsprtResult, p_adjusted: float,
                 prev: PriorLook | None, *, horizon_reached: bool,
                 units: str = "impressions") -> tuple[Decision, str]:
    """The per-arm stopping rule: reject on the adjusted always-valid p (see
    :func:`_direction`); futile once the confidence sequence lies inside ±min_effect (evidence
    that the effect is too small to matter); inconclusive when ``max_n`` (counted in the unit
    of analysis, ``units``) is reached without either; else continue, with the reason."""
    if p_adjusted <= seq.alpha:
        return (_direction(r, seq.theta0, prev),
                f"adjusted always-valid p {p_adjusted:.4g} <= alpha {seq.alpha}")
    min_effect = seq.min_effect
    if (min_effect is not None and r.valid
            and -float(min_effect) < r.ci_low and r.ci_high < float(min_effect)):
        return Decision.FUTILE, (f"confidence sequence inside ±{min_effect}: no meaningful "
                                 "effect")
    if horizon_reached:
        return Decision.INCONCLUSIVE, (
            f"max_n={seq.max_n} {units} reached without a decision: the data do not show "
            f"an effect either way (confidence sequence [{_bound(r.ci_low)}, "
            f"{_bound(r.ci_high)}])")
    if not r.valid:
        return Decision.CONTINUE, r.reason
    return Decision.CONTINUE, r.reason or "evidence not conclusive"


def _bound(x: float) -> str:
    return f"{x:+.4g}" if math.isfinite(x) else ("-inf" if x < 0 else "inf")


def arm_look(design: Design, arm: str, sums: Mapping[str, ArmSums], r: MsprtResult | None,
             p_adjusted: float, prev: PriorLook | None, *, horizon_reached: bool) -> ArmLook:
    """The arm's :class:`ArmLook` from its test's result and adjusted p-value."""
    a, b = sums[design.control], sums[arm]
    look = ArmLook(arm=arm, control=design.control, n_control=a.n, n_treatment=b.n,
                   mean_control=a.reward_sum / a.n if a.n else None,
                   mean_treatment=b.reward_sum / b.n if b.n else None,
                   reason="no tau2 yet: too few samples")
    if r is None or r.looks == 0:
        if horizon_reached:
            return replace(look, decision=Decision.INCONCLUSIVE,
                           reason=f"max_n={design.sequential.max_n} {design.units} reached "
                                  "before the test had enough data to look")
        return look
    decision, reason = arm_decision(design.sequential, r, p_adjusted, prev,
                                    horizon_reached=horizon_reached, units=design.units)
    return replace(look, decision=decision, reason=reason, estimate=r.estimate,
                   p_value=r.p_value, p_adjusted=p_adjusted, p_now=r.p_now,
                   ci_low=_num(r.ci_low), ci_high=_num(r.ci_high), log_lambda=r.log_lambda,
                   valid=r.valid, looks=r.looks, cs_empty=r.cs_empty)


def stopping_rule(arms: Sequence[ArmLook]) -> tuple[bool, str]:
    """The experiment is decided when every treatment arm is (and why)."""
    stop = bool(arms) and all(a.decision in TERMINAL for a in arms)
    if not stop:
        return False, ""
    return True, "; ".join(f"{a.arm}: {a.decision} ({a.reason})" for a in arms)


def _srm(sums: Mapping[str, ArmSums], previous: Mapping[str, PriorLook], min_samples: int
         ) -> SrmResult:
    prev_srm = [p.srm_p for p in previous.values() if p.srm_p is not None]
    return srm_check(
        {k: s.n for k, s in sums.items()},
        {k: s.ipw_n for k, s in sums.items()},
        {k: s.ipw_n_sq for k, s in sums.items()},
        alpha=SRM_ALPHA, min_samples=min_samples,
        previous_p=min(prev_srm) if prev_srm else 1.0,
    )


def evaluate(
    design: Design,
    arm_sums: Mapping[str, ArmSums],
    previous: Mapping[str, PriorLook],
    *,
    now: datetime,
) -> Evaluation:
    """Always-valid evaluation of every treatment arm against the control (see module doc)."""
    seq, treatments = design.sequential, design.treatments
    sums = {k: arm_sums.get(k) or ArmSums() for k in design.arm_keys}
    t_total = sum(s.n for s in sums.values())
    method, warnings = choose_method(design, sums)
    plan = plan_look(design, sums, previous, method)
    results = _arm_tests(design, plan, sums, previous, t_total, warnings)
    raw_p = [r.p_value if (r := results[k]) is not None else 1.0 for k in treatments]
    adjusted = (holm_adjust(raw_p) if seq.correction == "holm" else bonferroni_adjust(raw_p)) \
        if treatments else []
    horizon_reached = seq.max_n is not None and t_total >= float(seq.max_n)
    srm = _srm(sums, previous, seq.min_samples)
    arms = tuple(arm_look(design, k, sums, results[k], p_adj, previous.get(k),
                          horizon_reached=horizon_reached)
                 for k, p_adj in zip(treatments, adjusted, strict=True))
    stop, stop_reason = stopping_rule(arms)
    if srm.mismatch:
        warnings.append(f"sample-ratio mismatch (always-valid p {srm.p_value:.3g}): the served "
                        "traffic does not match the logged propensities; results are suspect")
    return Evaluation(
        method=plan.method, alpha=seq.alpha, cs_alpha=plan.cs_alpha, tau2=plan.tau2,
        tau2_source=plan.tau2_source, theta0=seq.theta0, correction=seq.correction,
        min_samples=seq.min_samples, min_events=seq.min_events, alternative=seq.alternative,
        boundary=seq.boundary, horizon_plan=plan.horizon_plan, max_n=seq.max_n,
        impressions=t_total, control=design.control, arms=arms, srm=srm.as_dict(),
        stop=stop and not srm.mismatch, stop_reason=stop_reason, warnings=tuple(warnings),
        evaluated_at=now,
    )


def ship_problem(evaluation: Evaluation, *, arm: str, control: str) -> str:
    """Why the evaluation argues against shipping ``arm`` ('' when it does not).

    Against: shipping a treatment whose latest evaluation is not ``treatment_better`` (once
    the test has looked at enough data), or shipping the control while some treatment is
    ``treatment_better``. Without enough data there is no evidence either way.
    """
    if arm == control:
        better = [e.arm for e in evaluation.arms if e.decision == Decision.TREATMENT_BETTER]
        if better:
            return f"treatment arm(s) {', '.join(better)} are better than the control {arm!r}"
        return ""
    e = evaluation.arm(arm)
    if e is None or not e.valid or e.decision == Decision.TREATMENT_BETTER:
        return ""
    lo, hi = e.ci_low, e.ci_high
    return (f"arm {arm!r} is {e.decision.replace('_', ' ')} against control {control!r}: "
            f"estimate {e.estimate:+.4g}, always-valid p {e.p_adjusted:.3g}, confidence "
            f"sequence [{'-inf' if lo is None else f'{lo:.4g}'}, "
            f"{'inf' if hi is None else f'{hi:.4g}'}]")
