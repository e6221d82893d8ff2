"""One-sided always-valid non-inferiority test of a guardrail metric, treatment against
control, valid under bandit allocation.

SIMPLE INTERIM VERSION, built directly on :func:`armlab.core.stats.adaptive.ipw_msprt`; the
full version (its own tuning and simulation evidence) replaces this module with the same
signature.

Semantics: s = +1 for ``harm="increase"``, -1 for ``"decrease"``; the excess harm of treatment
b over control a is ``E = s (mu_b - mu_a) - m`` (absolute margin m) or
``E = s (mu_b - (1 + s r) mu_a)`` (relative margin r; the control's sums scaled by
``1 + s r``, still a martingale difference sequence with the logged propensities). A breach is
the always-valid one-sided test rejecting H0: E <= 0 at ``alpha`` (Waudby-Smith et al. 2023,
the IPW increments of :mod:`armlab.core.stats.adaptive`; the one-sided half-normal mixture of
:mod:`armlab.core.stats.msprt`); non-inferiority is the test in the other direction rejecting
H0: E >= 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from armlab.core.evidence import ArmSums
from armlab.core.stats.adaptive import informative, ipw_msprt
from armlab.core.stats.msprt import Alternative, MsprtResult, MsprtState, tau2_for_horizon

Harm = Literal["increase", "decrease"]

DEFAULT_HORIZON = 20_000.0


@dataclass(frozen=True)
class GuardrailResult:
    informative: bool
    control_mean: float | None
    treatment_mean: float | None
    delta: float | None
    excess: float | None
    excess_low: float | None
    excess_high: float | None
    p_value: float
    breached: bool
    non_inferior: bool
    alpha: float

    def as_dict(self) -> dict[str, object]:
        def num(x: float | None) -> float | None:
            return None if x is None or not math.isfinite(x) else float(x)

        return {
            "informative": self.informative, "control_mean": num(self.control_mean),
            "treatment_mean": num(self.treatment_mean), "delta": num(self.delta),
            "excess": num(self.excess), "excess_low": num(self.excess_low),
            "excess_high": num(self.excess_high), "p_value": float(self.p_value),
            "breached": self.breached, "non_inferior": self.non_inferior,
            "alpha": float(self.alpha),
        }


def _scaled(s: ArmSums, c: float) -> ArmSums:
    """The sums of c·y instead of y."""
    return ArmSums(n=s.n, reward_sum=c * s.reward_sum, reward_sumsq=c * c * s.reward_sumsq,
                   ipw_n=s.ipw_n, ipw_sum=c * s.ipw_sum, ipw_sumsq=c * c * s.ipw_sumsq,
                   ipw_n_sq=s.ipw_n_sq, feedback_n=s.feedback_n)


def _variance(a: ArmSums, b: ArmSums, binary: bool) -> float:
    n = a.n + b.n
    if n < 2:
        return 0.0
    mean = (a.reward_sum + b.reward_sum) / n
    if binary:
        return mean * (1.0 - mean)
    return max((a.reward_sumsq + b.reward_sumsq) / n - mean * mean, 0.0)


def guardrail_test(
    t: float,
    control: ArmSums,
    treatment: ArmSums,
    *,
    harm: Harm,
    margin: float,
    relative: bool,
    alpha: float,
    binary: bool,
    min_events: int = 30,
    min_samples: int = 1,
    horizon: float | None = None,
    prior_p: float | None = None,
) -> GuardrailResult:
    """One look (see the module doc). ``t``: impressions over all arms; ``prior_p``: the
    running p-value of earlier looks (the returned p is the minimum)."""
    s = 1.0 if harm == "increase" else -1.0
    a_mean, b_mean = control.mean, treatment.mean
    gate = informative(control, treatment, binary=binary, min_samples=min_samples,
                       min_events=min_events)
    sigma2 = _variance(control, treatment, binary)
    prior = 1.0 if prior_p is None else min(max(float(prior_p), 0.0), 1.0)
    if not gate or sigma2 <= 0.0 or t < 2:
        return GuardrailResult(False, a_mean, b_mean, None, None, None, None, prior,
                               prior <= alpha, False, alpha)
    tau2 = tau2_for_horizon(sigma2 * 4.0 / float(horizon or DEFAULT_HORIZON), alpha)
    if relative:
        a_eff, theta = _scaled(control, 1.0 + s * margin), 0.0
        bin_eff = False
    else:
        a_eff, theta = control, margin
        bin_eff = binary

    def run(a: ArmSums, b: ArmSums, theta0: float, alternative: Alternative = "greater"
            ) -> MsprtResult:
        return ipw_msprt(t, a, b, tau2=tau2, theta0=theta0, alpha=alpha, binary=bin_eff,
                         min_samples=min_samples, min_events=0, state=MsprtState(),
                         alternative=alternative)

    # E > 0  <=>  s (mu_b - c mu_a) > theta
    if s > 0:
        harm_r, ok_r = run(a_eff, treatment, theta), run(treatment, a_eff, -theta)
    else:
        harm_r, ok_r = run(treatment, a_eff, theta), run(a_eff, treatment, -theta)
    two = run(a_eff, treatment, 0.0, "two-sided")
    excess = s * two.estimate - theta
    lo, hi = sorted((s * two.ci_low_now - theta, s * two.ci_high_now - theta))
    delta = run(control, treatment, 0.0, "two-sided").estimate
    p = min(prior, float(harm_r.p_now)) if harm_r.valid else prior
    return GuardrailResult(
        informative=harm_r.valid, control_mean=a_mean, treatment_mean=b_mean, delta=delta,
        excess=excess, excess_low=lo, excess_high=hi, p_value=p, breached=p <= alpha,
        non_inferior=bool(ok_r.valid and ok_r.p_now <= alpha), alpha=alpha,
    )
