"""The normal mixture of the mSPRT (:mod:`armlab.core.stats.msprt`, whose module doc derives
it): log Lambda (two-sided and one-sided), the confidence-sequence half-widths and the choice
of tau². Vectorised: the scalar test and the Monte Carlo simulators run the same kernels."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy.optimize import brentq
from scipy.special import lambertw, log_ndtr

from armlab.errors import StatsError

Alternative = Literal["two-sided", "greater"]
FloatArray = npt.NDArray[np.float64]


def _check_alpha(alpha: float) -> None:
    if not (0.0 < alpha < 1.0):
        raise StatsError(f"alpha must lie in (0, 1), got {alpha!r}")


def log_lambda(
    estimate: FloatArray | float,
    variance: FloatArray | float,
    tau2: FloatArray | float,
    theta0: float = 0.0,
) -> FloatArray:
    """log Lambda of JKPW's normal-mixture mSPRT; arrays broadcast (tau² too). V must be > 0."""
    d = np.asarray(estimate, dtype=np.float64) - theta0
    v = np.asarray(variance, dtype=np.float64)
    return 0.5 * (np.log(v) - np.log(v + tau2)) + tau2 * d * d / (2.0 * v * (v + tau2))


def log_lambda_greater(
    estimate: FloatArray | float,
    variance: FloatArray | float,
    tau2: FloatArray | float,
    theta0: float = 0.0,
) -> FloatArray:
    """log Lambda+ of the one-sided ("treatment better": theta > theta0) normal mixture.

    Mixing the Gaussian likelihood ratio exp(theta d/V - theta²/(2V)) (d = D - theta0) over a
    half-normal theta >= 0 with scale tau (density 2 phi(theta/tau)/tau) gives

        Lambda+ = 2 sqrt(V/(V + tau²)) exp(tau² d²/(2 V (V + tau²))) Phi(d tau/sqrt(V (V + tau²)))
                = 2 Lambda Phi(d tau / sqrt(V (V + tau²))),

    the one-sided normal mixture of Howard, Ramdas, McAuliffe & Sekhon (2021) (in their
    variables M = 2 sqrt(rho/(V+rho)) exp(S²/(2(V+rho))) Phi(S/sqrt(V+rho)) with S = d/V,
    V -> 1/V, rho = 1/tau²). Lambda+ starts at 1 and is a nonnegative (super)martingale
    under theta <= theta0, so Ville's inequality makes p = min 1/Lambda+ always valid for the
    one-sided null, with the whole alpha spent on the "better" direction.
    """
    d = np.asarray(estimate, dtype=np.float64) - theta0
    v = np.asarray(variance, dtype=np.float64)
    z = d * np.sqrt(tau2) / np.sqrt(v * (v + tau2))
    return math.log(2.0) + log_lambda(estimate, variance, tau2, theta0) + log_ndtr(z)


def lower_margin_greater(variance: float, tau2: float, alpha: float) -> float:
    """x > 0 with log Lambda+(x) = log(1/alpha): {theta: Lambda+_theta < 1/alpha} = [D - x, inf).

    Lambda <= Lambda+ <= 2 Lambda for x >= 0 brackets the root between the two-sided
    half-widths at 2 alpha and alpha; Lambda+ increases in x, so Brent's method finds it.
    """
    thr = -math.log(alpha)
    lo = float(cs_halfwidth(variance, tau2, min(2.0 * alpha, 0.999))) * 0.5
    hi = float(cs_halfwidth(variance, tau2, alpha)) * 1.01

    def f(x: float) -> float:
        return float(log_lambda_greater(x, variance, tau2)) - thr

    return float(brentq(f, lo, hi, xtol=1e-12 * max(hi, 1e-300)))


def cs_halfwidth(variance: FloatArray | float, tau2: FloatArray | float, alpha: float
                 ) -> FloatArray:
    """Half-width of {theta: Lambda(theta) < 1/alpha} (JKPW §4.2; Howard et al. eq. (3.7))."""
    v = np.asarray(variance, dtype=np.float64)
    return np.sqrt(v * (v + tau2) / tau2 * (np.log1p(tau2 / v) - 2.0 * math.log(alpha)))


# ---------------------------------------------------------------------------------------------
# Choice of tau²


def tau2_for_horizon(variance_at_horizon: float, alpha: float = 0.05) -> float:
    """tau² that makes the confidence sequence tightest when Var(D) reaches ``variance_at_horizon``.

    Howard et al. (2021) §3.5 tune the normal-mixture boundary for intrinsic time m by
    rho² m = -W_{-1}(-alpha² e^{alpha² - 1}) - 1 (exact minimiser of the boundary width;
    their closed-form approximation is -2 log alpha + log(1 - 2 log alpha)); the same rule
    is ``best_rho2_exact`` in Waudby-Smith et al.'s drconfseq. In JKPW's parametrisation
    tau² = rho² sigma² and V* = sigma²/t*, so tau² = V* · (-W_{-1}(-alpha² e^{alpha²-1}) - 1)
    (≈ 8.2 V* at alpha = 0.05). Use it with V* = Var(D) at the planned maximum sample size,
    e.g. 2 p(1-p)/n_max for a binary metric with baseline p and n_max per arm.
    """
    _check_alpha(alpha)
    if not (variance_at_horizon > 0.0 and math.isfinite(variance_at_horizon)):
        raise StatsError(f"variance_at_horizon must be positive and finite, got "
                         f"{variance_at_horizon!r}")
    w = lambertw(-(alpha**2) * math.exp(alpha**2 - 1.0), k=-1).real
    return float(variance_at_horizon * (-w - 1.0))


def tau2_for_effect(effect: float) -> float:
    """tau² = effect²: the mixing distribution N(0, tau²) puts its scale at the anticipated effect.

    JKPW §5 (and Johari et al., KDD 2017, "Peeking at A/B tests") choose H to match the
    distribution of effects seen in past experiments; with one anticipated absolute effect
    delta the matching normal prior has tau = |delta|.
    """
    if not (math.isfinite(effect) and effect != 0.0):
        raise StatsError(f"effect must be a non-zero finite number, got {effect!r}")
    return float(effect * effect)


def variance_for_tau2(tau2: float, alpha: float = 0.05) -> float:
    """The planned Var(D) at the horizon that :func:`tau2_for_horizon` tunes ``tau2`` for
    (its inverse): a frozen tau² carries the plan of the horizon boundary with it."""
    return float(tau2 / tau2_for_horizon(1.0, alpha))
