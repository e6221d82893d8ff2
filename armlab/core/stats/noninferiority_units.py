"""The guardrail test per randomisation unit (``unit: user``): a ratio estimator with a
cluster-robust (per-user, delta-method) variance, run through the same always-valid one-sided
mixture as the per-impression test (:mod:`armlab.core.stats.noninferiority`).

Why: with a sticky arm per user, one user's impressions are correlated (a user who skips,
skips often), so per-impression sums analysed as independent terms overstate the evidence by
the design effect 1 + (n̄ - 1) ICC. The units that are independent are the users.

Quantity: the margin of a guardrail is stated on the per-impression scale ("the skip rate must
not rise by more than 2 points"), so the per-user analysis keeps the per-impression rate of
each arm, now estimated as a ratio over users: user u (arm A_u, sticky propensity p_u) served
n_u impressions whose metric values add up to Y_u, and

    theta_k = sum_{u in k} Y_u/p_u / sum_{u in k} n_u/p_u            (IPW ratio, Hajek form),
    E = s (theta_b - g theta_a) - m                                    (as per impression).

Its linearisation (delta method) is a mean of independent per-user terms,
theta^_k - theta_k ~ sum_{u in k} (Y_u - theta_k n_u)/p_u / W_k with W_k = sum_{u in k} n_u/p_u,
so the cluster-robust variance is

    Var(E^) = c_b R_b / W_b² + g² c_a R_a / W_a²,
    R_k = sum_{u in k} (Y_u - theta^_k n_u)²/p_u²
        = S_yy - 2 theta^ S_yn + theta^² S_nn        (S_.. = sum over the arm's users of ./p²),

with the small-sample factor c_k = U_k/(U_k - 1) (U_k users).

Robust floor (as the per-impression kernel's, :func:`armlab.core.stats.adaptive.ipw_kernel`):
R_k is never taken below max(m2_k, f_k) sum_{u in k} 1/p_u², with m2_k the arm's mean squared
residual per user (unweighted) and f_k the pooled one over both arms (each user's residual from
its own arm's ratio); for a 0/1 metric the pooled value is carried as a design effect,
f_k = theta^_k (1 - theta^_k) sum_u (Y_u - theta^ n_u)² / sum_arms U_j theta^_j (1 - theta^_j)
(a beta-binomial user's residual variance is theta (1 - theta) n (1 + (n - 1) ICC), so it is
the arm's own level times the shared clustering). Why: an arm held at the exploration floor
has few users with large weights; with correlated, skewed per-user rates (most users never
skip, a few often) a low estimate of that arm's rate comes with a low R_k, and the realised
variance alone gave false breaches of 0.06-0.09 at ICC 0.1-0.3 under Thompson allocation
(docs/guardrails.md); with the floor they are within alpha. With every n_u = 1 this is the
per-impression Hajek estimator; with one user per arm it is undefined (never informative).
The terms are independent across users given the propensities at their arrival (sticky), so
the estimate is a smooth function of IPW means of martingale differences and the asymptotic
confidence sequence applies to it as to the primary test's per-user sums (checked by
simulation: ``armlab bench guardrails --unit user``, docs/guardrails.md).

tau² follows the per-impression test's rule with the pooled per-user variance of the
linearised term on the per-impression scale, sum_u (Y_u - theta^ n_u)² / ((U - 1) n̄²), and
the planned horizon counted in users (``max_n`` is in users for ``unit: user``).

Gate: both arms need ``min_samples`` users and ``min_events`` events of the metric (counted
over impressions, as per impression).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from armlab.core.evidence import ArmSums
from armlab.core.stats.adaptive import informative
from armlab.core.stats.noninferiority import (
    DEFAULT_FLOOR,
    GuardrailResult,
    Harm,
    _check_look,
    _informative_look,
    _Look,
)
from armlab.core.stats.noninferiority_kernels import FloatArray, planned_tau2
from armlab.errors import StatsError

__all__ = ["RATIO_FIELDS", "UnitSums", "guardrail_unit_test", "ratio_kernel",
           "unit_pooled_variance"]


@dataclass(slots=True)
class UnitSums:
    """One guardrail metric's sums over one arm's units (see the module doc); y = one
    impression's value, Y_u / n_u = a unit's total / impressions, p_u its sticky propensity.

    ``units``, ``n`` (impressions), ``value_sum`` (sum y), ``value_sumsq`` (sum y²),
    ``feedback_n`` (the metric's events); unweighted per unit ``yy`` (sum Y²), ``yn``
    (sum Y n), ``nn`` (sum n²); weighted ``w_1`` (sum 1/p²), ``w_n`` (sum n/p), ``w_y``
    (sum Y/p), ``w_yy`` (sum Y²/p²), ``w_yn`` (sum Y n/p²), ``w_nn`` (sum n²/p²)."""

    units: float = 0.0
    n: float = 0.0
    value_sum: float = 0.0
    value_sumsq: float = 0.0
    feedback_n: float = 0.0
    yy: float = 0.0
    yn: float = 0.0
    nn: float = 0.0
    w_1: float = 0.0
    w_n: float = 0.0
    w_y: float = 0.0
    w_yy: float = 0.0
    w_yn: float = 0.0
    w_nn: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not math.isfinite(float(v)):
                raise StatsError(f"{f.name} must be a finite number, got {v!r}")
            if f.name not in ("value_sum", "yn", "w_y", "w_yn") and v < 0:
                raise StatsError(f"{f.name} must be >= 0, got {v!r}")

    def add_unit(self, n: float, y: float, ysq: float, events: float, p: float) -> None:
        """One unit: ``n`` impressions with values adding up to ``y`` (squares ``ysq``),
        ``events`` events, served with propensity ``p``."""
        if not p > 0.0:
            raise StatsError(f"propensity must be > 0, got {p!r}")
        self.units += 1
        self.n += n
        self.value_sum += y
        self.value_sumsq += ysq
        self.feedback_n += events
        self.yy += y * y
        self.yn += y * n
        self.nn += n * n
        self.w_1 += 1.0 / (p * p)
        self.w_n += n / p
        self.w_y += y / p
        self.w_yy += y * y / (p * p)
        self.w_yn += y * n / (p * p)
        self.w_nn += n * n / (p * p)

    def impressions(self) -> ArmSums:
        """The per-impression view the gate and the display read (n, sums, events)."""
        return ArmSums(n=self.n, reward_sum=self.value_sum, reward_sumsq=self.value_sumsq,
                       feedback_n=self.feedback_n)


#: The per-arm arguments of :func:`ratio_kernel`, in order (fields of :class:`UnitSums`).
RATIO_FIELDS = ("units", "w_1", "w_n", "w_y", "w_yy", "w_yn", "w_nn", "yy", "yn", "nn")


def _resid(th: FloatArray, yy: FloatArray, yn: FloatArray, nn: FloatArray) -> FloatArray:
    """sum (Y - th n)² from the sums of Y², Y n and n² (weighted or not), clipped at 0."""
    return np.maximum(yy - 2.0 * th * yn + th * th * nn, 0.0)


def _bernoulli(th: FloatArray) -> FloatArray:
    """theta (1 - theta), kept away from 0 (a 0/1 metric's per-impression variance)."""
    return np.maximum(th * (1.0 - th), 1e-12)


def ratio_kernel(a: Sequence[FloatArray], b: Sequence[FloatArray], *, sign: float,
                 scale: float, binary: bool) -> tuple[FloatArray, FloatArray]:
    """(s (theta_b - g theta_a), its cluster-robust variance, see the module doc); ``a`` and
    ``b``: per arm the sums named by :data:`RATIO_FIELDS`, arrays of any common shape.
    Requires w_n > 0 and at least 2 units per arm. Used by the test and by the simulator."""
    u_a, w1_a, wn_a, wy_a, wyy_a, wyn_a, wnn_a, yy_a, yn_a, nn_a = a
    u_b, w1_b, wn_b, wy_b, wyy_b, wyn_b, wnn_b, yy_b, yn_b, nn_b = b
    th_a, th_b = wy_a / wn_a, wy_b / wn_b
    ss_a, ss_b = _resid(th_a, yy_a, yn_a, nn_a), _resid(th_b, yy_b, yn_b, nn_b)
    if binary:
        bv_a, bv_b = _bernoulli(th_a), _bernoulli(th_b)
        shared = (ss_a + ss_b) / (u_a * bv_a + u_b * bv_b)
        floor_a, floor_b = shared * bv_a, shared * bv_b
    else:
        floor_a = floor_b = (ss_a + ss_b) / (u_a + u_b)

    def var(u: FloatArray, th: FloatArray, ss: FloatArray, floor: FloatArray, w1: FloatArray,
            wn: FloatArray, wyy: FloatArray, wyn: FloatArray, wnn: FloatArray) -> FloatArray:
        second = np.maximum(_resid(th, wyy, wyn, wnn), np.maximum(ss / u, floor) * w1)
        return second / (wn * wn) * u / np.maximum(u - 1.0, 1.0)

    v_a = var(u_a, th_a, ss_a, floor_a, w1_a, wn_a, wyy_a, wyn_a, wnn_a)
    v_b = var(u_b, th_b, ss_b, floor_b, w1_b, wn_b, wyy_b, wyn_b, wnn_b)
    return sign * (th_b - scale * th_a), v_b + scale * scale * v_a


def unit_pooled_variance(units: FloatArray, n: FloatArray, y: FloatArray, yy: FloatArray,
                         yn: FloatArray, nn: FloatArray) -> FloatArray:
    """Pooled per-user variance of the linearised term on the per-impression scale (both arms'
    unweighted sums added): sum_u (Y_u - theta n_u)² / ((U - 1) n̄²), theta = sum Y / sum n."""
    with np.errstate(divide="ignore", invalid="ignore"):
        th = y / np.maximum(n, 1e-300)
        nbar = n / np.maximum(units, 1.0)
        ss = np.maximum(yy - 2.0 * th * yn + th * th * nn, 0.0)
        v = ss / np.maximum(units - 1.0, 1.0) / np.maximum(nbar * nbar, 1e-300)
        return np.where((units >= 2) & (n > 0), v, 0.0)


def _arr(*xs: float) -> list[FloatArray]:
    return [np.asarray(x, dtype=np.float64) for x in xs]


def _unit_excess(look: _Look, a: UnitSums, b: UnitSums) -> tuple[float, float, float]:
    """(delta, excess, var) of the ratio contrast (``StatsError`` when not finite)."""
    est, var = ratio_kernel(_arr(*(getattr(a, f) for f in RATIO_FIELDS)),
                            _arr(*(getattr(b, f) for f in RATIO_FIELDS)),
                            sign=look.s, scale=look.g, binary=look.binary)
    delta = b.w_y / b.w_n - a.w_y / a.w_n
    d, v = float(est), float(var)
    if not (math.isfinite(d) and math.isfinite(v)):
        raise StatsError("unit sums give a non-finite ratio estimate")
    return delta, d - look.m, v


def _unit_tau2(look: _Look, a: UnitSums, b: UnitSums) -> float | None:
    if look.tau2 is not None:
        return look.tau2
    pooled = float(unit_pooled_variance(*_arr(a.units + b.units, a.n + b.n,
                                              a.value_sum + b.value_sum, a.yy + b.yy,
                                              a.yn + b.yn, a.nn + b.nn)))
    if pooled > 0.0:
        return float(planned_tau2(pooled, look.plan, n_arms=look.n_arms, floor=look.floor,
                                  alpha=look.alpha))
    return None


def guardrail_unit_test(
    control: UnitSums, treatment: UnitSums, *, harm: Harm, margin: float, relative: bool,
    alpha: float, binary: bool, min_events: int = 30, min_samples: int = 1,
    horizon: float | None = None, prior_p: float | None = None, n_arms: int = 2,
    floor: float = DEFAULT_FLOOR, tau2: float | None = None, prior_ni_p: float | None = None,
    prior_low: float | None = None, prior_high: float | None = None,
) -> GuardrailResult:
    """One look of the guardrail test on per-unit sums: the arguments and the result of
    :func:`armlab.core.stats.noninferiority.guardrail_test` (``horizon`` and ``min_samples``
    counted in units), the estimate and variance of the module doc."""
    for name, x in (("control", control), ("treatment", treatment)):
        if not isinstance(x, UnitSums):
            raise StatsError(f"{name} must be UnitSums, got {type(x).__name__}")
    ca, cb = control.impressions(), treatment.impressions()
    look = _check_look(ca.n + cb.n, ca, cb, harm=harm, margin=margin, relative=relative,
                       alpha=alpha, binary=binary, min_events=min_events,
                       min_samples=min_samples, horizon=horizon, prior_p=prior_p,
                       n_arms=n_arms, floor=floor, tau2=tau2, prior_ni_p=prior_ni_p,
                       prior_low=prior_low, prior_high=prior_high)
    if min(control.units, treatment.units) < 2 or min(control.w_n, treatment.w_n) <= 0:
        return look.carried(None, None, look.tau2)
    delta, excess, var = _unit_excess(look, control, treatment)
    tau2_used = _unit_tau2(look, control, treatment)
    gate = (min(control.units, treatment.units) >= max(min_samples, 2)
            and informative(ca, cb, binary=binary, min_samples=1, min_events=min_events))
    if not gate or tau2_used is None or var <= 0.0:
        return look.carried(delta, excess, tau2_used)
    return _informative_look(look, delta, excess, var, tau2_used)
