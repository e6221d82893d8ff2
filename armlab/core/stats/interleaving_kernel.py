"""The per-unit preferences and the vectorised kernel of the interleaving test (see
:mod:`armlab.core.stats.interleaving` for the method): the scalar test and the Monte Carlo
simulator share them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from armlab.core.stats.msprt import log_lambda, tau2_for_horizon
from armlab.errors import StatsError

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
Aggregate = Literal["mean", "sum"]


# ---------------------------------------------------------------------------------------------
# Per-unit preferences


def unit_preferences(
    differences: npt.ArrayLike,
    units: npt.ArrayLike,
    *,
    compared: npt.ArrayLike | None = None,
    propensity: npt.ArrayLike | None = None,
    aggregate: Aggregate = "mean",
) -> tuple[npt.NDArray[np.int64], FloatArray]:
    """Per-unit preferences x_u from impression-level pair outcomes (see the module doc).

    differences: (T, P) credit_a - credit_b per impression and pair; units: (T,) unit ids
    (any integers); compared: (T, P) whether the pair was in the impression (default: all);
    propensity: (T, P) P(pair compared) when a bandit chose the rankers: the outcome is
    weighted by 1{compared}/propensity (inverse propensity weighting).

    Returns (unit ids in ascending order, (U, P) preferences). A unit whose pair was never
    compared has x_u = 0 with weights, and is left out (NaN) without: it carries no outcome.
    """
    d = np.asarray(differences, dtype=np.float64)
    if d.ndim == 1:
        d = d[:, None]
    u = np.asarray(units).reshape(-1)
    if d.shape[0] != u.shape[0]:
        raise StatsError(f"differences have {d.shape[0]} rows but units {u.shape[0]}")
    c = np.ones(d.shape, dtype=bool) if compared is None else np.asarray(compared, bool)
    c = c.reshape(d.shape)
    if propensity is not None:
        p = np.asarray(propensity, dtype=np.float64).reshape(d.shape)
        if np.any(c & ~(p > 0.0)) or np.any(p > 1.0 + 1e-12):
            raise StatsError("propensities of compared pairs must lie in (0, 1]")
        z = np.where(c, d / np.where(c, p, 1.0), 0.0)
        n_imp = np.ones(d.shape)
    else:
        z = np.where(c, d, 0.0)
        n_imp = c.astype(np.float64)
    ids, inv = np.unique(u, return_inverse=True)
    total = np.zeros((ids.size, d.shape[1]))
    count = np.zeros((ids.size, d.shape[1]))
    np.add.at(total, inv, z)
    np.add.at(count, inv, n_imp)
    if aggregate == "sum":
        x = np.where(count > 0, total, np.nan)
    elif aggregate == "mean":
        x = np.where(count > 0, total / np.maximum(count, 1.0), np.nan)
    else:
        raise StatsError(f"aggregate must be 'mean' or 'sum', got {aggregate!r}")
    return ids, x


@dataclass(frozen=True)
class PairSums:
    """Sufficient statistics of one pair over units: n units, sum and sum of squares of x_u."""

    n: float = 0.0
    total: float = 0.0
    sumsq: float = 0.0

    def __post_init__(self) -> None:
        for name in ("n", "total", "sumsq"):
            v = getattr(self, name)
            if v is None or not math.isfinite(float(v)):
                raise StatsError(f"pair sums: {name} must be a finite number, got {v!r}")
        if self.n < 0 or self.sumsq < 0:
            raise StatsError("pair sums: n and sumsq must be >= 0")

    @classmethod
    def from_values(cls, values: npt.ArrayLike) -> PairSums:
        """From the per-unit preferences of one pair (NaN = the unit did not compare it)."""
        x = np.asarray(values, dtype=np.float64).reshape(-1)
        x = x[~np.isnan(x)]
        return cls(float(x.size), float(x.sum()), float((x * x).sum()))

    def __add__(self, other: PairSums) -> PairSums:
        return PairSums(self.n + other.n, self.total + other.total, self.sumsq + other.sumsq)


# ---------------------------------------------------------------------------------------------
# The vectorised kernel (the scalar test and the Monte Carlo simulator share it)


def rho2_for_units(planned_units: float, alpha: float) -> float:
    """rho² of the scale-free mixture: Howard et al.'s horizon rule for ``planned_units``
    observations of unit variance (tau² = rho² s² then tunes the boundary for the plan)."""
    if not (planned_units >= 1 and math.isfinite(planned_units)):
        raise StatsError(f"planned_units must be >= 1, got {planned_units!r}")
    return tau2_for_horizon(1.0 / planned_units, alpha)


def preference_kernel(
    n: FloatArray | float,
    total: FloatArray | float,
    sumsq: FloatArray | float,
    *,
    rho2: float | None,
    tau2: float | None = None,
    min_units: int = 2,
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, BoolArray]:
    """(estimate D, variance V of D, tau², log Lambda, informative) from per-pair sums.

    D = total/n, s² = the sample variance of the x_u (n - 1 in the denominator), V = s²/n;
    tau² = ``tau2`` if given, else rho² s². A look is informative when n >= max(min_units, 2)
    and s² > 0; log Lambda is 0 where it is not. Arrays broadcast.
    """
    n_a = np.asarray(n, dtype=np.float64)
    t_a = np.asarray(total, dtype=np.float64)
    q_a = np.asarray(sumsq, dtype=np.float64)
    safe_n = np.maximum(n_a, 1.0)
    d = np.where(n_a > 0, t_a / safe_n, 0.0)
    s2 = np.maximum(q_a - t_a * t_a / safe_n, 0.0) / np.maximum(n_a - 1.0, 1.0)
    v = s2 / safe_n
    ok = (n_a >= max(min_units, 2)) & (s2 > 0.0)
    if tau2 is not None:
        t2 = np.full_like(v, float(tau2))
        llr = log_lambda(d, np.where(ok, v, 1.0), float(tau2))
    elif rho2 is not None:
        t2 = rho2 * s2
        # tau² = rho² s² and V = s²/n: Lambda is invariant to rescaling (D, V, tau²) by
        # (1/s, 1/s², 1/s²), so it is msprt's Lambda(D/s, 1/n, rho²) with a scalar rho².
        s = np.sqrt(np.where(ok, s2, 1.0))
        llr = log_lambda(d / s, 1.0 / safe_n, float(rho2))
    else:
        raise StatsError("give rho2 (scale-free tau²) or a fixed tau2")
    return d, v, t2, np.where(ok, llr, 0.0), ok


def holm_adjust_many(p: FloatArray) -> FloatArray:
    """Holm-adjusted p-values along the last axis (vectorised :func:`msprt.holm_adjust`)."""
    p = np.asarray(p, dtype=np.float64)
    m = p.shape[-1]
    order = np.argsort(p, axis=-1, kind="stable")
    sorted_p = np.take_along_axis(p, order, axis=-1)
    factors = m - np.arange(m)
    adj_sorted = np.maximum.accumulate(np.minimum(1.0, sorted_p * factors), axis=-1)
    out = np.empty_like(p)
    np.put_along_axis(out, order, adj_sorted, axis=-1)
    return out
