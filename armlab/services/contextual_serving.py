"""Serving a contextual policy's snapshot: P(arm | context) per request.

The assigner rebuilds the allocation once per snapshot
(:func:`~armlab.core.policies.contextual_snapshot.allocation_from_dict` on the snapshot's
``stats["contextual"]``, written by :mod:`armlab.services.contextual_allocation`) and keeps it
in the experiment's view. A request is then one uniform ``u`` (a fresh draw for unit
``request``, the unit hash for unit ``user``) against the CDF of its context's row:

* ``segment_thompson``: the context's segment index, then the row's precomputed CDF (a
  bisection); the propensity is the segment row's weight of the served arm;
* ``linear_thompson``: the context's design vector, its floored P(arm | x) (cached per design
  vector for the snapshot's life, so repeated contexts cost a dict lookup), then the CDF.

The propensity returned is therefore exactly P(served arm | context) under the snapshot, what
the inverse-propensity test and off-policy evaluation need. A context value of the wrong type
for a declared feature raises :class:`~armlab.errors.PolicyError` (422); missing features take
their declared defaults.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from armlab.adapters.db.models import AllocationSnapshot, Experiment
from armlab.core.policies import CONTEXTUAL_POLICY_NAMES
from armlab.core.policies.contextual import SegmentAllocation
from armlab.core.policies.contextual_snapshot import ContextualAllocation, allocation_from_dict
from armlab.core.status import ExperimentStatus
from armlab.errors import PolicyError

log = logging.getLogger("armlab.assignment")


@dataclass(frozen=True)
class ContextualServing:
    """One snapshot's contextual allocation over ``arms`` (the arms it serves, in the
    experiment's order; rolled-back arms are absent)."""

    alloc: ContextualAllocation
    arms: tuple[str, ...]

    def pick(self, u: float, context: Mapping[str, Any]) -> tuple[str, float]:
        """The arm whose CDF interval of the context's row contains ``u`` in [0, 1), and
        P(arm | context)."""
        alloc = self.alloc
        if isinstance(alloc, SegmentAllocation):
            i, p = alloc.samplers[alloc.spec.segment_index(context)].pick(u)
            return self.arms[i], p
        w = alloc.weights_one(alloc.spec.encode(context))
        cdf = np.cumsum(w)
        i = min(int(np.searchsorted(cdf, u * cdf[-1], side="right")), w.size - 1)
        return self.arms[i], float(w[i] / cdf[-1])


def contextual_serving(exp: Experiment, snapshot: AllocationSnapshot | None
                       ) -> ContextualServing | None:
    """The contextual allocation a running contextual experiment serves from its latest
    snapshot; None when there is none to serve (not contextual, not running, no snapshot yet
    or one without the block: the snapshot's plain weights, uniform before any, serve)."""
    if (getattr(exp, "policy_name", None) not in CONTEXTUAL_POLICY_NAMES or snapshot is None
            or exp.status != ExperimentStatus.RUNNING):
        return None
    block = (snapshot.stats or {}).get("contextual")
    if not isinstance(block, dict):
        return None
    try:
        alloc = allocation_from_dict(block)
        arms = tuple(str(a) for a in block["arms"])
        known = {a.key for a in exp.arms}
        k = alloc.weights.shape[1] if isinstance(alloc, SegmentAllocation) else alloc.mean.shape[0]
        if len(arms) != k or not set(arms) <= known:
            raise PolicyError(f"arms {list(arms)} do not match the allocation's {k} arms")
    except (PolicyError, KeyError, TypeError) as exc:
        log.error("experiment %s: snapshot %s has an unusable contextual block (%s); serving "
                  "its mean weights", exp.key, snapshot.id, exc)
        return None
    return ContextualServing(alloc, arms)


__all__ = ["ContextualServing", "contextual_serving"]
