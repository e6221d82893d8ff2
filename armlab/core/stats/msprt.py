"""Mixture sequential probability ratio test (mSPRT) on a difference of means.

Reference: Johari, Koomen, Pekelis, Walsh, "Always Valid Inference: Continuous Monitoring of
A/B Tests", Operations Research 70(3), 2022 (JKPW below). With a normal mixing distribution
H = N(theta0, tau²) over the effect theta and an (approximately) normal estimate
D ~ N(theta, V) of theta = mu_b - mu_a, the mixture likelihood ratio against H0: theta = theta0
has the closed form (JKPW §4, two-stream normal case)

    Lambda = sqrt(V / (V + tau²)) * exp(tau² (D - theta0)² / (2 V (V + tau²))).

By Ville's inequality P(exists n: Lambda_n >= 1/alpha | H0) <= alpha, so the running
p_n = min(p_{n-1}, 1/Lambda_n) is an always-valid p-value and
{theta: Lambda_n(theta) < 1/alpha} = D ± sqrt(V (V + tau²)/tau² · log((V + tau²)/(V alpha²)))
intersected over n is a (1 - alpha) confidence sequence (JKPW Prop. 6 / §4.2).
Everything is computed in log space so that large evidence never overflows.

The same boundary is the normal-mixture boundary of Howard, Ramdas, McAuliffe, Sekhon
("Time-uniform, nonparametric, nonasymptotic confidence sequences", Ann. Statist. 2021,
eq. (3.7) / Prop. 2.(iii)) with intrinsic time m = sigma² t and rho² = tau²/sigma² per
observation; ``tau2_for_horizon`` uses their tuning rule.

Optional horizon boundary (``HorizonBoundary``, ``sequential.boundary: horizon``): a flat
boundary on the sum scale S = t (D - theta0) up to a planned information, with the rest of
alpha on the mixture above (union bound). See :class:`HorizonBoundary`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy.optimize import brentq
from scipy.special import lambertw, log_ndtr, ndtr, ndtri

from armlab.errors import StatsError

Kind = Literal["bernoulli", "normal"]
Alternative = Literal["two-sided", "greater"]
Boundary = Literal["mixture", "horizon"]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class MsprtState:
    """What a sequential test carries from one look to the next (resumable state).

    p_value is the running minimum of 1/Lambda; (ci_low, ci_high) the running intersection
    of the confidence intervals. A fresh test starts at p = 1 and (-inf, inf).
    """

    p_value: float = 1.0
    ci_low: float = -math.inf
    ci_high: float = math.inf
    looks: int = 0

    def __post_init__(self) -> None:
        if not (0.0 <= self.p_value <= 1.0) or math.isnan(self.p_value):
            raise StatsError(f"state p_value must lie in [0, 1], got {self.p_value!r}")
        if math.isnan(self.ci_low) or math.isnan(self.ci_high):
            raise StatsError("state confidence bounds must not be NaN")


@dataclass(frozen=True)
class MsprtResult:
    """One look of the test.

    estimate/variance: D and V = Var(D) at this look. log_lambda: log mixture likelihood
    ratio (0 when the look carried no evidence). p_value / ci_*: running (always-valid)
    values; p_now / ci_*_now: this look alone. valid is False when the look was degenerate
    (too few samples, zero variance) and carried no evidence; reason says why.
    """

    estimate: float
    variance: float
    log_lambda: float
    p_value: float
    ci_low: float
    ci_high: float
    p_now: float
    ci_low_now: float
    ci_high_now: float
    tau2: float
    theta0: float
    alpha: float
    looks: int
    valid: bool = True
    reason: str = ""

    @property
    def lambda_(self) -> float:
        """Lambda itself (inf when it overflows a float)."""
        return math.exp(self.log_lambda) if self.log_lambda < 709.0 else math.inf

    @property
    def state(self) -> MsprtState:
        return MsprtState(self.p_value, self.ci_low, self.ci_high, self.looks)

    @property
    def cs_empty(self) -> bool:
        """True when the running intersection became empty (probability <= alpha)."""
        return self.ci_low > self.ci_high

    def reject(self, alpha: float | None = None) -> bool:
        return self.p_value <= (self.alpha if alpha is None else alpha)

    def as_dict(self) -> dict[str, float | int | bool | str | None]:
        def num(x: float) -> float | None:  # JSON has no inf: None means unbounded
            return None if math.isinf(x) else float(x)

        return {
            "estimate": float(self.estimate),
            "variance": float(self.variance),
            "lambda": num(self.lambda_),
            "log_lambda": float(self.log_lambda),
            "p_value": float(self.p_value),
            "ci_low": num(self.ci_low),
            "ci_high": num(self.ci_high),
            "p_now": float(self.p_now),
            "tau2": float(self.tau2),
            "theta0": float(self.theta0),
            "alpha": float(self.alpha),
            "looks": int(self.looks),
            "valid": bool(self.valid),
            "reason": self.reason,
        }


# ---------------------------------------------------------------------------------------------
# Vectorised kernels (shared by the scalar API and the Monte Carlo simulator)


def log_lambda(
    estimate: FloatArray | float,
    variance: FloatArray | float,
    tau2: float,
    theta0: float = 0.0,
) -> FloatArray:
    """log Lambda of JKPW's normal-mixture mSPRT; arrays broadcast. V must be > 0."""
    d = np.asarray(estimate, dtype=np.float64) - theta0
    v = np.asarray(variance, dtype=np.float64)
    return 0.5 * (np.log(v) - np.log(v + tau2)) + tau2 * d * d / (2.0 * v * (v + tau2))


def log_lambda_greater(
    estimate: FloatArray | float,
    variance: FloatArray | float,
    tau2: float,
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
    z = d * math.sqrt(tau2) / np.sqrt(v * (v + tau2))
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


def cs_halfwidth(variance: FloatArray | float, tau2: float, alpha: float) -> FloatArray:
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


# ---------------------------------------------------------------------------------------------
# The horizon boundary


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


def variance_for_tau2(tau2: float, alpha: float = 0.05) -> float:
    """The planned Var(D) at the horizon that :func:`tau2_for_horizon` tunes ``tau2`` for
    (its inverse): a frozen tau² carries the plan of the horizon boundary with it."""
    return float(tau2 / tau2_for_horizon(1.0, alpha))


# ---------------------------------------------------------------------------------------------
# The test


def _check_alpha(alpha: float) -> None:
    if not (0.0 < alpha < 1.0):
        raise StatsError(f"alpha must lie in (0, 1), got {alpha!r}")


def _check_finite(**values: float) -> None:
    for name, value in values.items():
        if value is None or not math.isfinite(float(value)):
            raise StatsError(f"{name} must be a finite number, got {value!r}")


def mixture_test(
    estimate: float,
    variance: float,
    *,
    tau2: float,
    theta0: float = 0.0,
    alpha: float = 0.05,
    state: MsprtState | None = None,
    enough_samples: bool = True,
    alternative: Alternative = "two-sided",
    horizon: HorizonBoundary | None = None,
) -> MsprtResult:
    """One look of the normal-mixture test given D and V = Var(D).

    ``horizon``: also the flat boundary of :class:`HorizonBoundary`, with ``horizon.share`` of
    alpha on it and the rest on the mixture (combined p-value and intersected intervals).

    ``alternative="greater"`` uses the one-sided mixture (:func:`log_lambda_greater`): the
    null is theta <= theta0, the whole alpha goes to "treatment better", and the confidence
    sequence is one-sided, [D - margin, +inf).

    A look with ``enough_samples`` False or V <= 0 (zero plug-in variance) carries no
    evidence: Lambda = 1, this look's p = 1 and interval (-inf, inf), and the running state
    is returned unchanged (so resuming never loses earlier evidence).
    """
    _check_alpha(alpha)
    _check_finite(estimate=estimate, variance=variance, tau2=tau2, theta0=theta0)
    if tau2 <= 0.0:
        raise StatsError(f"tau2 must be positive, got {tau2!r}")
    if variance < 0.0:
        raise StatsError(f"variance must be >= 0, got {variance!r}")
    st = state or MsprtState()
    looks = st.looks + 1
    if not enough_samples or variance <= 0.0:
        reason = "too few samples" if not enough_samples else "zero variance"
        return MsprtResult(float(estimate), float(variance), 0.0, st.p_value, st.ci_low,
                           st.ci_high, 1.0, -math.inf, math.inf, tau2, theta0, alpha, looks,
                           valid=False, reason=reason)
    if alternative == "greater":
        llr = float(log_lambda_greater(estimate, variance, tau2, theta0))
        lo_now, hi_now = estimate - lower_margin_greater(variance, tau2, alpha), math.inf
    else:
        llr = float(log_lambda(estimate, variance, tau2, theta0))
        half = float(cs_halfwidth(variance, tau2, alpha))
        lo_now, hi_now = estimate - half, estimate + half
    p_now = math.exp(-llr) if llr > 0.0 else 1.0
    if horizon is not None:
        p_now, lo_now, hi_now = _with_horizon(horizon, estimate, variance, tau2, theta0,
                                              alpha, alternative, p_now)
    return MsprtResult(
        estimate=float(estimate), variance=float(variance), log_lambda=llr,
        p_value=min(st.p_value, p_now),
        ci_low=max(st.ci_low, lo_now), ci_high=min(st.ci_high, hi_now),
        p_now=p_now, ci_low_now=lo_now, ci_high_now=hi_now,
        tau2=float(tau2), theta0=float(theta0), alpha=float(alpha), looks=looks,
    )


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


def _arm_mean_var(kind: Kind, n: float, s: float, ss: float | None, arm: str) -> tuple[float,
                                                                                      float]:
    """Plug-in mean and per-observation variance of one arm from its sufficient statistics."""
    if n < 0:
        raise StatsError(f"n_{arm} must be >= 0, got {n!r}")
    if n == 0:
        return 0.0, 0.0
    mean = s / n
    if kind == "bernoulli":
        if s < 0 or s > n + 1e-9 * n:
            raise StatsError(f"sum_{arm} must lie in [0, n_{arm}] for bernoulli rewards, got "
                             f"{s!r} with n={n!r}")
        mean = min(max(mean, 0.0), 1.0)
        return mean, mean * (1.0 - mean)
    if kind != "normal":
        raise StatsError(f"kind must be 'bernoulli' or 'normal', got {kind!r}")
    if ss is None:
        raise StatsError(f"sumsq_{arm} is required for normal rewards")
    if n < 2:
        return mean, 0.0
    var = (ss - s * s / n) / (n - 1.0)
    if var < -1e-9 * max(1.0, abs(ss)):
        raise StatsError(f"sumsq_{arm}={ss!r} is smaller than sum_{arm}²/n_{arm}: inconsistent "
                         "sufficient statistics")
    return mean, max(var, 0.0)


def two_sample_moments(
    kind: Kind,
    n_a: float, sum_a: float, sumsq_a: float | None,
    n_b: float, sum_b: float, sumsq_b: float | None,
) -> tuple[float, float]:
    """D = mean_b - mean_a and V = s_a²/n_a + s_b²/n_b (plug-in; unequal n allowed)."""
    _check_finite(n_a=n_a, sum_a=sum_a, n_b=n_b, sum_b=sum_b)
    if sumsq_a is not None:
        _check_finite(sumsq_a=sumsq_a)
    if sumsq_b is not None:
        _check_finite(sumsq_b=sumsq_b)
    ma, va = _arm_mean_var(kind, n_a, sum_a, sumsq_a, "a")
    mb, vb = _arm_mean_var(kind, n_b, sum_b, sumsq_b, "b")
    if n_a == 0 or n_b == 0:
        return mb - ma, 0.0
    return mb - ma, va / n_a + vb / n_b


def msprt_two_sample(
    kind: Kind,
    n_a: float, sum_a: float, sumsq_a: float | None,
    n_b: float, sum_b: float, sumsq_b: float | None,
    *,
    tau2: float,
    theta0: float = 0.0,
    alpha: float = 0.05,
    min_samples: int = 1,
    state: MsprtState | None = None,
    gate: bool = True,
    alternative: Alternative = "two-sided",
    horizon: HorizonBoundary | None = None,
) -> MsprtResult:
    """mSPRT for control a vs treatment b from cumulative sufficient statistics (JKPW §4).
    ``horizon``: also the flat boundary of :class:`HorizonBoundary` (``horizon.t`` is replaced
    by n_a + n_b: on a fixed 50/50 split (n_a + n_b)·D is twice the difference of the arms'
    reward sums, a martingale under the null).

    Valid when observations are i.i.d. within each arm and allocation does not depend on the
    outcomes (fixed split). Under bandit allocation use ``armlab.core.stats.adaptive.ipw_msprt``.
    ``gate`` False makes the look carry no evidence (the caller's information rule).
    """
    d, v = two_sample_moments(kind, n_a, sum_a, sumsq_a, n_b, sum_b, sumsq_b)
    enough = gate and min(n_a, n_b) >= max(min_samples, 1)
    if horizon is not None:
        horizon = HorizonBoundary(horizon.info, float(n_a + n_b), horizon.share)
    return mixture_test(d, v, tau2=tau2, theta0=theta0, alpha=alpha, state=state,
                        enough_samples=enough, alternative=alternative, horizon=horizon)


# ---------------------------------------------------------------------------------------------
# Multiple treatment arms


def _check_pvalues(pvalues: Sequence[float]) -> FloatArray:
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1 or np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise StatsError(f"p-values must be a 1-d sequence in [0, 1], got {list(pvalues)!r}")
    return p


def bonferroni_adjust(pvalues: Sequence[float]) -> list[float]:
    """Bonferroni-adjusted p-values min(1, m p_i): reject i when adjusted p_i <= alpha."""
    p = _check_pvalues(pvalues)
    return [float(x) for x in np.minimum(1.0, p * len(p))]


def holm_adjust(pvalues: Sequence[float]) -> list[float]:
    """Holm (1979) step-down adjusted p-values: max_{j<=i} min(1, (m-j+1) p_(j)) in sorted order.

    With always-valid p-values this stays valid under continuous monitoring: Holm is monotone
    in the p-values, so a rejection at any look is also a rejection of Holm applied to the
    per-arm infima inf_n p_{i,n}, which are valid p-values (JKPW §6 on multiple testing).
    """
    p = _check_pvalues(pvalues)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adj = np.empty(m)
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        adj[idx] = running
    return [float(x) for x in adj]
