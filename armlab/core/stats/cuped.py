"""CUPED under a bandit: a pre-period covariate as a control variate of the IPW test.

The platform runs it for ``unit: user`` experiments with ``sequential.cuped`` (the per-arm
covariate sums come from :func:`armlab.adapters.db.queries.unit_covariate_sums`, the look
from :mod:`armlab.services.cuped_evidence` through :func:`adjust_arms`); the validity grid runs
it on sticky-user cells (``CellConfig.pre_impressions``, analyses ``armlab_cuped`` /
``armlab_cuped_horizon``).

For unit u with outcome Y_u, a covariate X_u fixed before its first exposure (its clicks in a
pre-period, Deng, Xu, Kohavi & Walker, "Improving the sensitivity of online controlled
experiments by utilizing pre-experiment data", WSDM 2013) and any constant theta, the IPW
increment of :mod:`armlab.core.stats.adaptive` on Y'_u = Y_u - theta X_u,

    Z_u(theta) = 1{A_u = b} (Y'_u - c) / p_u(b) - 1{A_u = a} (Y'_u - c) / p_u(a),

still has E[Z_u | past] = mu_b - mu_a: X_u does not depend on the arm, so theta E[X] enters
both arms' terms and cancels (E[1{A=k}/p(k) | past] = 1). So the adaptive-valid test and
its confidence sequence apply unchanged to Y' (the augmented IPW of Waudby-Smith et al. 2023
with a linear outcome model in X), and the variance of Z shrinks by the factor 1 - rho² for the
within-arm correlation rho of Y and X. theta is the pooled within-arm least-squares slope; like
the control variate c it is estimated from the data, which perturbs the sum by
(theta_hat - theta) x (a mean-zero martingale), O(1) against the O(sqrt(T log T)) boundary.

Per arm the test needs, beside :class:`armlab.core.evidence.ArmSums`, the sums over the arm's
units of X, X², XY (plain) and X/p, X²/p², XY/p² (inverse-propensity weighted); Y'-sums are
linear in them (:func:`adjusted_sums`), so the kernel is the platform's
:func:`armlab.core.stats.adaptive.ipw_kernel`, run on the adjusted sums.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from armlab.core.evidence import ArmSums

FloatArray = npt.NDArray[np.float64]


def pooled_slope(n: tuple[FloatArray, FloatArray], y: tuple[FloatArray, FloatArray],
                 x: tuple[FloatArray, FloatArray], xx: tuple[FloatArray, FloatArray],
                 xy: tuple[FloatArray, FloatArray]) -> FloatArray:
    """theta = sum_k S_xy,k / sum_k S_xx,k, the within-arm slope of Y on X pooled over the two
    arms (S_xy,k = sum XY - sum X sum Y / n_k); 0 where X does not vary."""
    sxy = np.zeros_like(np.asarray(n[0], dtype=np.float64))
    sxx = np.zeros_like(sxy)
    for k in (0, 1):
        nk = np.maximum(n[k], 1.0)
        sxy = sxy + xy[k] - x[k] * y[k] / nk
        sxx = sxx + xx[k] - x[k] * x[k] / nk
    ok = sxx > 0
    return np.where(ok, sxy / np.where(ok, sxx, 1.0), 0.0)


def adjusted_sums(theta: FloatArray, n: FloatArray, y: FloatArray, yy: FloatArray,
                  ipw_n: FloatArray, ipw_y: FloatArray, ipw_yy: FloatArray, ipw_n_sq: FloatArray,
                  x: FloatArray, xx: FloatArray, xy: FloatArray, ipw_x: FloatArray,
                  ipw_xx: FloatArray, ipw_xy: FloatArray) -> tuple[FloatArray, ...]:
    """The seven kernel sums (``ArmSums`` order: n, reward_sum, reward_sumsq, ipw_n, ipw_sum,
    ipw_sumsq, ipw_n_sq) of one arm for Y' = Y - theta X. ``ipw_yy`` = sum Y²/p², ``ipw_xx`` =
    sum X²/p², ``ipw_xy`` = sum XY/p² (the second moments the kernel's variance reads)."""
    t2 = theta * theta
    return (n, y - theta * x, yy - 2.0 * theta * xy + t2 * xx, ipw_n, ipw_y - theta * ipw_x,
            ipw_yy - 2.0 * theta * ipw_xy + t2 * ipw_xx, ipw_n_sq)


def variance_reduction(rho: float) -> float:
    """Var(Z(theta*)) / Var(Z(0)) for the optimal theta: 1 - rho² (the CUPED factor)."""
    return 1.0 - rho * rho


@dataclass(frozen=True, slots=True)
class CovariateSums:
    """One arm's covariate sums over its units (X_u the unit's pre-period covariate, Y_u its
    outcome, p_u its sticky propensity): ``pre_units`` = units seen in the pre-period (the
    others have X_u = 0), then sum X, X², XY and X/p, X²/p², XY/p²."""

    pre_units: float = 0.0
    x: float = 0.0
    xx: float = 0.0
    xy: float = 0.0
    ipw_x: float = 0.0
    ipw_xx: float = 0.0
    ipw_xy: float = 0.0


@dataclass(frozen=True, slots=True)
class CupedFit:
    """What one look's adjustment did: theta (the pooled within-arm slope of Y on X), the
    pooled within-arm correlation rho, ``variance_ratio`` = Var(Y - theta X) / Var(Y) within
    arms (= 1 - rho² at this theta; 1 when X explains nothing), and the units analysed and
    how many of them the pre-period saw."""

    theta: float = 0.0
    rho: float = 0.0
    variance_ratio: float = 1.0
    units: float = 0.0
    pre_units: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def adjust_arms(sums: Mapping[str, ArmSums], cov: Mapping[str, CovariateSums]
                ) -> tuple[dict[str, ArmSums], CupedFit]:
    """Every arm's :class:`ArmSums` of Y' = Y - theta X (:func:`adjusted_sums`), theta the
    within-arm least-squares slope pooled over all arms (:func:`pooled_slope` for K arms),
    estimated from the same units at every look; the counts (n, ipw_n, ipw_n_sq, feedback_n)
    are untouched, so the look gate, the SRM check and the horizon count the same units."""
    sxy = sxx = syy = 0.0
    for k, s in sums.items():
        c = cov.get(k) or CovariateSums()
        if s.n <= 0:
            continue
        sxy += c.xy - c.x * s.reward_sum / s.n
        sxx += c.xx - c.x * c.x / s.n
        syy += s.reward_sumsq - s.reward_sum * s.reward_sum / s.n
    theta = sxy / sxx if sxx > 1e-12 else 0.0
    rho = sxy / math.sqrt(sxx * syy) if sxx > 1e-12 and syy > 1e-12 else 0.0
    ratio = ((syy - 2.0 * theta * sxy + theta * theta * sxx) / syy) if syy > 1e-12 else 1.0
    out: dict[str, ArmSums] = {}
    for k, s in sums.items():
        c = cov.get(k) or CovariateSums()
        n, y, yy, i_n, i_y, i_yy, i_nsq = adjusted_sums(*(np.asarray(v, dtype=np.float64) for v in (
            theta, s.n, s.reward_sum, s.reward_sumsq, s.ipw_n, s.ipw_sum, s.ipw_sumsq,
            s.ipw_n_sq, c.x, c.xx, c.xy, c.ipw_x, c.ipw_xx, c.ipw_xy)))
        out[k] = ArmSums(n=float(n), reward_sum=float(y), reward_sumsq=max(float(yy), 0.0),
                         ipw_n=float(i_n), ipw_sum=float(i_y), ipw_sumsq=max(float(i_yy), 0.0),
                         ipw_n_sq=float(i_nsq), feedback_n=s.feedback_n)
    fit = CupedFit(theta=float(theta), rho=float(max(min(rho, 1.0), -1.0)),
                   variance_ratio=float(max(min(ratio, 1.0), 0.0)),
                   units=float(sum(s.n for s in sums.values())),
                   pre_units=float(sum((cov.get(k) or CovariateSums()).pre_units
                                       for k in sums)))
    return out, fit
