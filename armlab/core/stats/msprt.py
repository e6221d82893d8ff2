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

Layout: the mixture's kernels and the choice of tau² live in :mod:`armlab.core.stats.mixture`,
the horizon boundary in :mod:`armlab.core.stats.horizon`, the Bonferroni and Holm adjustments
in :mod:`armlab.core.stats.multiplicity`; this module holds the test (state, result, one look,
two samples) and re-exports the rest under their old names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from armlab.core.stats.horizon import (
    DEFAULT_HORIZON_SHARE,
    HorizonBoundary,
    _with_horizon,
    horizon_critical,
    horizon_p,
)
from armlab.core.stats.mixture import (
    Alternative,
    FloatArray,
    _check_alpha,
    cs_halfwidth,
    log_lambda,
    log_lambda_greater,
    lower_margin_greater,
    tau2_for_effect,
    tau2_for_horizon,
    variance_for_tau2,
)
from armlab.core.stats.multiplicity import bonferroni_adjust, holm_adjust
from armlab.errors import StatsError

__all__ = [
    "DEFAULT_HORIZON_SHARE", "Alternative", "Boundary", "FloatArray", "HorizonBoundary", "Kind",
    "MsprtResult", "MsprtState", "bonferroni_adjust", "cs_halfwidth", "holm_adjust",
    "horizon_critical", "horizon_p", "log_lambda", "log_lambda_greater", "lower_margin_greater",
    "mixture_test", "msprt_two_sample", "tau2_for_effect", "tau2_for_horizon",
    "two_sample_moments", "variance_for_tau2",
]

Kind = Literal["bernoulli", "normal"]
Boundary = Literal["mixture", "horizon"]


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
# The test


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
