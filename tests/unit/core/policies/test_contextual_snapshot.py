"""Round trip of a contextual allocation through its snapshot form."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from armlab.core.policies.context_features import ContextSpec, FeatureSpec
from armlab.core.policies.contextual import SegmentAllocation
from armlab.core.policies.contextual_snapshot import (
    allocation_from_dict,
    allocation_to_dict,
    contextual_weights,
)
from armlab.core.policies.linear_thompson import LinearAllocation
from armlab.errors import PolicyError

FEATURES = [FeatureSpec(name="tier", kind="categorical", levels=("new", "heavy")),
            FeatureSpec(name="age", kind="numeric", center=30.0, scale=10.0)]


def test_a_segment_allocation_survives_its_snapshot_form() -> None:
    spec = ContextSpec(FEATURES[:1])
    w = np.array([[0.2, 0.8], [0.7, 0.3], [0.5, 0.5]])
    alloc = SegmentAllocation(spec, w, w, np.array([2, 1, 0]))
    back = allocation_from_dict(orjson.loads(orjson.dumps(allocation_to_dict(alloc, ["a", "b"]))))
    assert isinstance(back, SegmentAllocation)
    assert np.allclose(back.weights, w) and list(back.source) == [2, 1, 0]
    assert contextual_weights(back, ["a", "b"], {"tier": "heavy"}) == {"a": 0.7, "b": 0.3}
    assert contextual_weights(back, ["a", "b"], {"tier": "??"}) == {"a": 0.5, "b": 0.5}


def test_a_linear_allocation_survives_its_snapshot_form() -> None:
    spec = ContextSpec(FEATURES)
    d = spec.dim
    rng = np.random.default_rng(3)
    mean = rng.normal(size=(2, d)) * 0.1
    cov = np.stack([np.eye(d) * 0.01, np.eye(d) * 0.02])
    alloc = LinearAllocation(spec, mean, cov, 0.05, 129, False)
    back = allocation_from_dict(orjson.loads(orjson.dumps(allocation_to_dict(alloc, ["a", "b"]))))
    ctx = {"tier": "new", "age": 41}
    assert contextual_weights(back, ["a", "b"], ctx) == pytest.approx(
        contextual_weights(alloc, ["a", "b"], ctx))


def test_a_bad_snapshot_is_a_policy_error() -> None:
    with pytest.raises(PolicyError, match="contextual allocation snapshot"):
        allocation_from_dict({"policy": "segment_thompson", "features": []})
    with pytest.raises(PolicyError):
        allocation_from_dict({"policy": "nope", "features": [f.model_dump() for f in FEATURES]})
