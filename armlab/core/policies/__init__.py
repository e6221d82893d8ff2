"""Allocation policies: pure numpy/scipy, no I/O.

``make_policy`` turns an experiment's policy name and parameters into a policy object whose
``weights(stats, rng)`` returns :class:`AllocationWeights`; :func:`select` draws an arm with
its propensity.
"""

from __future__ import annotations

from typing import Any, Literal, cast

from armlab.core.policies.base import (
    POLICY_VERSION,
    AllocationWeights,
    CdfSampler,
    CommonSettings,
    Policy,
    PolicyModel,
    PolicyStats,
    apply_floor,
    select,
    select_many,
)
from armlab.core.policies.contextual import (
    SegmentThompson,
    SegmentThompsonParams,
    SegmentThompsonSettings,
)
from armlab.core.policies.greedy import (
    EpsilonGreedy,
    EpsilonGreedyParams,
    EpsilonGreedySettings,
    Uniform,
    UniformParams,
    UniformSettings,
)
from armlab.core.policies.linear_thompson import (
    LinearThompson,
    LinearThompsonParams,
    LinearThompsonSettings,
)
from armlab.core.policies.thompson import (
    ThompsonParams,
    ThompsonSampling,
    ThompsonSettings,
    TopTwoThompsonParams,
)
from armlab.errors import PolicyError

#: The registrable parameters of each policy name: the one declaration that both the
#: experiment spec (registration) and :func:`make_policy` (the allocator) use.
POLICY_PARAMS: dict[str, type[PolicyModel]] = {
    "thompson": ThompsonParams,
    "top_two_thompson": TopTwoThompsonParams,
    "epsilon_greedy": EpsilonGreedyParams,
    "uniform": UniformParams,
    "segment_thompson": SegmentThompsonParams,
    "linear_thompson": LinearThompsonParams,
}
POLICY_NAMES = tuple(POLICY_PARAMS)
#: Policies that allocate per request context (``policy.params.features``): the allocator
#: builds them with :func:`make_contextual_policy`, not :func:`make_policy`.
CONTEXTUAL_POLICY_NAMES = ("segment_thompson", "linear_thompson")
ContextualPolicy = SegmentThompson | LinearThompson

__all__ = [
    "CONTEXTUAL_POLICY_NAMES",
    "POLICY_NAMES",
    "POLICY_PARAMS",
    "POLICY_VERSION",
    "AllocationWeights",
    "PolicyStats",
    "CdfSampler",
    "CommonSettings",
    "EpsilonGreedy",
    "EpsilonGreedyParams",
    "EpsilonGreedySettings",
    "Policy",
    "PolicyModel",
    "ThompsonParams",
    "ThompsonSampling",
    "ThompsonSettings",
    "TopTwoThompsonParams",
    "Uniform",
    "UniformParams",
    "UniformSettings",
    "apply_floor",
    "ContextualPolicy",
    "check_params",
    "make_contextual_policy",
    "make_policy",
    "select",
    "select_many",
]


def check_params(name: str, params: dict[str, Any]) -> PolicyModel:
    """Validate ``params`` for policy ``name``; PolicyError names the bad or unknown field."""
    model = POLICY_PARAMS.get(name)
    if model is None:
        raise PolicyError(f"unknown policy {name!r}; valid: {', '.join(POLICY_NAMES)}")
    unknown = sorted(set(params) - set(model.model_fields))
    if unknown:
        valid = ", ".join(sorted(model.model_fields)) or "none"
        raise PolicyError(f"unknown policy parameter(s) {', '.join(unknown)}; valid: {valid}")
    return model(**params)


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
    check_params(name, params)
    if name in CONTEXTUAL_POLICY_NAMES:
        raise PolicyError(f"{name} allocates per context: build it with make_contextual_policy")
    common: dict[str, Any] = {"floor": float(floor), "burn_in": burn_in}
    if name in ("thompson", "top_two_thompson"):
        top_two = name == "top_two_thompson"
        reward = cast(Literal["binary", "continuous"], reward_kind)  # validated by the model
        return ThompsonSampling(
            ThompsonSettings(**params, **common, reward=reward, top_two=top_two)
        )
    if name == "epsilon_greedy":
        return EpsilonGreedy(EpsilonGreedySettings(**params, **common))
    return Uniform(UniformSettings(**params, **common))


def make_contextual_policy(
    name: str,
    params: dict[str, Any] | None = None,
    *,
    reward_kind: str = "binary",
    floor: float = 0.0,
    burn_in: int = 0,
) -> ContextualPolicy:
    """Build ``segment_thompson`` or ``linear_thompson`` from an experiment's policy fields;
    ``floor`` and ``burn_in`` apply per context (per segment, or to every context of the
    linear policy). ``segment_thompson`` needs binary rewards."""
    params = dict(params or {})
    check_params(name, params)
    common: dict[str, Any] = {"floor": float(floor), "burn_in": burn_in}
    if name == "segment_thompson":
        if reward_kind != "binary":
            raise PolicyError("segment_thompson needs binary rewards (reward.kind: binary)")
        return SegmentThompson(SegmentThompsonSettings(**params, **common))
    if name == "linear_thompson":
        return LinearThompson(LinearThompsonSettings(
            **params, **common, binary_rewards=reward_kind == "binary"))
    raise PolicyError(f"{name!r} is not a contextual policy; contextual: "
                      f"{', '.join(CONTEXTUAL_POLICY_NAMES)}")
