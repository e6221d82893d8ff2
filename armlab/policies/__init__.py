"""Allocation policies: pure numpy/scipy, no I/O.

``make_policy`` turns an experiment's policy name and parameters into a policy object whose
``weights(stats, rng)`` returns :class:`AllocationWeights`; :func:`select` draws an arm with
its propensity.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from armlab.errors import PolicyError
from armlab.policies.base import (
    POLICY_VERSION,
    AllocationWeights,
    ArmStats,
    CdfSampler,
    CommonSettings,
    Policy,
    apply_floor,
    select,
    select_many,
)
from armlab.policies.greedy import EpsilonGreedy, EpsilonGreedySettings, Uniform, UniformSettings
from armlab.policies.thompson import ThompsonSampling, ThompsonSettings

POLICY_NAMES = ("thompson", "top_two_thompson", "epsilon_greedy", "uniform")

__all__ = [
    "POLICY_NAMES",
    "POLICY_VERSION",
    "AllocationWeights",
    "ArmStats",
    "CdfSampler",
    "CommonSettings",
    "EpsilonGreedy",
    "EpsilonGreedySettings",
    "Policy",
    "ThompsonSampling",
    "ThompsonSettings",
    "Uniform",
    "UniformSettings",
    "apply_floor",
    "make_policy",
    "select",
    "select_many",
]


def _build(cls: type, params: dict[str, Any], fixed: dict[str, Any]) -> Any:
    allowed = {f.name for f in dataclasses.fields(cls)} - set(fixed)
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise PolicyError(
            f"unknown policy parameter(s) {', '.join(unknown)}; valid: {', '.join(sorted(allowed))}"
        )
    return cls(**{**params, **fixed})


def make_policy(
    name: str,
    params: dict[str, Any] | None = None,
    *,
    reward_kind: str = "binary",
    floor: float = 0.0,
    burn_in: int = 0,
) -> Policy:
    """Build a policy from an experiment's ``policy_name``/``policy_params``.

    ``floor`` and ``burn_in`` come from the experiment's own fields; ``reward_kind`` selects
    the Thompson posterior (binary: Beta-Bernoulli, continuous: Normal-Inverse-Gamma).
    Unknown parameter names raise PolicyError listing the valid ones.
    """
    params = dict(params or {})
    common = {"floor": floor, "burn_in": burn_in}
    if name in ("thompson", "top_two_thompson"):
        fixed = {**common, "reward": reward_kind}
        if name == "top_two_thompson":
            fixed["top_two"] = True
        return ThompsonSampling(_build(ThompsonSettings, params, fixed))
    if name == "epsilon_greedy":
        return EpsilonGreedy(_build(EpsilonGreedySettings, params, common))
    if name == "uniform":
        return Uniform(_build(UniformSettings, params, common))
    raise PolicyError(f"unknown policy {name!r}; valid: {', '.join(POLICY_NAMES)}")
