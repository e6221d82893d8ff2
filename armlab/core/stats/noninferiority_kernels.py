"""The vectorised kernels of the guardrail test (:mod:`armlab.core.stats.noninferiority`, whose
module doc derives them): the contrast E = s (mu_b - g mu_a) - m, its IPW estimate and
variance, the pooled variance and tau² planning, and the one-sided mixture. The scalar test
and the Monte Carlo simulator (:mod:`armlab.core.stats.guardrail_simulation`) run the same code."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy.special import log_ndtr

from armlab.core.stats.adaptive import ipw_kernel, planned_variance
from armlab.core.stats.msprt import tau2_for_horizon

Harm = Literal["increase", "decrease"]
HARMS = ("increase", "decrease")
FloatArray = npt.NDArray[np.float64]


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
