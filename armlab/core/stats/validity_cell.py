"""One cell of the validity grid (:mod:`armlab.core.stats.validity_grid`): its configuration, the
per-arm sums a simulation keeps, and the batched Thompson weight that allocates its traffic."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy.special import ndtr

from armlab.core.stats.msprt import DEFAULT_HORIZON_SHARE, tau2_for_horizon
from armlab.errors import StatsError

FloatArray = npt.NDArray[np.float64]
Unit = Literal["request", "user"]
# When armlab's analyses freeze tau² (and the horizon plan): at the first look with
# min_samples units AND min_events events per arm (the look gate, the platform's rule), or,
# as the platform did before, with min_samples units alone.
PlanAt = Literal["events", "samples"]

SRM_ALPHA = 0.001
SRM_TAU2 = 0.02**2
# The sums one allocation keeps per arm (index into the state array):
# n, s, ss, in, is, iss, ins  (as ArmSums: n, reward_sum, reward_sumsq, ipw_n, ipw_sum,
# ipw_sumsq, ipw_n_sq), plus impression-level n, s, in, is, iss, ins for unit user.
_FIELDS = ("n", "s", "ss", "in", "is", "iss", "ins", "imp_n", "imp_s", "imp_in", "imp_is",
           "imp_iss", "imp_ins",
           # unit user with a pre-period covariate X (CellConfig.pre_impressions): sums of X,
           # X², XY and X/p, X²/p², XY/p² over the arm's users (armlab.core.stats.cuped)
           "x", "xx", "xy", "ix", "ixx", "ixy")
_IDX = {f: i for i, f in enumerate(_FIELDS)}


@dataclass(frozen=True)
class CellConfig:
    """One cell of the grid (see the module doc of :mod:`armlab.core.stats.validity_grid`)."""

    base_rate: float = 0.05
    floor: float = 0.1
    look_every: int = 100
    unit: Unit = "request"
    delay: bool = False
    reps: int = 1000
    reps_alt: int | None = None
    seed: int = 0
    max_n: int = 10_000
    lift: float = 1.2
    alpha: float = 0.05
    alloc_every: int = 100
    min_samples: int = 100
    min_events: int = 30
    impressions_per_user: int = 10
    icc: float = 0.15
    delay_impressions: int = 1000
    horizon_share: float = DEFAULT_HORIZON_SHARE
    plan_at: PlanAt = "events"
    pre_impressions: int = 0

    def __post_init__(self) -> None:
        if not (0.0 < self.base_rate < 1.0 and 0.0 < self.base_rate * self.lift < 1.0):
            raise StatsError(f"base_rate must lie in (0, 1) with lift, got {self.base_rate!r}")
        if not (0.0 < self.floor < 0.5):
            raise StatsError(f"floor must lie in (0, 0.5), got {self.floor!r}")
        if self.unit not in ("request", "user"):
            raise StatsError(f"unit must be request or user, got {self.unit!r}")
        if self.reps < 1 or (self.reps_alt is not None and self.reps_alt < 1):
            raise StatsError("reps must be >= 1")
        if self.look_every < 1 or self.alloc_every < 1 or self.max_n < 1:
            raise StatsError("look_every, alloc_every and max_n must be >= 1")
        if self.unit == "user" and self.look_every % self.impressions_per_user:
            raise StatsError("for unit user, look_every must be a multiple of "
                             f"impressions_per_user ({self.impressions_per_user})")
        if self.pre_impressions < 0 or (self.pre_impressions and self.unit != "user"):
            raise StatsError("pre_impressions (a pre-period covariate) needs unit user and "
                             f"must be >= 0, got {self.pre_impressions!r}")
        if self.plan_at not in ("events", "samples"):
            raise StatsError(f"plan_at must be events or samples, got {self.plan_at!r}")
        if not (0.0 < self.horizon_share < 1.0):
            raise StatsError(f"horizon_share must lie in (0, 1), got {self.horizon_share!r}")
        if not (0.0 < self.icc < 1.0):
            raise StatsError(f"icc must lie in (0, 1), got {self.icc!r}")

    @property
    def horizon(self) -> int:
        """Total impressions (both arms)."""
        return 2 * self.max_n


def thompson_weight(s_a: FloatArray, n_a: FloatArray, s_b: FloatArray, n_b: FloatArray,
                     floor: float) -> FloatArray:
    """P(b best) under Beta(1+S, 1+F) posteriors, normal approximation, clipped to the floor."""
    ma, mb = (1 + s_a) / (2 + n_a), (1 + s_b) / (2 + n_b)
    va, vb = ma * (1 - ma) / (3 + n_a), mb * (1 - mb) / (3 + n_b)
    w = ndtr((mb - ma) / np.sqrt(va + vb))
    return np.clip(w, floor, 1.0 - floor)


def _planned_tau2(sigma2: float, horizon: float, inv_sum: float, alpha: float) -> float:
    """Howard et al. (2021) §3.5 tuning at Var(D) = sigma2 * inv_sum / horizon, where
    inv_sum is the planned mean of 1/p(a) + 1/p(b) (4 for 50/50; see planned_variance)."""
    return tau2_for_horizon(sigma2 * inv_sum / horizon, alpha)
