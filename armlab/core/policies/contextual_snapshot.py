"""A contextual policy's allocation as an allocation snapshot stores it, and back.

The allocator computes a :class:`~armlab.core.policies.contextual.SegmentAllocation` or a
:class:`~armlab.core.policies.linear_thompson.LinearAllocation` once per pass and stores
:func:`allocation_to_dict` in the snapshot's ``stats["contextual"]``; the assigner (serving
``P(arm | context)`` per request) and the analyses (per-segment effects, the off-policy value
of the learned policy) rebuild the same object with :func:`allocation_from_dict`. The format
(JSON, arms in the experiment's arm order):

* ``{"policy": "segment_thompson", "features": [FeatureSpec dumps], "arms": [keys],
  "segments": [{"segment": {feature: level}, "source": "burn_in"|"pooled"|"segment",
  "weights": [w per arm], "prob_best": [...]}, ...]}`` (one row per segment, in segment-index
  order);
* ``{"policy": "linear_thompson", "features": [...], "arms": [keys], "mean": (K, d),
  "cov": (K, d, d), "floor": f, "grid": g, "burn_in": bool, "pooled": [K] | null,
  "context_weight": w}`` (``pooled``: the context-free P(best) row of ``pooling:
  model_average``, mixed in at 1 - w; absent in older snapshots: the per-context model
  alone).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from armlab.core.policies.context_features import ContextSpec, FeatureSpec
from armlab.core.policies.contextual import SOURCES, SegmentAllocation
from armlab.core.policies.linear_thompson import LinearAllocation
from armlab.errors import PolicyError

ContextualAllocation = SegmentAllocation | LinearAllocation


def allocation_to_dict(alloc: ContextualAllocation, arms: Sequence[str]) -> dict[str, Any]:
    """The snapshot form of ``alloc`` (see the module doc)."""
    features = [f.model_dump() for f in alloc.spec.features]
    if isinstance(alloc, SegmentAllocation):
        return {
            "policy": "segment_thompson", "features": features, "arms": list(arms),
            "segments": [
                {"segment": alloc.spec.segment_label(g),
                 "source": SOURCES[int(alloc.source[g])],
                 "weights": [float(x) for x in alloc.weights[g]],
                 "prob_best": [float(x) for x in alloc.prob_best[g]]}
                for g in range(alloc.weights.shape[0])
            ],
        }
    return {
        "policy": "linear_thompson", "features": features, "arms": list(arms),
        "mean": alloc.mean.tolist(), "cov": alloc.cov.tolist(), "floor": float(alloc.floor),
        "grid": int(alloc.grid), "burn_in": bool(alloc.burn_in),
        "pooled": None if alloc.pooled is None else [float(x) for x in alloc.pooled],
        "context_weight": float(alloc.context_weight),
    }


def allocation_from_dict(d: Mapping[str, Any]) -> ContextualAllocation:
    """The allocation a snapshot stored; PolicyError when ``d`` is not one."""
    try:
        spec = ContextSpec([FeatureSpec(**f) for f in d["features"]])
        policy = d["policy"]
        if policy == "segment_thompson":
            rows = list(d["segments"])
            if len(rows) != spec.n_segments:
                raise PolicyError(f"snapshot has {len(rows)} segments, the features define "
                                  f"{spec.n_segments}")
            weights = np.asarray([r["weights"] for r in rows], dtype=np.float64)
            prob = np.asarray([r.get("prob_best", r["weights"]) for r in rows],
                              dtype=np.float64)
            source = np.asarray([SOURCES.index(r.get("source", "segment")) for r in rows],
                                dtype=np.int64)
            return SegmentAllocation(spec, weights, prob, source)
        if policy == "linear_thompson":
            pooled = d.get("pooled")  # absent before pooling: model_average
            return LinearAllocation(spec, np.asarray(d["mean"], dtype=np.float64),
                                    np.asarray(d["cov"], dtype=np.float64), float(d["floor"]),
                                    int(d["grid"]), bool(d["burn_in"]),
                                    None if pooled is None
                                    else np.asarray(pooled, dtype=np.float64),
                                    float(d.get("context_weight", 1.0)))
    except (KeyError, TypeError, ValueError) as exc:
        raise PolicyError(f"not a contextual allocation snapshot: {exc}") from None
    raise PolicyError(f"not a contextual allocation snapshot: policy {d.get('policy')!r}")


def contextual_weights(alloc: ContextualAllocation, arms: Sequence[str],
                       context: Mapping[str, Any]) -> dict[str, float]:
    """P(arm | context) by arm key (the propensities a request with ``context`` is served)."""
    row = alloc.propensities([context])[0]
    return {a: float(w) for a, w in zip(arms, row, strict=True)}
