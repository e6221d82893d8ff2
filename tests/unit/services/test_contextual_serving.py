"""The contextual serving path (:mod:`armlab.services.contextual_serving`): the per-request
propensity is the snapshot's P(arm | context) as the analyses recompute it
(``allocation_from_dict(...).propensities``), for the linear policy's own quadrature and floor
as for the segment rows; the arms' frequencies match it; the one-row floor is the core's."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from armlab.core.policies import make_contextual_policy
from armlab.core.policies.base import apply_floor
from armlab.core.policies.contextual_snapshot import allocation_from_dict, allocation_to_dict
from armlab.core.policies.linear_thompson import (
    LinearStats,
    LinearThompson,
)
from armlab.services.contextual_serving import ContextualServing, floor_row

ARMS = ("control", "a", "b")
FEATURES = [{"name": "device", "kind": "categorical", "levels": ["mobile", "desktop"]},
            {"name": "age", "kind": "numeric", "center": 40, "scale": 12}]


def _linear(floor: float, rng: np.random.Generator) -> dict[str, Any]:
    policy = make_contextual_policy("linear_thompson", {"features": FEATURES}, floor=floor)
    assert isinstance(policy, LinearThompson)
    ctx = [{"device": ["mobile", "desktop"][int(rng.integers(2))],
            "age": float(rng.uniform(18, 70))} for _ in range(3000)]
    arms = rng.integers(3, size=3000)
    best = np.array([0 if c["device"] == "desktop" else 2 for c in ctx])
    rewards = (rng.random(3000) < np.where(arms == best, 0.3, 0.1)).astype(float)
    stats = policy.update(LinearStats.empty(3, policy.spec.dim), ctx, arms, rewards)
    return allocation_to_dict(policy.allocate(stats), ARMS)


@pytest.mark.parametrize("floor", [0.0, 0.05, 0.2])
def test_one_row_floor_is_the_cores(floor: float) -> None:
    rng = np.random.default_rng(1)
    for _ in range(300):
        w = rng.dirichlet(np.full(4, 0.3))
        assert floor_row(w.tolist(), floor) == pytest.approx(
            apply_floor(w, floor).tolist(), abs=1e-14)


@pytest.mark.parametrize(("floor", "mix"), [(0.0, None), (0.05, None), (0.05, 0.4)])
def test_linear_propensities_are_the_snapshots(floor: float, mix: float | None) -> None:
    rng = np.random.default_rng(2)
    block = _linear(floor, rng)
    if mix is not None:  # halfway between the per-context and the context-free model
        block = {**block, "context_weight": mix, "pooled": [0.2, 0.5, 0.3]}
    serving = ContextualServing(allocation_from_dict(block), ARMS)
    analyses = allocation_from_dict(block)  # what the inference side rebuilds
    contexts = [{"device": ["mobile", "desktop", "tablet"][i % 3],
                 "age": float(rng.uniform(18, 70))} for i in range(200)]
    expected = analyses.propensities(contexts)
    for ctx, row in zip(contexts, expected, strict=True):
        for u in (0.0, 0.37, 0.999):
            arm, p = serving.pick(u, ctx)
            assert p == pytest.approx(row[ARMS.index(arm)], abs=1e-9)
            assert p >= floor - 1e-12
    # a repeated context: the cached sampler, the same answer
    assert serving.pick(0.5, contexts[0]) == serving.pick(0.5, contexts[0])


def test_moments_from_the_categorical_block_are_the_design_vectors() -> None:
    """The serving path's (loc, sd) from a cached categorical block plus the numeric values
    equal mean @ x and sqrt(x' cov x) on the encoded design vector (two numeric features,
    two categorical ones, defaults and unknown levels included)."""
    features = [*FEATURES, {"name": "tenure", "kind": "numeric", "center": 3, "scale": 2},
                {"name": "os", "kind": "categorical", "levels": ["ios", "android"]}]
    policy = make_contextual_policy("linear_thompson", {"features": features}, floor=0.0)
    assert isinstance(policy, LinearThompson)
    rng = np.random.default_rng(9)
    ctx = [{"device": ["mobile", "desktop"][int(rng.integers(2))],
            "age": float(rng.uniform(18, 70)), "tenure": float(rng.uniform(0, 9)),
            "os": ["ios", "android"][int(rng.integers(2))]} for _ in range(2000)]
    arms = rng.integers(3, size=2000)
    rewards = (rng.random(2000) < 0.1 + 0.1 * (arms == 1)).astype(float)
    stats = policy.update(LinearStats.empty(3, policy.spec.dim), ctx, arms, rewards)
    alloc = allocation_from_dict(allocation_to_dict(policy.allocate(stats), ARMS))
    serving = ContextualServing(alloc, ARMS)
    for c in [*ctx[:50], {"device": "tablet", "age": 33.3}, {}, {"os": "web", "tenure": 0}]:
        x = alloc.spec.encode(c)
        loc, sd = serving._moments(c)
        np.testing.assert_allclose(np.array(loc), alloc.mean @ x, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.array(sd), np.sqrt(np.maximum((alloc.cov @ x) @ x, 0.0)),
                                   rtol=1e-9, atol=1e-12)


def test_four_arms_serve_the_cores_quadrature() -> None:
    """Beyond 3 arms the closed form does not apply: serving takes the core's quadrature, and
    its propensities are still the snapshot's."""
    arms = ("control", "a", "b", "c")
    policy = make_contextual_policy("linear_thompson", {"features": FEATURES}, floor=0.02)
    assert isinstance(policy, LinearThompson)
    rng = np.random.default_rng(4)
    ctx = [{"device": ["mobile", "desktop"][int(rng.integers(2))],
            "age": float(rng.uniform(18, 70))} for _ in range(3000)]
    chosen = rng.integers(4, size=3000)
    rewards = (rng.random(3000) < 0.1 + 0.05 * chosen).astype(float)
    stats = policy.update(LinearStats.empty(4, policy.spec.dim), ctx, chosen, rewards)
    block = allocation_to_dict(policy.allocate(stats), arms)
    serving = ContextualServing(allocation_from_dict(block), arms)
    contexts = [{"device": "mobile", "age": float(a)} for a in rng.uniform(18, 70, 50)]
    expected = allocation_from_dict(block).propensities(contexts)
    for c, row in zip(contexts, expected, strict=True):
        arm, p = serving.pick(0.42, c)
        assert p == pytest.approx(row[arms.index(arm)], abs=1e-9)


def test_linear_frequencies_match_the_propensities() -> None:
    rng = np.random.default_rng(3)
    block = _linear(0.02, rng)
    serving = ContextualServing(allocation_from_dict(block), ARMS)
    for ctx in ({"device": "mobile", "age": 30}, {"device": "desktop", "age": 55}):
        n = 4000
        counts = dict.fromkeys(ARMS, 0)
        props: dict[str, float] = {}
        for u in rng.random(n):
            arm, p = serving.pick(float(u), ctx)
            counts[arm] += 1
            props[arm] = p
        row = allocation_from_dict(block).propensities([ctx])[0]
        for i, arm in enumerate(ARMS):
            assert abs(counts[arm] / n - row[i]) <= 4 * np.sqrt(row[i] * (1 - row[i]) / n) + 1e-9


def test_the_cache_keeps_values_of_different_types_apart_and_refills_when_full(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import armlab.services.contextual_serving as cs

    rng = np.random.default_rng(4)
    feats = [{"name": "flag", "kind": "categorical", "levels": ["1", "true"]},
             {"name": "age", "kind": "numeric", "center": 40, "scale": 12}]
    policy = make_contextual_policy("linear_thompson", {"features": feats}, floor=0.05)
    assert isinstance(policy, LinearThompson)
    ctx = [{"flag": [1, True, "x"][i % 3], "age": float(rng.uniform(18, 70))}
           for i in range(3000)]
    arms = rng.integers(3, size=3000)
    best = np.array([0 if c["flag"] == 1 and c["flag"] is not True else 2 for c in ctx])
    rewards = (rng.random(3000) < np.where(arms == best, 0.3, 0.1)).astype(float)
    block = allocation_to_dict(policy.allocate(policy.update(
        LinearStats.empty(3, policy.spec.dim), ctx, arms, rewards)), ARMS)
    serving = ContextualServing(allocation_from_dict(block), ARMS)
    analyses = allocation_from_dict(block)
    # 1 and True are different levels ("1", "true") although 1 == True in Python
    for c in ({"flag": 1, "age": 30}, {"flag": True, "age": 30}, {"flag": 1, "age": 30}):
        row = analyses.propensities([c])[0]
        arm, p = serving.pick(0.999, c)
        assert p == pytest.approx(row[ARMS.index(arm)], abs=1e-9)
    assert len(serving._samplers) == 2
    # a full cache is emptied, so a context seen again is cached again
    monkeypatch.setattr(cs, "CACHE_SIZE", 5)
    for age in range(10):
        serving.pick(0.5, {"flag": "1", "age": age})
    assert 0 < len(serving._samplers) <= 5
    serving.pick(0.5, {"flag": 1, "age": 30})
    assert (((int, 1), (int, 30)) in serving._samplers)
    # an unhashable value is encoded (and refused) every time, never cached
    with pytest.raises(Exception, match="categorical"):
        serving.pick(0.5, {"flag": [1], "age": 30})
