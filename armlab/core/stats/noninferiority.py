"""Guardrail metrics: an always-valid, one-sided non-inferiority test per (guardrail, arm) that
stays valid while a bandit moves traffic.

A guardrail metric is, per impression, one number y (0/1 for "any/first positive" feedback,
continuous otherwise) kept per arm as an :class:`armlab.core.evidence.ArmSums` with y in place
of the reward. With the harm direction s (+1 when an increase of y is harm, -1 when a decrease
is), the *excess harm* of treatment b over control a is

    absolute margin m >= 0:   E = s (mu_b - mu_a) - m
    relative margin r >= 0:   E = s (mu_b - g mu_a),  g = 1 + s r,

i.e. harm up to m (or up to r x the control's level) is tolerated. The arm **breaches** the
guardrail when the always-valid one-sided test rejects H0: E <= 0 at the guardrail's per-arm
alpha; **non-inferiority** is shown when the mirror-image test rejects H0: E >= 0.

Estimate and variance: the propensity-weighted (IPW) contributions of
:mod:`armlab.core.stats.adaptive` (Waudby-Smith, Wu, Ramdas, Karampatziakis & Mineiro,
"Anytime-valid off-policy inference for contextual bandits", 2023; Waudby-Smith, Arbour,
Sinha, Kennedy & Ramdas, "Time-uniform central limit theory and asymptotic confidence
sequences", 2021). For the relative margin the control's rewards are scaled by g before they
enter the contrast:

    Z_t(c) = 1{A_t = b} (y_t - c)/p_t(b) - 1{A_t = a} (g y_t - c)/p_t(a),
    E[Z_t | F_{t-1}] = mu_b - g mu_a         (for any constant c, as E[1{A=k}/p(k) | past] = 1),

so sum_t (Z_t - (mu_b - g mu_a)) is still a martingale with the logged propensities and the
asymptotic confidence sequence of the adaptive test applies unchanged. Scaling the control's
sums does exactly this: reward_sum, ipw_sum by g and reward_sumsq, ipw_sumsq by g² (the counts
n, ipw_n, ipw_n_sq are untouched). The control-variate centre of
:func:`armlab.core.stats.adaptive.ipw_kernel` then becomes c = (g S_a + S_b)/(n_a + n_b), the
pooled mean of the *transformed* rewards, which is the common level of both arms' terms on
the null boundary mu_b = g mu_a (where it removes the level from the variance, as it does for
g = 1); any c keeps the estimate unbiased. The per-arm second moments E[(g y - c)²] and
E[(y - c)²] come from the scaled sums. One correction is needed for 0/1 metrics: the
kernel's "realised" second moment uses y² = y, which no longer holds for g y; here
sum (g y - c)²/p² = (g² - 2 c g) sum y/p² + c² sum 1/p² is used instead (:func:`excess_kernel`,
equal to the kernel's value at g = 1). The harm direction only flips the sign of the
estimate (the variance is unchanged).

Test: the one-sided normal mixture (Johari, Koomen, Pekelis & Walsh, "Always Valid
Inference", Oper. Res. 2022, with the half-normal mixing of Howard, Ramdas, McAuliffe &
Sekhon, Ann. Statist. 2021; :func:`armlab.core.stats.msprt.log_lambda_greater`) on
D = s Zbar_T(g) with theta0 = m (absolute) or 0 (relative) and V = sigma_T²/T, so
p = min over looks of 1/Lambda+ is an always-valid p-value for H0: E <= 0 (Ville's
inequality). tau² follows the primary test's rule: Howard et al.'s §3.5 tuning at the IPW
variance the test expects at the planned horizon
(:func:`armlab.core.stats.adaptive.planned_variance` with the pooled variance of the metric).

Information gate: as the primary test, a look carries evidence only when both arms have
``min_samples`` impressions and ``min_events`` events of the metric
(:func:`armlab.core.stats.adaptive.informative`); gating looks cannot hurt validity.

Multiplicity (the caller's job, documented here): each guardrail has its own alpha_g; within a
guardrail the per-arm alpha is alpha_g / (number of treatment arms) (Bonferroni), so the
probability that any arm falsely breaches guardrail g over the whole experiment is <= alpha_g
and, by the union bound, the family-wise false-rollback rate over all guardrails is <= the
sum of their alphas.

Layout: the vectorised kernels live in :mod:`armlab.core.stats.noninferiority_kernels` (re-exported
here); this module holds the scalar test, :func:`guardrail_test`, as named steps: check the
look's inputs, estimate the excess, plan tau², test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from armlab.core.evidence import FIELDS, ArmSums
from armlab.core.stats.adaptive import (
    DEFAULT_PLAN_IMPRESSIONS,
    KERNEL_FIELDS,
    informative,
    ipw_moments,
)
from armlab.core.stats.msprt import cs_halfwidth, mixture_test
from armlab.core.stats.noninferiority_kernels import (
    HARMS,
    FloatArray,
    Harm,
    contrast,
    excess_kernel,
    log_lambda_plus,
    planned_tau2,
    pooled_variance,
    tau2_factor,
)
from armlab.errors import StatsError

__all__ = [
    "DEFAULT_FLOOR", "HARMS", "FloatArray", "GuardrailResult", "Harm", "contrast",
    "excess_kernel", "guardrail_test", "log_lambda_plus", "planned_tau2", "pooled_variance",
    "tau2_factor",
]

#: Exploration floor assumed for tau² planning when the caller does not say.
DEFAULT_FLOOR = 0.1


def _num(x: float | None) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float(x)


@dataclass(frozen=True)
class GuardrailResult:
    """One look of the guardrail test of one treatment arm (see the module doc).

    ``p_value`` is the running always-valid one-sided p-value for H0: E <= 0 (1.0 until a look
    is informative), the minimum with ``prior_p``; ``breached`` = p_value <= alpha.
    ``excess_low``/``excess_high``: two-sided always-valid confidence sequence for E at alpha
    (for display; intersected with the previous bounds when they are passed in).
    ``non_inferior``: the mirror-image one-sided test (H0: E >= 0) rejected at alpha, with its
    running p-value ``non_inferior_p``. ``tau2``: the mixing variance used (pass it back as
    ``tau2=`` to freeze it over the looks), None when none could be set yet.
    """

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
    tau2: float | None = None
    non_inferior_p: float = 1.0
    p_now: float = 1.0

    def as_dict(self) -> dict[str, object]:
        """JSON-safe: non-finite numbers become None."""
        return {
            "informative": bool(self.informative),
            "control_mean": _num(self.control_mean),
            "treatment_mean": _num(self.treatment_mean),
            "delta": _num(self.delta),
            "excess": _num(self.excess),
            "excess_low": _num(self.excess_low),
            "excess_high": _num(self.excess_high),
            "p_value": float(self.p_value),
            "breached": bool(self.breached),
            "non_inferior": bool(self.non_inferior),
            "alpha": float(self.alpha),
            "tau2": _num(self.tau2),
            "non_inferior_p": float(self.non_inferior_p),
            "p_now": float(self.p_now),
        }


def _arm(name: str, arm: ArmSums, *, binary: bool) -> ArmSums:
    if not isinstance(arm, ArmSums):
        raise StatsError(f"{name} must be ArmSums, got {type(arm).__name__}")
    checked = ArmSums(**{f: getattr(arm, f) for f in FIELDS})  # re-validates every field
    if binary and not (0.0 <= checked.reward_sum <= checked.n * (1 + 1e-9)):
        raise StatsError(f"{name}: reward_sum {checked.reward_sum!r} must lie in [0, n = "
                         f"{checked.n!r}] for a 0/1 guardrail metric")
    return checked


def _finite(name: str, value: float, *, lo: float | None = None, lo_open: bool = False,
            hi: float | None = None, hi_open: bool = False) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise StatsError(f"{name} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(x):
        raise StatsError(f"{name} must be a finite number, got {value!r}")
    if lo is not None and (x <= lo if lo_open else x < lo):
        raise StatsError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {value!r}")
    if hi is not None and (x >= hi if hi_open else x > hi):
        raise StatsError(f"{name} must be {'<' if hi_open else '<='} {hi}, got {value!r}")
    return x


@dataclass(frozen=True)
class _Look:
    """The checked inputs of one look of :func:`guardrail_test`: the arms, the contrast
    E = s (mu_b - g mu_a) - m, the tau² plan and the running values of earlier looks."""

    t: float
    a: ArmSums
    b: ArmSums
    s: float
    g: float
    m: float
    alpha: float
    binary: bool
    plan: float
    n_arms: int
    floor: float
    tau2: float | None
    p_prev: float
    ni_prev: float
    lo_prev: float
    hi_prev: float

    def result(self, gate: bool, delta: float | None, excess: float | None, p: float,
               ni_p: float, lo: float, hi: float, tau: float | None,
               p_now: float = 1.0) -> GuardrailResult:
        """The look's result from its p-values and bounds (breach/non-inferiority at alpha)."""
        return GuardrailResult(
            informative=gate, control_mean=self.a.mean, treatment_mean=self.b.mean,
            delta=delta, excess=excess, excess_low=_num(lo), excess_high=_num(hi), p_value=p,
            breached=p <= self.alpha, non_inferior=ni_p <= self.alpha, alpha=self.alpha,
            tau2=tau, non_inferior_p=ni_p, p_now=p_now)

    def carried(self, delta: float | None, excess: float | None, tau: float | None
                ) -> GuardrailResult:
        """A look without evidence: the earlier looks' running values, unchanged."""
        return self.result(False, delta, excess, self.p_prev, self.ni_prev, self.lo_prev,
                           self.hi_prev, tau)


def _check_look(
    t: float, control: ArmSums, treatment: ArmSums, *, harm: Harm, margin: float,
    relative: bool, alpha: float, binary: bool, min_events: int, min_samples: int,
    horizon: float | None, prior_p: float | None, n_arms: int, floor: float,
    tau2: float | None, prior_ni_p: float | None, prior_low: float | None,
    prior_high: float | None,
) -> _Look:
    """Validate the arguments of :func:`guardrail_test` (``StatsError`` naming the field)."""
    if harm not in HARMS:
        raise StatsError(f"harm must be one of {HARMS}, got {harm!r}")
    margin = _finite("margin", margin, lo=0.0)
    alpha = _finite("alpha", alpha, lo=0.0, lo_open=True, hi=1.0, hi_open=True)
    t = _finite("t", t, lo=0.0)
    if relative and harm == "decrease" and margin >= 1.0:
        raise StatsError(f"a relative margin for harm 'decrease' must be < 1 (a drop of 100% or "
                         f"more tolerates everything), got {margin!r}")
    if min_events < 0 or min_samples < 0:
        raise StatsError("min_events and min_samples must be >= 0")
    plan = _finite("horizon", DEFAULT_PLAN_IMPRESSIONS if horizon is None else horizon,
                   lo=0.0, lo_open=True)
    floor = _finite("floor", floor, lo=0.0, hi=0.5, hi_open=True)
    if int(n_arms) < 2:
        raise StatsError(f"n_arms must be >= 2, got {n_arms!r}")
    p_prev = 1.0 if prior_p is None else _finite("prior_p", prior_p, lo=0.0, hi=1.0)
    ni_prev = 1.0 if prior_ni_p is None else _finite("prior_ni_p", prior_ni_p, lo=0.0, hi=1.0)
    if tau2 is not None:
        tau2 = _finite("tau2", tau2, lo=0.0, lo_open=True)
    a = _arm("control", control, binary=binary)
    b = _arm("treatment", treatment, binary=binary)
    if t < a.n + b.n - 1e-9:
        raise StatsError(f"t ({t!r}) must count every impression of the experiment, at least "
                         f"control.n + treatment.n = {a.n + b.n!r}")
    s, g, m = contrast(harm, margin, relative)
    lo_prev = -math.inf if prior_low is None else float(prior_low)
    hi_prev = math.inf if prior_high is None else float(prior_high)
    if math.isnan(lo_prev) or math.isnan(hi_prev):
        raise StatsError("prior_low and prior_high must not be NaN")
    return _Look(t=t, a=a, b=b, s=s, g=g, m=m, alpha=alpha, binary=binary, plan=plan,
                 n_arms=int(n_arms), floor=floor, tau2=tau2, p_prev=p_prev, ni_prev=ni_prev,
                 lo_prev=lo_prev, hi_prev=hi_prev)


def _excess(look: _Look) -> tuple[float, float, float]:
    """(delta, excess, var): the plain IPW difference, the estimated excess harm E and its
    variance at this look (``StatsError`` when the sums give a non-finite estimate)."""
    a, b, t = look.a, look.b, look.t
    delta = ipw_moments(t, a, b, binary=look.binary).estimate
    arrays = [np.asarray(getattr(x, f), dtype=np.float64) for x in (a, b) for f in KERNEL_FIELDS]
    est, sigma2, _ = excess_kernel(np.asarray(t, dtype=np.float64), *arrays, sign=look.s,
                                   scale=look.g, binary=look.binary)
    d, var = float(est), float(sigma2) / t
    if not (math.isfinite(d) and math.isfinite(var)):
        raise StatsError("arm sums give a non-finite IPW estimate")
    return delta, d - look.m, var


def _look_tau2(look: _Look) -> float | None:
    """The caller's tau², else the planned one from the pooled variance of the metric (None
    while that variance is still 0)."""
    if look.tau2 is not None:
        return look.tau2
    a, b = look.a, look.b
    tot = [np.asarray(x, dtype=np.float64) for x in
           (a.n + b.n, a.reward_sum + b.reward_sum, a.reward_sumsq + b.reward_sumsq)]
    pooled = float(pooled_variance(*tot, binary=look.binary))
    if pooled > 0.0:
        return float(planned_tau2(pooled, look.plan, n_arms=look.n_arms, floor=look.floor,
                                  alpha=look.alpha))
    return None


def _informative_look(look: _Look, delta: float, excess: float, var: float, tau2: float
                      ) -> GuardrailResult:
    """The one-sided harm and non-inferiority tests and the two-sided confidence sequence of
    an informative look, combined with the earlier looks' running values."""
    alpha = look.alpha
    harm_test = mixture_test(excess, var, tau2=tau2, alpha=alpha, alternative="greater")
    ni_test = mixture_test(-excess, var, tau2=tau2, alpha=alpha, alternative="greater")
    half = float(cs_halfwidth(var, tau2, alpha))
    return look.result(True, delta, excess, min(look.p_prev, harm_test.p_now),
                       min(look.ni_prev, ni_test.p_now), max(look.lo_prev, excess - half),
                       min(look.hi_prev, excess + half), tau2, harm_test.p_now)


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
    n_arms: int = 2,
    floor: float = DEFAULT_FLOOR,
    tau2: float | None = None,
    prior_ni_p: float | None = None,
    prior_low: float | None = None,
    prior_high: float | None = None,
) -> GuardrailResult:
    """One look of the always-valid non-inferiority test of ``treatment`` against ``control``.

    ``t``: impressions over ALL arms of the experiment (the IPW average runs over every
    impression). ``alpha``: the per-arm alpha (the caller divides the guardrail's alpha by the
    number of treatments). ``horizon``: planned impressions over all arms (default
    ``DEFAULT_PLAN_IMPRESSIONS``), ``n_arms`` and ``floor`` (the experiment's arm count and
    exploration floor; 0 for a fixed split) tune tau² as the primary test does; ``tau2``
    overrides it (pass back the returned value to freeze it). ``prior_p`` / ``prior_ni_p`` /
    ``prior_low`` / ``prior_high``: the running values from earlier looks. Raises
    ``StatsError`` with the offending field for invalid input.
    """
    look = _check_look(t, control, treatment, harm=harm, margin=margin, relative=relative,
                       alpha=alpha, binary=binary, min_events=min_events,
                       min_samples=min_samples, horizon=horizon, prior_p=prior_p,
                       n_arms=n_arms, floor=floor, tau2=tau2, prior_ni_p=prior_ni_p,
                       prior_low=prior_low, prior_high=prior_high)
    if look.a.n == 0 or look.b.n == 0 or look.t < 2:
        return look.carried(None, None, look.tau2)
    delta, excess, var = _excess(look)
    tau2_used = _look_tau2(look)
    gate = informative(look.a, look.b, binary=binary, min_samples=min_samples,
                       min_events=min_events)
    if not gate or tau2_used is None or var <= 0.0:
        return look.carried(delta, excess, tau2_used)
    return _informative_look(look, delta, excess, var, tau2_used)
