"""What power a valid sequential test can have under a bandit's allocation: the arithmetic
behind the power figures of the validity grid (docs/statistics.md, "Power").

Every always-valid test armlab runs reduces, at the horizon, to a martingale S_T = T·D_T whose
drift is delta·T and whose variance (intrinsic time) is V_T = T² Var(D_T). What a test can
reach is therefore fixed by one number, the drift in standard errors at the horizon,

    z = delta / sqrt(Var(D_T)),  Var(D_T) = sigma² · (mean over t of sum_k 1/p_t(k)) / T

for the IPW test (:func:`armlab.core.stats.adaptive.planned_variance`; sigma² the reward
variance, the mean inverse-propensity sum of the compared pair 4 for a 50/50 split and up to
1/f + 1/(1 - f) when the bandit holds the control at the floor f). Given z:

* no level-alpha test of the data up to the horizon beats the fixed-sample z-test
  (Neyman-Pearson): power <= Phi(z - z_{1-alpha}) one-sided, Phi(z - z_{1-alpha/2}) (+ the
  wrong tail) two-sided (:func:`fixed_sample_power`);
* a flat boundary c·sqrt(V_T) watched continuously is crossed by W(v) + z v (v in [0, 1],
  V_T scaled to 1) with probability Phi(z - c) + exp(2 z c) Phi(-c - z) (Siegmund 1985,
  §3.1; :func:`flat_boundary_power`); c = Phi^-1(1 - alpha1/2) one-sided, Phi^-1(1 - alpha1/4)
  two-sided (:func:`armlab.core.stats.horizon.horizon_critical`);
* the normal-mixture boundary (valid at all times) has no closed form:
  :func:`boundary_power` simulates it (and the horizon boundary) on a Gaussian random walk
  with that drift, with the same kernels the platform runs. In standard errors it never drops
  below :func:`mixture_floor_se` (3.03 two-sided at alpha 0.05), its value at the time tau² is
  tuned for.

:func:`z_needed` inverts :func:`boundary_power`, and :func:`inverse_sum_for_z` turns a z into
the mean inverse-propensity sum the allocation would have to keep: the bandit's allocation
either leaves that much information or the target cannot be met by any valid test.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from scipy.special import ndtr, ndtri

from armlab.core.stats.horizon import DEFAULT_HORIZON_SHARE, horizon_critical, horizon_p
from armlab.core.stats.mixture import (
    Alternative,
    _check_alpha,
    log_lambda,
    log_lambda_greater,
    tau2_for_horizon,
)
from armlab.errors import StatsError

Boundary = Literal["mixture", "horizon"]


def ipw_z(delta: float, sigma2: float, impressions: float, inverse_sum: float) -> float:
    """Drift in standard errors at the horizon: delta / sqrt(sigma2 · inverse_sum / T)."""
    if not (sigma2 > 0 and impressions > 0 and inverse_sum > 0):
        raise StatsError("sigma2, impressions and inverse_sum must be positive")
    return float(delta / math.sqrt(sigma2 * inverse_sum / impressions))


def inverse_sum_for_z(z: float, delta: float, sigma2: float, impressions: float) -> float:
    """The mean inverse-propensity sum of the pair that gives drift ``z`` at the horizon."""
    if not (z > 0 and sigma2 > 0 and impressions > 0):
        raise StatsError("z, sigma2 and impressions must be positive")
    return float(delta * delta * impressions / (sigma2 * z * z))


def fixed_sample_power(z: float, alpha: float = 0.05,
                       alternative: Alternative = "two-sided") -> float:
    """Power of the one-look z-test at the horizon: the ceiling of every valid test."""
    _check_alpha(alpha)
    if alternative == "greater":
        return float(ndtr(z - ndtri(1.0 - alpha)))
    c = float(ndtri(1.0 - alpha / 2.0))
    return float(ndtr(z - c) + ndtr(-z - c))


def flat_boundary_power(z: float, c: float) -> float:
    """P(sup_{v <= 1} W(v) + z v >= c), the continuously watched flat boundary."""
    if c <= 0:
        raise StatsError(f"c must be positive, got {c!r}")
    return float(ndtr(z - c) + math.exp(min(2.0 * z * c, 700.0)) * ndtr(-c - z))


def mixture_floor_se(alpha: float = 0.05) -> float:
    """The two-sided mixture boundary in standard errors where it is lowest (Var(D) = the
    variance tau² was tuned for, :func:`armlab.core.stats.mixture.tau2_for_horizon`)."""
    r = tau2_for_horizon(1.0, alpha)
    return float(math.sqrt((1.0 + r) / r * (math.log1p(r) - 2.0 * math.log(alpha))))


def boundary_power(z: float | np.ndarray, *, boundary: Boundary = "mixture",
                   alternative: Alternative = "two-sided", alpha: float = 0.05,
                   share: float = DEFAULT_HORIZON_SHARE, looks: int = 200,
                   reps: int = 20_000, seed: int = 0) -> np.ndarray:
    """Monte Carlo power (rejection in the direction of the drift) of the mixture or the
    horizon boundary on a Gaussian random walk with drift ``z`` standard errors at the plan
    (V_T = 1), ``looks`` equally spaced looks, tau² tuned at the plan as the platform tunes it.
    ``z`` may be an array: the walks are shared (common random numbers), so the result is
    monotone in z."""
    _check_alpha(alpha)
    zs = np.atleast_1d(np.asarray(z, dtype=np.float64))
    w = _walks(looks, reps, seed)
    v = np.arange(1, looks + 1) / looks
    tau2 = tau2_for_horizon(1.0, alpha)
    out = np.empty(zs.shape[0])
    for i, zi in enumerate(zs):
        s = w + zi * v  # S / sqrt(V_T); D = S / v in units where Var(D) = 1 / v
        d, var = s / v, np.broadcast_to(1.0 / v, s.shape)
        kern = log_lambda_greater if alternative == "greater" else log_lambda
        p = np.exp(-np.maximum(kern(d, var, tau2), 0.0))
        if boundary == "horizon":
            p_h = horizon_p(s, alternative)
            p = np.minimum(p_h / share, p / (1.0 - share))
        hit = (p <= alpha) & (d > 0)
        out[i] = float(np.mean(hit.any(axis=1)))
    return out


def _walks(looks: int, reps: int, seed: int) -> np.ndarray:
    """Standard Brownian motion at v = 1/looks, ..., 1 (one row per walk); the last set is
    kept, so a bisection over the drift reuses the same walks."""
    key = (looks, reps, seed)
    if key not in _WALKS:
        rng = np.random.default_rng(seed)
        _WALKS.clear()
        _WALKS[key] = np.cumsum(rng.standard_normal((reps, looks)) / math.sqrt(looks), axis=1)
    return _WALKS[key]


_WALKS: dict[tuple[int, int, int], np.ndarray] = {}


def z_needed(target: float, **kwargs: object) -> float:
    """Smallest drift (standard errors at the plan) at which :func:`boundary_power` reaches
    ``target`` (bisection on a shared set of walks)."""
    if not (0.0 < target < 1.0):
        raise StatsError(f"target must lie in (0, 1), got {target!r}")
    lo, hi = 0.0, 8.0
    for _ in range(24):
        mid = 0.5 * (lo + hi)
        if float(boundary_power(mid, **kwargs)[0]) >= target:  # type: ignore[arg-type]
            hi = mid
        else:
            lo = mid
    return hi


def flat_critical(alpha: float = 0.05, share: float = DEFAULT_HORIZON_SHARE,
                  alternative: Alternative = "two-sided") -> float:
    """The horizon boundary's flat part in standard errors of the plan (share · alpha)."""
    return horizon_critical(share * alpha, alternative)
