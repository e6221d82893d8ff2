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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy.special import log_ndtr

from armlab.core.evidence import FIELDS, ArmSums
from armlab.core.stats.adaptive import (
    DEFAULT_PLAN_IMPRESSIONS,
    KERNEL_FIELDS,
    informative,
    ipw_kernel,
    ipw_moments,
    planned_variance,
)
from armlab.core.stats.msprt import cs_halfwidth, mixture_test, tau2_for_horizon
from armlab.errors import StatsError

Harm = Literal["increase", "decrease"]
HARMS = ("increase", "decrease")
FloatArray = npt.NDArray[np.float64]
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


# ---------------------------------------------------------------------------------------------
# Vectorised kernels (the scalar test and the Monte Carlo simulator run the same code)


def contrast(harm: Harm, margin: float, relative: bool) -> tuple[float, float, float]:
    """(s, g, m): harm sign, control scale and absolute margin of E = s (mu_b - g mu_a) - m."""
    s = 1.0 if harm == "increase" else -1.0
    if relative:
        return s, 1.0 + s * margin, 0.0
    return s, 1.0, margin


def excess_kernel(
    t: FloatArray,
    n_a: FloatArray, rs_a: FloatArray, rss_a: FloatArray,
    in_a: FloatArray, is_a: FloatArray, iss_a: FloatArray, ins_a: FloatArray,
    n_b: FloatArray, rs_b: FloatArray, rss_b: FloatArray,
    in_b: FloatArray, is_b: FloatArray, iss_b: FloatArray, ins_b: FloatArray,
    *,
    sign: float,
    scale: float,
    binary: bool,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(s · mean of Z(c), variance of Z(c), c) for the contrast mu_b - scale · mu_a.

    :func:`armlab.core.stats.adaptive.ipw_kernel` on the control's sums scaled by g
    (first moments x g, second moments x g²), with the binary "realised" second moment
    recomputed for the scaled control, sum (g y - c)²/p² = (g² - 2 c g) sum y/p² + c² sum 1/p²
    (y = y² for 0/1 metrics); at g = 1 this is exactly ``ipw_kernel(..., binary=True)``.
    Arguments per arm in ``ArmSums`` order (n, reward_sum, reward_sumsq, ipw_n, ipw_sum,
    ipw_sumsq, ipw_n_sq); arrays of any common shape; requires n_a, n_b > 0 and t > 1.
    """
    g = scale
    mean, sigma2, c = ipw_kernel(t, n_a, g * rs_a, g * g * rss_a, in_a, g * is_a,
                                 g * g * iss_a, ins_a, n_b, rs_b, rss_b, in_b, is_b, iss_b,
                                 ins_b, binary=False)
    if binary:
        realised = (np.maximum((g * g - 2.0 * c * g) * iss_a + c * c * ins_a, 0.0)
                    + np.maximum((1.0 - 2.0 * c) * iss_b + c * c * ins_b, 0.0)) / t
        extra = np.maximum(realised - mean * mean, 0.0) * t / np.maximum(t - 1.0, 1.0)
        sigma2 = np.maximum(sigma2, extra)
    return sign * mean, sigma2, c


def pooled_variance(n: FloatArray, s: FloatArray, ss: FloatArray, *, binary: bool
                    ) -> FloatArray:
    """Pooled per-impression variance of the metric over both arms (n, sum, sum of squares
    already added over the arms), as the primary test's tau² planning uses it."""
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(n > 0, s / np.maximum(n, 1.0), 0.0)
        if binary:
            return np.where(n >= 2, mean * (1.0 - mean), 0.0)
        var = np.maximum(ss / np.maximum(n, 1.0) - mean * mean, 0.0) * n / np.maximum(n - 1, 1)
        return np.where(n >= 2, var, 0.0)


def tau2_factor(alpha: float) -> float:
    """tau² / Var(D) at the horizon of Howard et al.'s (2021, §3.5) tuning rule (≈ 8.2 at 0.05)."""
    return tau2_for_horizon(1.0, alpha)


def planned_tau2(sigma2: FloatArray | float, horizon: float, *, n_arms: int, floor: float,
                 alpha: float) -> FloatArray:
    """tau² for the guardrail test: the primary test's rule, Howard et al.'s tuning at the IPW
    variance expected after ``horizon`` impressions over ``n_arms`` arms with exploration
    floor ``floor`` (:func:`armlab.core.stats.adaptive.planned_variance`)."""
    v = planned_variance(1.0, horizon, n_arms, method="ipw", floor=floor)
    return np.asarray(sigma2, dtype=np.float64) * v * tau2_factor(alpha)


def log_lambda_plus(estimate: FloatArray, variance: FloatArray, tau2: FloatArray | float,
                    theta0: float = 0.0) -> FloatArray:
    """log Lambda+ of the one-sided normal mixture (as
    :func:`armlab.core.stats.msprt.log_lambda_greater`) with an array-valued tau²:
    log 2 + log Lambda + log Phi(d tau / sqrt(V (V + tau²))), d = D - theta0."""
    d = np.asarray(estimate, dtype=np.float64) - theta0
    v = np.asarray(variance, dtype=np.float64)
    tau2a = np.asarray(tau2, dtype=np.float64)
    z = d * np.sqrt(tau2a) / np.sqrt(v * (v + tau2a))
    # log Lambda of the two-sided mixture (:func:`armlab.core.stats.msprt.log_lambda`)
    two_sided = 0.5 * (np.log(v) - np.log(v + tau2a)) + tau2a * d * d / (2.0 * v * (v + tau2a))
    return math.log(2.0) + two_sided + log_ndtr(z)


# ---------------------------------------------------------------------------------------------
# The test


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

    def result(gate: bool, delta: float | None, excess: float | None, p: float,
               ni_p: float, lo: float, hi: float, tau: float | None,
               p_now: float = 1.0) -> GuardrailResult:
        return GuardrailResult(
            informative=gate, control_mean=a.mean, treatment_mean=b.mean, delta=delta,
            excess=excess, excess_low=_num(lo), excess_high=_num(hi), p_value=p,
            breached=p <= alpha, non_inferior=ni_p <= alpha, alpha=alpha, tau2=tau,
            non_inferior_p=ni_p, p_now=p_now)

    if a.n == 0 or b.n == 0 or t < 2:
        return result(False, None, None, p_prev, ni_prev, lo_prev, hi_prev, tau2)
    delta = ipw_moments(t, a, b, binary=binary).estimate
    arrays = [np.asarray(getattr(x, f), dtype=np.float64) for x in (a, b) for f in KERNEL_FIELDS]
    est, sigma2, _ = excess_kernel(np.asarray(t, dtype=np.float64), *arrays, sign=s, scale=g,
                                   binary=binary)
    d, var = float(est), float(sigma2) / t
    if not (math.isfinite(d) and math.isfinite(var)):
        raise StatsError("arm sums give a non-finite IPW estimate")
    excess = d - m
    if tau2 is None:
        tot = [np.asarray(x, dtype=np.float64) for x in
               (a.n + b.n, a.reward_sum + b.reward_sum, a.reward_sumsq + b.reward_sumsq)]
        pooled = float(pooled_variance(*tot, binary=binary))
        if pooled > 0.0:
            tau2 = float(planned_tau2(pooled, plan, n_arms=int(n_arms), floor=floor,
                                      alpha=alpha))
    gate = informative(a, b, binary=binary, min_samples=min_samples, min_events=min_events)
    if not gate or tau2 is None or var <= 0.0:
        return result(False, delta, excess, p_prev, ni_prev, lo_prev, hi_prev, tau2)
    harm_test = mixture_test(excess, var, tau2=tau2, alpha=alpha, alternative="greater")
    ni_test = mixture_test(-excess, var, tau2=tau2, alpha=alpha, alternative="greater")
    half = float(cs_halfwidth(var, tau2, alpha))
    return result(True, delta, excess, min(p_prev, harm_test.p_now),
                  min(ni_prev, ni_test.p_now), max(lo_prev, excess - half),
                  min(hi_prev, excess + half), tau2, harm_test.p_now)
