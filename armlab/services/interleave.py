"""Serving an interleaving experiment (``design: interleaving``): which rankers merge into a
request's list, with what probability, and the merged list with its log.

* :class:`RankerSets`: the choice distribution the assigner serves from, built once per
  allocation snapshot by :func:`ranker_sets` from the snapshot's ``stats.sets`` (each set of
  rankers, in arm order, with its exact probability) and ``stats.pairs`` (P(pair compared)).
  Before the first interleaving snapshot (or with a snapshot that has no usable sets): every
  arm enters when ``rankers_per_request`` is all of them, else a uniform m-subset per request
  (P(set) = 1 / C(K, m), P(pair) = m(m-1) / (K(K-1))).
* :class:`InterleavedAssignment`: one request's draw (the set, its probability, the compared
  pairs' probabilities, the impression id and a per-request random generator for the draft).
* :func:`rank_interleaved`: ranks with every chosen ranker's variant at once (one scoring
  submit per ranker, so the batching scorer groups them with other requests), merges the
  lists by team draft (:func:`armlab.core.interleaving.team_draft.team_draft`, the draft order
  drawn per request) and returns the items and the impression's ``interleaving`` log
  (:class:`armlab.core.events.InterleavingLog`).

Every ranker returns its top k: at each pick fewer than k items are shown, so a ranker's top k
always holds an item not shown yet, and the merge is the same as over the full lists.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from itertools import combinations
from typing import Any

import numpy as np

from armlab.adapters.scoring.batching import ScoringService
from armlab.adapters.scoring.scorers import UserContext
from armlab.core.catalog import CatalogView
from armlab.core.event_values import MIN_PROPENSITY
from armlab.core.interleaving.team_draft import team_draft
from armlab.core.policies.base import CdfSampler
from armlab.errors import ArmlabError, ServiceUnavailable

log = logging.getLogger("armlab.interleave")

Pair = tuple[str, str]


@dataclass(frozen=True)
class RankerSets:
    """The distribution of a request's rankers. ``sets`` empty: a uniform m-subset of
    ``rankers``; otherwise ``sets[i]`` (arm order) with ``probabilities[i]``."""

    rankers: tuple[str, ...]
    m: int
    sets: tuple[tuple[str, ...], ...]
    probabilities: tuple[float, ...]
    sampler: CdfSampler | None
    pair_prob: dict[Pair, float]

    def draw(self, rng: np.random.Generator) -> tuple[tuple[str, ...], float]:
        """One request's rankers (arm order) and P(this set)."""
        if self.sampler is not None:
            i, p = self.sampler.pick(float(rng.random()))
            return self.sets[i], p
        k = len(self.rankers)
        idx = sorted(int(x) for x in rng.choice(k, size=self.m, replace=False))
        return tuple(self.rankers[i] for i in idx), 1.0 / math.comb(k, self.m)

    def compared(self, chosen: Sequence[str]) -> list[tuple[str, str, float]]:
        """(a, b, P(a and b compared)) of every pair of ``chosen``, in arm order."""
        inside = set(chosen)
        return [(a, b, self.pair_prob.get((a, b), 0.0)) for a, b in combinations(self.rankers, 2)
                if a in inside and b in inside]


def uniform_sets(rankers: Sequence[str], m: int) -> RankerSets:
    """Every arm when m >= K; else a uniform m-subset per request."""
    keys = tuple(rankers)
    k = len(keys)
    pairs = list(combinations(keys, 2))
    if m >= k:
        return RankerSets(keys, k, (keys,), (1.0,), CdfSampler([1.0]), dict.fromkeys(pairs, 1.0))
    p = m * (m - 1) / (k * (k - 1))
    return RankerSets(keys, m, (), (), None, dict.fromkeys(pairs, p))


def ranker_sets(rankers: Sequence[str], spec: Mapping[str, Any] | None,
                stats: Mapping[str, Any] | None) -> RankerSets:
    """The distribution to serve: the snapshot's ``stats.sets`` / ``stats.pairs`` when they
    are usable, else :func:`uniform_sets` with the spec's ``rankers_per_request``."""
    keys = tuple(rankers)
    m_spec = (spec or {}).get("rankers_per_request")
    m = len(keys) if m_spec is None else min(int(m_spec), len(keys))
    if not stats or stats.get("design") != "interleaving" or not stats.get("sets"):
        return uniform_sets(keys, m)
    try:
        return _from_stats(keys, stats)
    except (KeyError, TypeError, ValueError, ArmlabError) as exc:
        log.warning("unusable interleaving snapshot (%s): serving uniform ranker sets", exc)
        return uniform_sets(keys, m)


def _from_stats(keys: tuple[str, ...], stats: Mapping[str, Any]) -> RankerSets:
    order = {k: i for i, k in enumerate(keys)}
    sets: list[tuple[str, ...]] = []
    probs: list[float] = []
    for entry in stats["sets"]:
        chosen = tuple(sorted({str(r) for r in entry["rankers"]}, key=lambda r: order[r]))
        p = float(entry["probability"])
        if len(chosen) < 2 or not math.isfinite(p) or p < 0:
            raise ValueError(f"bad set {entry!r}")
        sets.append(chosen)
        probs.append(p)
    sampler = CdfSampler(probs)
    total = sampler.total
    probs = [p / total for p in probs]
    pair_prob: dict[Pair, float] = dict.fromkeys(combinations(keys, 2), 0.0)
    for chosen, p in zip(sets, probs, strict=True):
        for pair in combinations(chosen, 2):
            pair_prob[pair] += p
    for entry in stats.get("pairs") or ():  # the allocator's exact values win
        a, b = str(entry["a"]), str(entry["b"])
        pair = (a, b) if order[a] < order[b] else (b, a)
        pair_prob[pair] = float(entry["propensity"])
    m = int(stats.get("m") or max(len(s) for s in sets))
    return RankerSets(keys, m, tuple(sets), tuple(probs), sampler, pair_prob)


@dataclass(frozen=True)
class InterleavedAssignment:
    """One interleaved request: the rankers to merge (arm order) with their variants, P(set)
    (logged as the impression's propensity), the compared pairs' probabilities and the
    generator that draws this request's draft order."""

    impression_id: str
    experiment_key: str
    rankers: tuple[str, ...]
    variants: dict[str, dict[str, Any]]
    propensity: float
    pairs: tuple[tuple[str, str, float], ...]
    served_at: datetime
    snapshot_id: int | None
    rng: np.random.Generator


def draw_interleaved(sets: RankerSets, variants: Mapping[str, dict[str, Any]], *,
                     experiment_key: str, impression_id: str, served_at: datetime,
                     snapshot_id: int | None, rng: np.random.Generator
                     ) -> InterleavedAssignment:
    """Draw one request's rankers from ``sets``; ``rng`` also draws its draft later."""
    chosen, p = sets.draw(rng)
    return InterleavedAssignment(
        impression_id=impression_id, experiment_key=experiment_key, rankers=chosen,
        variants={r: dict(variants.get(r, {})) for r in chosen},
        propensity=max(p, MIN_PROPENSITY), pairs=tuple(sets.compared(chosen)),
        served_at=served_at, snapshot_id=snapshot_id, rng=rng)


def rank_interleaved(
    served: InterleavedAssignment, scoring: ScoringService, user: UserContext, *, k: int,
    items: Sequence[dict[str, Any]] | None, catalog: CatalogView | None, exclude: set[str],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(merged items with their source ranker's score, the impression's interleaving log)."""
    futures: dict[str, Future[list[dict[str, Any]]]] = {}
    for ranker in served.rankers:  # all submitted before any is awaited: they batch
        futures[ranker] = scoring.submit(served.variants[ranker], user, k=k, items=items,
                                         catalog=catalog, exclude=exclude)
    lists: dict[str, list[dict[str, Any]]] = {}
    for ranker, fut in futures.items():
        try:
            lists[ranker] = fut.result(timeout=scoring.timeout_s)
        except TimeoutError:
            raise ServiceUnavailable(f"scoring took longer than {scoring.timeout_s}s") from None
    merged = team_draft({r: [it["item_id"] for it in lists[r]] for r in served.rankers}, k,
                        rng=served.rng)
    scores = {r: {str(it["item_id"]): float(it["score"]) for it in lists[r]} for r in lists}
    out = [{"item_id": it.item_id, "score": scores[it.team][it.item_id]} for it in merged.items]
    log_ = {
        "rankers": list(merged.rankers),
        "teams": merged.teams,
        "draft": merged.as_log()["draft"],
        "pairs": [{"a": a, "b": b, "propensity": p} for a, b, p in served.pairs],
    }
    return out, log_
