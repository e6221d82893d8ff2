"""Shared pieces of every allocation policy: input statistics, results, floors, selection.

Policies are pure: they hold only validated settings, take the arm statistics and an explicit
``np.random.Generator`` in each call and return a small immutable result. Nothing here reads
the environment, the clock or a database.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from armlab.errors import PolicyError

FloatArray = npt.NDArray[np.float64]

#: Bumped whenever a change to a policy would change the weights it computes for the same input.
POLICY_VERSION = "1"


@dataclass(frozen=True)
class PolicyStats:
    """Sufficient statistics of the *matured* observations of each arm.

    Parameters
    ----------
    n : (K,) observation counts (impressions whose attribution window has closed).
    reward_sum : (K,) sum of rewards (binary: successes).
    reward_sumsq : (K,) sum of squared rewards (only used by continuous rewards).
    """

    n: FloatArray
    reward_sum: FloatArray
    reward_sumsq: FloatArray

    def __post_init__(self) -> None:
        n = np.asarray(self.n, dtype=np.float64)
        s = np.asarray(self.reward_sum, dtype=np.float64)
        q = (
            np.asarray(self.reward_sumsq, dtype=np.float64)
            if self.reward_sumsq is not None
            else np.zeros_like(n)
        )
        if n.ndim != 1 or n.size == 0:
            raise PolicyError(
                f"arm stats need a non-empty 1-D array of counts, got shape {n.shape}"
            )
        if s.shape != n.shape or q.shape != n.shape:
            raise PolicyError(
                f"arm stats arrays must have the same shape: n {n.shape}, reward_sum {s.shape}, "
                f"reward_sumsq {q.shape}"
            )
        if not (np.all(np.isfinite(n)) and np.all(np.isfinite(s)) and np.all(np.isfinite(q))):
            raise PolicyError("arm stats must be finite numbers")
        if np.any(n < 0):
            raise PolicyError(f"arm stats counts must be >= 0, got {n.tolist()}")
        if np.any(q < 0):
            raise PolicyError(f"arm stats sums of squares must be >= 0, got {q.tolist()}")
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "reward_sum", s)
        object.__setattr__(self, "reward_sumsq", q)

    @classmethod
    def from_lists(
        cls,
        n: Any,
        reward_sum: Any,
        reward_sumsq: Any = None,
    ) -> PolicyStats:
        n_arr = np.asarray(n, dtype=np.float64)
        q = np.zeros_like(n_arr) if reward_sumsq is None else reward_sumsq
        return cls(n_arr, np.asarray(reward_sum, dtype=np.float64), np.asarray(q, dtype=np.float64))

    @property
    def k(self) -> int:
        return int(self.n.shape[0])

    def means(self) -> FloatArray:
        """Sample means; arms without observations get NaN."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.n > 0, self.reward_sum / np.maximum(self.n, 1e-300), np.nan)


@dataclass(frozen=True)
class AllocationWeights:
    """What a policy decided: the traffic share of each arm and how it got there.

    ``weights`` sum to 1 and respect the exploration floor. ``prob_best`` is the posterior
    probability that each arm is best (Thompson sampling only). ``mc_se`` is the largest
    Monte Carlo standard error of ``prob_best`` (``None`` when computed by quadrature);
    ``quad_error`` is ``|sum(prob_best) - 1|`` before normalisation for quadrature.
    """

    weights: FloatArray
    method: str
    prob_best: FloatArray | None = None
    mc_se: float | None = None
    quad_error: float | None = None
    epsilon: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "weights": self.weights.tolist()}
        if self.prob_best is not None:
            out["prob_best"] = self.prob_best.tolist()
        if self.mc_se is not None:
            out["mc_se"] = self.mc_se
        if self.quad_error is not None:
            out["quad_error"] = self.quad_error
        if self.epsilon is not None:
            out["epsilon"] = self.epsilon
        out.update(self.details)
        return out


class Policy(Protocol):
    """Turns arm statistics into allocation weights."""

    name: str
    version: str

    def weights(self, stats: PolicyStats, rng: np.random.Generator) -> AllocationWeights: ...


def policy_error(exc: ValidationError) -> PolicyError:
    """One PolicyError for a pydantic error; ``.errors`` keeps (field, message) pairs."""
    pairs = [
        (".".join(str(p) for p in e.get("loc", ())),
         str(e.get("msg", "invalid")).removeprefix("Value error, "))
        for e in exc.errors(include_url=False)
    ]
    return PolicyError("; ".join(f"{loc}: {msg}" if loc else msg for loc, msg in pairs), pairs)


class PolicyModel(BaseModel):
    """Base of every policy's parameters and settings: frozen, unknown fields rejected.

    Each parameter is declared once, here in ``armlab.core.policies``, with its type and range;
    the registry's experiment spec validates ``policy.params`` with the same classes, so what
    registration accepts is exactly what the allocator can build. A bad value raises
    :class:`PolicyError` naming the field.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise policy_error(exc) from None


class CommonSettings(PolicyModel):
    """Settings every policy shares (they come from the experiment's own fields).

    floor: minimum traffic share of every arm (0 <= floor <= 1/K, checked when K is known).
    burn_in: uniform allocation until every arm has at least this many matured observations.
    """

    floor: float = Field(0.0, ge=0.0, lt=1.0, description="Exploration floor per arm.")
    burn_in: int = Field(0, ge=0, description="Matured observations per arm before adapting.")


def check_floor(floor: float, k: int) -> None:
    if floor * k > 1.0 + 1e-12:
        raise PolicyError(
            f"exploration floor {floor} is too large for {k} arms: floor x arms must be <= 1 "
            f"(at most {1.0 / k:.6g})"
        )


def apply_floor(weights: FloatArray, floor: float) -> FloatArray:
    """Raise every weight to at least ``floor`` while keeping the sum at 1.

    Projection used (proportional water-filling): arms below the floor are set to the floor and
    the remaining mass ``1 - floor * #floored`` is shared among the other arms in proportion to
    their original weights; repeated until no arm is below the floor (at most K rounds). Weights
    already above the floor keep their ratios, and an input that already respects the floor is
    returned unchanged. Works on (..., K) arrays, row by row.
    """
    w = np.asarray(weights, dtype=np.float64)
    if floor <= 0.0:
        return w / w.sum(axis=-1, keepdims=True)
    k = w.shape[-1]
    check_floor(floor, k)
    w = w / w.sum(axis=-1, keepdims=True)
    fixed = np.zeros(w.shape, dtype=bool)
    out = w.copy()
    for _ in range(k):
        below = (out < floor - 1e-15) & ~fixed
        if not below.any():
            break
        fixed |= below
        free_mass = 1.0 - floor * fixed.sum(axis=-1, keepdims=True)
        free_w = np.where(fixed, 0.0, w)
        tot = free_w.sum(axis=-1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            scaled = np.where(tot > 0, free_w * free_mass / np.where(tot > 0, tot, 1.0), 0.0)
        # rows whose free arms have zero weight share the free mass equally
        n_free = (~fixed).sum(axis=-1, keepdims=True)
        equal = np.where(~fixed, free_mass / np.maximum(n_free, 1), 0.0)
        scaled = np.where(tot > 0, scaled, equal)
        out = np.where(fixed, floor, scaled)
    return out


def uniform_weights(k: int) -> FloatArray:
    return np.full(k, 1.0 / k)


def in_burn_in(stats: PolicyStats, burn_in: int) -> bool:
    return burn_in > 0 and bool(np.any(stats.n < burn_in))


def select(weights: FloatArray, rng: np.random.Generator) -> tuple[int, float]:
    """Draw one arm from ``weights``; return (arm index, propensity = its weight)."""
    w = np.asarray(weights, dtype=np.float64)
    cdf = np.cumsum(w)
    u = rng.random() * cdf[-1]
    i = int(np.searchsorted(cdf, u, side="right"))
    i = min(i, w.shape[0] - 1)
    while w[i] <= 0.0 and i > 0:  # guard against u landing exactly on a zero-width edge
        i -= 1
    return i, float(w[i] / cdf[-1])


class CdfSampler:
    """Draws arms from fixed weights with a precomputed CDF: the per-request serving path.

    ``select`` above rebuilds the CDF with numpy on every call (~20 µs of array overhead for a
    handful of arms); a snapshot's weights are fixed between allocator passes, so the API builds
    this once per snapshot and each decision is one uniform draw plus a bisection (~1 µs).
    """

    __slots__ = ("cdf", "total", "weights")

    def __init__(self, weights: Sequence[float]) -> None:
        w = tuple(float(x) for x in weights)
        if not w or any(x < 0.0 or not math.isfinite(x) for x in w) or sum(w) <= 0.0:
            raise PolicyError(f"weights must be finite, non-negative and not all zero, got {w}")
        self.weights = w
        self.cdf = tuple(accumulate(w))
        self.total = self.cdf[-1]

    @classmethod
    def trusted(cls, weights: list[float]) -> CdfSampler:
        """A sampler of weights the caller computed as finite, non-negative floats with a
        positive sum (the contextual serving path's per-context rows), without re-checking
        them; anything else gets the checked constructor (and its error)."""
        total = sum(weights)
        if not (total > 0.0 and math.isfinite(total)) or min(weights) < 0.0:
            return cls(weights)
        self = cls.__new__(cls)
        self.weights = tuple(weights)
        self.cdf = tuple(accumulate(self.weights))
        self.total = self.cdf[-1]
        return self

    def pick(self, u: float) -> tuple[int, float]:
        """Arm whose CDF interval contains u in [0, 1), and its propensity."""
        i = min(bisect_right(self.cdf, u * self.total), len(self.weights) - 1)
        while self.weights[i] <= 0.0 and i > 0:  # u fell on the edge of a zero-width arm
            i -= 1
        return i, self.weights[i] / self.total


def select_many(
    weights: FloatArray, rng: np.random.Generator, size: int
) -> tuple[npt.NDArray[np.int64], FloatArray]:
    """Draw ``size`` arms i.i.d. from ``weights``; return (arms, propensities)."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    cdf = np.cumsum(w)
    cdf[-1] = 1.0
    arms = np.searchsorted(cdf, rng.random(size), side="right").astype(np.int64)
    return arms, w[arms]
