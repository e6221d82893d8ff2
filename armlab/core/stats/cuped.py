"""CUPED under a bandit: a pre-period covariate as a control variate of the IPW test.

Not wired into the platform (it needs a per-unit pre-period covariate in the specs and the
per-arm sums below in ingestion); the validity grid runs it on sticky-user cells
(``CellConfig.pre_impressions``, analyses ``armlab_cuped`` / ``armlab_cuped_horizon``).

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

import numpy as np
import numpy.typing as npt

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
