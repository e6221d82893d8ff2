"""Epsilon-greedy and uniform allocation.

Epsilon-greedy (Sutton & Barto 2018, Sec. 2.2): explore uniformly with probability eps_t,
otherwise exploit the arm with the best sample mean, so the allocation weights are exactly
w_i = eps_t / K + (1 - eps_t) * 1[i in argmax] / |argmax| (ties split evenly).

Schedules:
* ``fixed``: eps_t = epsilon.
* ``decay``: eps_t = min(epsilon, c / t), t = total matured observations (at least 1) —
  the 1/t schedule of Auer, Cesa-Bianchi, Fischer (2002), "Finite-time analysis of the
  multiarmed bandit problem", eps-greedy with eps_n = min(1, cK/(d^2 n)); we expose c directly.

Arms without observations count as the best (optimistic start), so every arm is tried.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from armlab.core.policies.base import (
    POLICY_VERSION,
    AllocationWeights,
    CommonSettings,
    FloatArray,
    PolicyModel,
    PolicyStats,
    apply_floor,
    check_floor,
    in_burn_in,
    uniform_weights,
)


class EpsilonGreedyParams(PolicyModel):
    """The registrable parameters of ``epsilon_greedy``: epsilon, and its schedule."""

    epsilon: float = Field(0.1, ge=0.0, le=1.0)
    schedule: Literal["fixed", "decay"] = "fixed"
    decay_c: float = Field(100.0, gt=0.0)


class EpsilonGreedySettings(CommonSettings, EpsilonGreedyParams):
    """Everything an epsilon-greedy policy runs with."""


def epsilon_at(settings: EpsilonGreedySettings, total_n: FloatArray | float) -> FloatArray:
    """eps_t for the schedule, broadcasting over ``total_n``."""
    if settings.schedule == "fixed":
        return np.full(np.shape(total_n), float(settings.epsilon))
    t = np.maximum(np.asarray(total_n, dtype=np.float64), 1.0)
    return np.minimum(settings.epsilon, settings.decay_c / t)


def greedy_weights(means: FloatArray, n: FloatArray, eps: FloatArray) -> FloatArray:
    """Exact epsilon-greedy weights for (..., K) means; arms with n == 0 count as best."""
    k = means.shape[-1]
    m = np.where(n > 0, means, np.inf)
    m = np.nan_to_num(m, nan=np.inf)
    best = m == m.max(axis=-1, keepdims=True)
    share = best / best.sum(axis=-1, keepdims=True)
    eps = np.asarray(eps)[..., None]
    return eps / k + (1.0 - eps) * share


class EpsilonGreedy:
    name = "epsilon_greedy"
    version = POLICY_VERSION

    def __init__(self, settings: EpsilonGreedySettings | None = None) -> None:
        self.settings = settings or EpsilonGreedySettings()

    def weights(self, stats: PolicyStats, rng: np.random.Generator) -> AllocationWeights:
        s = self.settings
        check_floor(s.floor, stats.k)
        if in_burn_in(stats, s.burn_in):
            return AllocationWeights(
                uniform_weights(stats.k), "burn_in", details={"burn_in": s.burn_in}
            )
        eps = float(epsilon_at(s, stats.n.sum()))
        w = greedy_weights(stats.means(), stats.n, np.asarray(eps))
        return AllocationWeights(apply_floor(w, s.floor), "exact", epsilon=eps)


class UniformParams(PolicyModel):
    """``uniform`` (the classic A/B split) takes no parameters."""


class UniformSettings(CommonSettings, UniformParams):
    """Everything the uniform policy runs with."""


class Uniform:
    """The classic A/B(/n) split: every arm gets 1/K."""

    name = "uniform"
    version = POLICY_VERSION

    def __init__(self, settings: UniformSettings | None = None) -> None:
        self.settings = settings or UniformSettings()

    def weights(self, stats: PolicyStats, rng: np.random.Generator) -> AllocationWeights:
        check_floor(self.settings.floor, stats.k)
        return AllocationWeights(uniform_weights(stats.k), "exact")
