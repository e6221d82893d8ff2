"""The optional horizon boundary of the mSPRT (``sequential.boundary: horizon``): a flat
boundary on the sum scale up to a planned information, beside the mixture of
:mod:`armlab.core.stats.mixture` with the rest of alpha (see :class:`HorizonBoundary`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr, ndtri

from armlab.core.stats.mixture import (
    Alternative,
    FloatArray,
    _check_alpha,
    cs_halfwidth,
    lower_margin_greater,
)
from armlab.errors import StatsError

DEFAULT_HORIZON_SHARE = 0.8  # share of alpha on the flat boundary (0.04 of 0.05)


@dataclass(frozen=True)
class HorizonBoundary:
    """A flat boundary on the sum scale up to a planned information, beside the mixture.

    Write S_t = t (D_t - theta0) for the sum the estimate averages (t = impressions: for the
    IPW test S_t = sum of the IPW increments Z_s; for a fixed 50/50 split 2 (sum of the
    treatment's rewards - sum of the control's)) and V_t = t² Var(D_t) for its variance (the
    sum of the conditional variances of the increments, the martingale's intrinsic time).
    Under theta = theta0, S is a martingale and, by the martingale CLT / Dambis-Dubins-Schwarz,
    close to a Brownian motion W run in intrinsic time: S_t ≈ W(V_t). The reflection principle
    gives P(sup_{v <= V_plan} W(v) >= c sqrt(V_plan)) = 2 (1 - Phi(c)) (Siegmund, "Sequential
    Analysis", 1985, §3.1; the continuous-monitoring limit of Lan & DeMets' "Discrete
    sequential boundaries for clinical trials", Biometrika 1983, whose discrete looks cross
    less often). So the flat boundary

        |S_t| >= c2 sqrt(V_plan), c2 = Phi^-1(1 - alpha1/4)   (two-sided), or
         S_t  >= c1 sqrt(V_plan), c1 = Phi^-1(1 - alpha1/2)   (greater),

    active only while V_t <= V_plan, is crossed under the null with probability <= alpha1 at
    any number of looks, and its p-value p_h = 4 (1 - Phi(|S_t|/sqrt(V_plan))) (two-sided) or
    2 (1 - Phi(S_t/sqrt(V_plan))) (greater) satisfies P(exists t: p_h,t <= x) <= x for every
    x. Beyond V_plan it is switched off and only the mixture (valid at all times) remains.
    The test spends ``share`` of alpha on the flat boundary and the rest on the mixture:
    p = min(p_h / share, p_mix / (1 - share)) is then an always-valid p-value (a union bound,
    the time-uniform argument of Howard, Ramdas, McAuliffe & Sekhon 2021, §2), and the
    confidence sequence is the intersection of the flat one (D ± c sqrt(V_plan)/t) at
    share·alpha and the mixture one at (1 - share)·alpha.

    Why: the mixture boundary, tuned for the horizon, sits at about 3.0 standard errors there
    (alpha 0.05, two-sided); the flat one at 2.33 (two-sided) or 2.05 (greater) with alpha1 =
    0.04, and every look before the horizon sees the same boundary on the sum scale. The price
    is beyond the plan: only alpha2 = 0.01 is left for an experiment that runs past it.
    ``v_plan`` must be fixed before the data it tests (armlab derives it from the frozen
    tau², see :func:`variance_for_tau2`); V_t is the test's own (conservative) variance
    estimate, so an underestimated plan only switches the boundary off earlier.

    info: V_plan, the planned variance of S at the horizon (t_plan² x planned Var(D));
    t: this look's scale (impressions; S = t (D - theta0)); share: alpha1 / alpha.
    """

    info: float
    t: float
    share: float = DEFAULT_HORIZON_SHARE

    def __post_init__(self) -> None:
        if not (self.info > 0.0 and math.isfinite(self.info)):
            raise StatsError(f"horizon info must be positive and finite, got {self.info!r}")
        if not (self.t >= 0.0 and math.isfinite(self.t)):
            raise StatsError(f"horizon t must be >= 0 and finite, got {self.t!r}")
        if not (0.0 < self.share < 1.0):
            raise StatsError(f"horizon share must lie in (0, 1), got {self.share!r}")


def horizon_critical(alpha1: float, alternative: Alternative = "two-sided") -> float:
    """c with the flat boundary's crossing probability alpha1 (see :class:`HorizonBoundary`)."""
    _check_alpha(alpha1)
    return float(ndtri(1.0 - alpha1 / (2.0 if alternative == "greater" else 4.0)))


def horizon_p(score: FloatArray | float, alternative: Alternative = "two-sided") -> FloatArray:
    """p-value of the flat boundary for score = S_t / sqrt(V_plan) (vectorised)."""
    z = np.asarray(score, dtype=np.float64)
    if alternative == "greater":
        return np.minimum(1.0, 2.0 * ndtr(-z))
    return np.minimum(1.0, 4.0 * ndtr(-np.abs(z)))


def _with_horizon(h: HorizonBoundary, estimate: float, variance: float, tau2: float,
                  theta0: float, alpha: float, alternative: Alternative, p_mix: float
                  ) -> tuple[float, float, float]:
    """(p, ci_low, ci_high) of this look with the horizon boundary beside the mixture."""
    a1, a2 = h.share * alpha, (1.0 - h.share) * alpha
    if alternative == "greater":
        lo, hi = estimate - lower_margin_greater(variance, tau2, a2), math.inf
    else:
        half = float(cs_halfwidth(variance, tau2, a2))
        lo, hi = estimate - half, estimate + half
    p_h = 1.0
    if h.t > 0 and h.t * h.t * variance <= h.info:  # still inside the planned information
        root = math.sqrt(h.info)
        p_h = float(horizon_p(h.t * (estimate - theta0) / root, alternative))
        margin = horizon_critical(a1, alternative) * root / h.t
        lo = max(lo, estimate - margin)
        if alternative != "greater":
            hi = min(hi, estimate + margin)
    return min(1.0, p_h / h.share, p_mix / (1.0 - h.share)), lo, hi
