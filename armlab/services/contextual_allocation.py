"""The allocator's snapshot of a contextual policy (``segment_thompson``, ``linear_thompson``).

For a running experiment whose policy allocates per request context, one pass reads the
*matured* impressions (served at or before the attribution cutoff, as the A/B allocator's
matured sums) with their contexts through the allocator's port
(:meth:`~armlab.services.ports_allocation.AllocationUnit.matured_context_sums`), in groups
per (arm, the values of the declared features), builds the policy's sufficient statistics
(:class:`~armlab.core.policies.contextual.SegmentStats` or
:class:`~armlab.core.policies.linear_thompson.LinearStats`) and allocates. The snapshot stores

* ``weights``: each arm's mean P(arm | context) over the matured contexts (uniform before any
  data), the share of traffic the allocation would give the recent population (what the
  dashboard and the non-contextual readers show);
* ``stats["contextual"]``: :func:`~armlab.core.policies.contextual_snapshot.allocation_to_dict`,
  from which the assigner serves P(arm | context) per request and the analyses rebuild it.

Rolled-back arms are left out of the statistics and of the allocation: ``contextual["arms"]``
lists the arms it serves (in the experiment's arm order), an absent arm has weight 0 in every
context, and the exploration floor applies to the remaining arms only. Impressions whose stored
context contradicts the declared features (a wrong type) are skipped and counted
(``contextual_skipped``).

Scale: one aggregate over the matured impressions per pass (on PostgreSQL the database groups
them by arm and declared feature values, so categorical features come back as at most
arms x segments rows; SQLite streams them; memory grows with the distinct (arm, feature
values) pairs only). Numeric features may have as many distinct values as impressions, and the
linear policy's statistics then cost one d x d outer product per distinct row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np

from armlab.core.policies import make_contextual_policy
from armlab.core.policies.base import FloatArray
from armlab.core.policies.context_features import ContextSpec
from armlab.core.policies.contextual import SegmentStats, SegmentThompson
from armlab.core.policies.contextual_snapshot import ContextualAllocation, allocation_to_dict
from armlab.core.policies.linear_thompson import LinearStats, LinearThompson
from armlab.core.records import ExperimentRecord
from armlab.errors import PolicyError
from armlab.services.ports_allocation import AllocationUnit

#: Distinct contexts the linear policy's mean weights average over at most (a sample).
MEAN_WEIGHT_SAMPLE = 2048

#: (arm index, feature values) -> [impressions, reward sum]
Tallies = dict[tuple[int, tuple[Any, ...]], list[float]]


def tally(rows: Iterable[tuple[str, Mapping[str, Any], float, float]], arms: Sequence[str],
          spec: ContextSpec) -> tuple[Tallies, int]:
    """Impressions and reward sums per (arm, declared feature values) from grouped rows
    (arm, values, impressions, reward sum); rows of other arms are ignored, impressions whose
    feature values cannot be keyed are counted as skipped."""
    index = {a: i for i, a in enumerate(arms)}
    names = [f.name for f in spec.features]
    out: Tallies = {}
    skipped = 0
    for arm, context, n, reward in rows:
        i = index.get(arm)
        if i is None:
            continue
        # the type is part of the key: True, 1 and 1.0 hash alike but are different levels
        key = (i, tuple((type(v).__name__, v) for v in (context.get(n) for n in names)))
        try:
            cell = out.get(key)
        except TypeError:  # a list or an object where a feature value belongs
            skipped += int(n)
            continue
        if cell is None:
            out[key] = [n, reward]
        else:
            cell[0] += n
            cell[1] += reward
    return out, skipped


def _contexts(spec: ContextSpec, tallies: Tallies
              ) -> tuple[list[dict[str, Any]], list[int], FloatArray, FloatArray, int]:
    """The distinct contexts that encode (values as stored), their arms, counts, sums and
    the impressions skipped because their values contradict the features' kinds."""
    names = [f.name for f in spec.features]
    contexts: list[dict[str, Any]] = []
    arms: list[int] = []
    counts: list[float] = []
    sums: list[float] = []
    skipped = 0
    for (arm, values), (n, s) in tallies.items():
        ctx = {k: v for k, (_, v) in zip(names, values, strict=True)}
        try:
            spec.encode(ctx)
        except PolicyError:
            skipped += int(n)
            continue
        contexts.append(ctx)
        arms.append(arm)
        counts.append(n)
        sums.append(s)
    return contexts, arms, np.asarray(counts), np.asarray(sums), skipped


def _segment(policy: SegmentThompson, k: int, contexts: list[dict[str, Any]],
             arms: list[int], counts: FloatArray, sums: FloatArray,
             rng: np.random.Generator) -> tuple[ContextualAllocation, FloatArray]:
    spec = policy.spec
    n = np.zeros((spec.n_segments, k))
    s = np.zeros((spec.n_segments, k))
    if contexts:
        g = spec.segment_indices(contexts)
        np.add.at(n, (g, np.asarray(arms)), counts)
        np.add.at(s, (g, np.asarray(arms)), sums)
    alloc = policy.allocate(SegmentStats(n, s), rng)
    traffic = n.sum(axis=1)
    total = traffic.sum()
    mean = traffic @ alloc.weights / total if total > 0 else np.full(k, 1.0 / k)
    return alloc, np.asarray(mean, dtype=np.float64)


def _linear(policy: LinearThompson, k: int, contexts: list[dict[str, Any]],
            arms: list[int], counts: FloatArray, sums: FloatArray,
            rng: np.random.Generator) -> tuple[ContextualAllocation, FloatArray]:
    spec = policy.spec
    x = spec.encode_many(contexts)  # (M, d)
    onehot = np.eye(k)[np.asarray(arms, dtype=np.int64)] if contexts else np.zeros((0, k))
    stats = LinearStats(
        np.einsum("mk,m,mi,mj->kij", onehot, counts, x, x) if contexts
        else np.zeros((k, spec.dim, spec.dim)),
        np.einsum("mk,m,mi->ki", onehot, sums, x) if contexts else np.zeros((k, spec.dim)),
        onehot.T @ counts if contexts else np.zeros(k),
    )
    alloc = policy.allocate(stats)
    if not contexts:
        return alloc, np.full(k, 1.0 / k)
    rows, inverse = np.unique(x, axis=0, return_inverse=True)
    weight = np.bincount(inverse.reshape(-1), weights=counts, minlength=rows.shape[0])
    if rows.shape[0] > MEAN_WEIGHT_SAMPLE:  # a sample of the contexts, by their traffic
        pick = rng.choice(rows.shape[0], size=MEAN_WEIGHT_SAMPLE, p=weight / weight.sum())
        return alloc, alloc.weights_x(rows[pick])[0].mean(axis=0)
    w = alloc.weights_x(rows)[0]
    return alloc, np.asarray(weight @ w / weight.sum(), dtype=np.float64)


def contextual_allocation(
    uow: AllocationUnit, experiment: ExperimentRecord, active: Sequence[str], cutoff: datetime,
    rng: np.random.Generator,
) -> tuple[dict[str, float], dict[str, Any]]:
    """(weights of the ``active`` arms, the snapshot's detail: ``method``, ``contextual``,
    ``contextual_rows``, ``contextual_skipped``) of a contextual experiment (see the module
    doc)."""
    policy = make_contextual_policy(
        experiment.policy_name, dict(experiment.policy_params or {}),
        reward_kind=experiment.reward_kind, floor=float(experiment.exploration_floor),
        burn_in=int(experiment.burn_in))
    names = [f.name for f in policy.spec.features]
    tallies, skipped = tally(uow.matured_context_sums(experiment.id, cutoff, active, names),
                             active, policy.spec)
    contexts, arms, counts, sums, bad = _contexts(policy.spec, tallies)
    k = len(active)
    if isinstance(policy, SegmentThompson):
        alloc, mean = _segment(policy, k, contexts, arms, counts, sums, rng)
    else:
        alloc, mean = _linear(policy, k, contexts, arms, counts, sums, rng)
    mean = mean / mean.sum()
    detail: dict[str, Any] = {
        "method": policy.name,
        "contextual": allocation_to_dict(alloc, active),
        "contextual_rows": int(counts.sum()),
        "contextual_skipped": int(skipped + bad),
    }
    return {a: float(w) for a, w in zip(active, mean, strict=True)}, detail


__all__ = ["MEAN_WEIGHT_SAMPLE", "contextual_allocation", "tally"]
