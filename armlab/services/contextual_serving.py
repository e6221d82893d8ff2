"""Serving a contextual policy's snapshot: P(arm | context) per request.

The assigner rebuilds the allocation once per snapshot
(:func:`~armlab.core.policies.contextual_snapshot.allocation_from_dict` on the snapshot's
``stats["contextual"]``, written by :mod:`armlab.services.contextual_allocation`) and keeps it
in the experiment's view. A request is then one uniform ``u`` (a fresh draw for unit
``request``, the unit hash for unit ``user``) against the CDF of its context's row:

* ``segment_thompson``: the context's segment index, then the row's precomputed CDF (a
  bisection); the propensity is the segment row's weight of the served arm;
* ``linear_thompson``: the arms' score moments at the context, its floored P(arm | x) (the
  core's closed form for up to 3 arms, :func:`~armlab.core.policies.normal_max.prob_best_one`;
  beyond, the core's quadrature,
  :func:`~armlab.core.policies.linear_thompson.normal_prob_best_one`); its CDF cached
  per context for the snapshot's life, keyed by the declared features' values and types, at
  most CACHE_SIZE at a time, so repeated contexts cost a dict lookup, then the CDF. A new
  numeric value pays the arms' moments from the cached categorical block (a few products in
  plain floats) and the closed form (about 19 µs in all in process on the development VM).

The propensity returned is therefore exactly P(served arm | context) under the snapshot, what
the inverse-propensity test and off-policy evaluation need. A context value of the wrong type
for a declared feature raises :class:`~armlab.errors.PolicyError` (422); missing features take
their declared defaults.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from armlab.core.policies import CONTEXTUAL_POLICY_NAMES
from armlab.core.policies.base import CdfSampler
from armlab.core.policies.context_features import numeric_value
from armlab.core.policies.contextual import SegmentAllocation
from armlab.core.policies.contextual_snapshot import ContextualAllocation, allocation_from_dict
from armlab.core.policies.linear_thompson import CACHE_SIZE, normal_prob_best_one
from armlab.core.policies.normal_max import prob_best_one
from armlab.core.records import ExperimentRecord, SnapshotRecord
from armlab.core.status import ExperimentStatus
from armlab.errors import PolicyError

log = logging.getLogger("armlab.assignment")


def floor_row(weights: list[float], floor: float) -> list[float]:
    """:func:`armlab.core.policies.base.apply_floor` of one row, on a Python list (the same
    proportional water-filling, without numpy's per-call overhead on a handful of arms)."""
    total = sum(weights)
    w = [x / total for x in weights]
    if floor <= 0.0 or min(w) >= floor - 1e-15:  # the loop's first pass would keep w
        return w
    k = len(w)
    lim = floor - 1e-15
    fixed: set[int] = set()
    out = w
    for _ in range(k):
        below = [i for i in range(k) if i not in fixed and out[i] < lim]
        if not below:
            break
        fixed.update(below)
        free_mass = 1.0 - floor * len(fixed)
        tot = sum([0.0 if i in fixed else w[i] for i in range(k)])
        n_free = max(k - len(fixed), 1)
        out = [floor if i in fixed else (w[i] * free_mass / tot if tot > 0 else free_mass / n_free)
               for i in range(k)]
    return out


@dataclass(frozen=True)
class ContextualServing:
    """One snapshot's contextual allocation over ``arms`` (the arms it serves, in the
    experiment's order; rolled-back arms are absent)."""

    alloc: ContextualAllocation
    arms: tuple[str, ...]
    #: linear policy: the CDF sampler of each context served, keyed by the declared features'
    #: raw values with their types (a hit skips the encoding), at most CACHE_SIZE entries
    #: (emptied when full, so contexts seen once cannot crowd out the repeated ones for the
    #: snapshot's life); the quadrature grid; the declared features' names
    _samplers: dict[Any, CdfSampler] = field(default_factory=dict, repr=False,
                                             compare=False)
    _z: Any = field(default=None, repr=False, compare=False)
    _names: tuple[str, ...] = field(default=(), repr=False, compare=False)
    #: linear policy: per combination of categorical levels, its part of each arm's mean and
    #: variance (see :meth:`_moments`), at most CACHE_SIZE at a time
    _blocks: dict[Any, tuple[Any, ...]] = field(default_factory=dict, repr=False,
                                                compare=False)
    _cat_names: tuple[str, ...] = field(default=(), repr=False, compare=False)
    _pooled: list[float] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.alloc, SegmentAllocation):
            object.__setattr__(self, "_z", np.linspace(-6.5, 6.5, self.alloc.grid))
            object.__setattr__(self, "_names",
                               tuple(f.name for f in self.alloc.spec.features))
            object.__setattr__(self, "_cat_names",
                               tuple(f.name for f in self.alloc.spec.categorical))
            pooled = self.alloc.pooled
            object.__setattr__(self, "_pooled",
                               None if pooled is None else [float(x) for x in pooled])

    def pick(self, u: float, context: Mapping[str, Any]) -> tuple[str, float]:
        """The arm whose CDF interval of the context's row contains ``u`` in [0, 1), and
        P(arm | context)."""
        alloc = self.alloc
        if isinstance(alloc, SegmentAllocation):
            i, p = alloc.samplers[alloc.spec.segment_index(context)].pick(u)
        else:
            i, p = self._linear_sampler(context).pick(u)
        return self.arms[i], p

    def _linear_sampler(self, context: Mapping[str, Any]) -> CdfSampler:
        """The sampler of P(arm | x(context)): the core's ``LinearAllocation.weights_one``
        (the same quadrature, floor applied per context), kept for the next request with the
        same values (the key holds each value's type: 1, 1.0 and True encode alike or not at
        all, so they are kept apart; an unhashable value is encoded every time)."""
        samplers = self._samplers
        try:
            key: Any = tuple([(v.__class__, v) for v in map(context.get, self._names)])
            sampler = samplers.get(key)
        except TypeError:
            key, sampler = None, None
        if sampler is not None:
            return sampler
        alloc = self.alloc
        assert not isinstance(alloc, SegmentAllocation)
        k = alloc.mean.shape[0]
        if alloc.burn_in:
            alloc.spec.encode(context)  # PolicyError (422) on a value of the wrong type
            weights = [1.0 / k] * k
        else:
            loc, sd = self._moments(context)
            p = (prob_best_one(loc, sd) if k <= 3  # the core's closed form, in plain floats
                 else normal_prob_best_one(np.array(loc), np.array(sd), self._z).tolist())
            if self._pooled is not None:  # pooling: model_average, as the core mixes
                w = alloc.context_weight
                p = [w * a + (1.0 - w) * b for a, b in zip(p, self._pooled, strict=True)]
            weights = floor_row(p, alloc.floor)
        sampler = CdfSampler.trusted(weights)
        if key is not None:
            if len(samplers) >= CACHE_SIZE:
                samplers.clear()
            samplers[key] = sampler
        return sampler

    def _moments(self, context: Mapping[str, Any]) -> tuple[list[float], list[float]]:
        """(loc, sd) of each arm's score x'theta_k at the context's design vector x: what
        ``mean @ x`` and ``sqrt(x' cov x)`` give, computed from the context's categorical
        block (its part of both, kept per combination of categorical values) plus its numeric
        values, in plain floats, so a new numeric value costs a few products instead of the
        encoding and the (K, d, d) form. PolicyError (422) on a value of the wrong type."""
        alloc = self.alloc
        assert not isinstance(alloc, SegmentAllocation)
        spec = alloc.spec
        try:
            bkey: Any = tuple([(v.__class__, v) for v in map(context.get, self._cat_names)])
            block = self._blocks.get(bkey)
        except TypeError:
            bkey, block = None, None
        if block is None:
            x0 = spec.encode({**context, **{f.name: f.center for f in spec.numeric}})
            n = len(spec.numeric)
            cx = alloc.cov @ x0  # (K, d)
            block = (list(alloc.mean @ x0), list(np.einsum("kd,d->k", cx, x0)),
                     cx[:, 1:1 + n].tolist(), alloc.mean[:, 1:1 + n].tolist(),
                     alloc.cov[:, 1:1 + n, 1:1 + n].tolist())
            if bkey is not None:
                if len(self._blocks) >= CACHE_SIZE:
                    self._blocks.clear()
                self._blocks[bkey] = block
        base_loc, base_var, cross, slope, quad = block
        v = [numeric_value(f, context.get(f.name)) for f in spec.numeric]
        loc, sd = [], []
        for k in range(len(base_loc)):
            m, var = base_loc[k], base_var[k]
            for a, va in enumerate(v):
                m += slope[k][a] * va
                var += 2.0 * cross[k][a] * va
                qa = quad[k][a]
                for b, vb in enumerate(v):
                    var += qa[b] * va * vb
            loc.append(m)
            sd.append(math.sqrt(var) if var > 0.0 else 0.0)
        return loc, sd


def contextual_serving(exp: ExperimentRecord, snapshot: SnapshotRecord | None
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


__all__ = ["ContextualServing", "contextual_serving", "floor_row"]
