"""The allocator's pass over a running interleaving experiment (``design: interleaving``).

Snapshot (:func:`interleaving_snapshot`): which rankers enter each request. With m =
``interleaving.rankers_per_request`` (default: every arm) equal to the number of rankers K,
every request merges all of them: one set with probability 1, every pair compared with
propensity 1 (policy ``interleaving``). With m < K the multi-dueling Thompson bandit
(:func:`armlab.core.policies.dueling.ranker_distribution`) on the pairs' win tallies gives the
distribution (policy ``dueling``): every m-subset with its exact probability,
(1 - epsilon) (share of the Thompson draws) + epsilon / C(K, m), and every pair's exact
probability of being compared, which the serving path logs with each impression and the test
weights by. ``weights`` = P(ranker enters) / m (they sum to 1).

Look (:func:`run_interleaving_look`): :func:`armlab.services.interleaving_evaluation.
evaluate_interleaving` with the recorded state, recorded, and with ``sequential.auto_stop`` a
look that stops (``interleaving.stop_on``) stops the experiment with the evaluation as the
certificate in the audit row's evidence; the allocator then writes the terminal snapshot in
the same transaction.
"""

from __future__ import annotations

import math
from datetime import datetime
from itertools import combinations
from typing import Any

import numpy as np

from armlab.core.policies import POLICY_VERSION
from armlab.core.policies.dueling import DuelingSettings, DuelingStats, ranker_distribution
from armlab.core.records import ExperimentRecord, NewSnapshot
from armlab.core.status import ExperimentStatus
from armlab.errors import PolicyError
from armlab.services import registry
from armlab.services.interleaving_evaluation import (
    evaluate_interleaving,
    interleaving_spec,
    record_interleaving,
)
from armlab.services.ports import Evidence, UnitOfWorkPort

#: The most m-subsets a snapshot lists (every subset has positive probability when m < K).
MAX_SETS = 20_000


def _wins(evidence: Evidence, experiment: ExperimentRecord, keys: list[str]
          ) -> tuple[np.ndarray, dict[str, list[int]]]:
    idx = {k: i for i, k in enumerate(keys)}
    wins = np.zeros((len(keys), len(keys)))
    out: dict[str, list[int]] = {f"{a}|{b}": [0, 0] for a, b in combinations(keys, 2)}
    for (a, b), t in evidence.interleaving_tallies(experiment.id).items():
        if a in idx and b in idx:
            wins[idx[a], idx[b]] += t[1]
            wins[idx[b], idx[a]] += t[2]
            out[f"{a}|{b}"] = [int(t[1]), int(t[2])]
    return wins, out


def ranker_sets(evidence: Evidence, experiment: ExperimentRecord, seed: int
                ) -> tuple[int, list[dict[str, Any]], dict[tuple[str, str], float], float,
                           dict[str, list[int]]]:
    """(m, sets with probabilities, pair propensities, epsilon, win tallies)."""
    keys = [a.key for a in experiment.arms]
    k = len(keys)
    spec = interleaving_spec(experiment)
    m = min(spec.rankers_per_request or k, k)
    wins, tallies = _wins(evidence, experiment, keys)
    if m >= k:
        return k, [{"rankers": keys, "probability": 1.0}], dict.fromkeys(
            combinations(keys, 2), 1.0), 0.0, tallies
    if math.comb(k, m) > MAX_SETS:
        raise PolicyError(f"{math.comb(k, m)} sets of {m} of {k} rankers: more than a "
                          f"snapshot lists ({MAX_SETS})")
    dist = ranker_distribution(DuelingStats(tuple(keys), wins),
                               DuelingSettings(max_per_request=m, floor=spec.pair_floor),
                               np.random.default_rng(seed))
    rows, counts = np.unique(dist.sets, axis=0, return_counts=True)
    share = {tuple(int(i) for i in r): int(c) for r, c in zip(rows, counts, strict=True)}
    n_draws, uniform = float(len(dist.sets)), dist.epsilon / math.comb(k, m)
    sets = []
    for combo in combinations(range(k), m):
        p = (1.0 - dist.epsilon) * share.get(combo, 0) / n_draws + uniform
        if p > 0.0:
            sets.append({"rankers": [keys[i] for i in combo], "probability": p})
    return m, sets, dict(dist.pair_prob), dist.epsilon, tallies


def interleaving_snapshot(evidence: Evidence, experiment: ExperimentRecord, *, now: datetime,
                          seed: int) -> NewSnapshot:
    """The running snapshot of an interleaving experiment (module doc)."""
    keys = [a.key for a in experiment.arms]
    m, sets, pairs, eps, tallies = ranker_sets(evidence, experiment, seed)
    enter = dict.fromkeys(keys, 0.0)
    for s in sets:
        for r in s["rankers"]:
            enter[r] += s["probability"]
    return NewSnapshot(
        experiment_id=experiment.id, created_at=now,
        policy_name="interleaving" if m >= len(keys) else "dueling",
        policy_version=f"{POLICY_VERSION}",
        weights={k: enter[k] / m for k in keys},
        stats={"status": ExperimentStatus.RUNNING.value, "design": "interleaving", "m": m,
               "sets": sets,
               "pairs": [{"a": a, "b": b, "propensity": p} for (a, b), p in pairs.items()],
               "epsilon": eps, "seed": seed, "wins": tallies},
    )


def run_interleaving_look(uow: UnitOfWorkPort, experiment: ExperimentRecord, *, now: datetime,
                          actor: str = "allocator") -> dict[str, Any]:
    """One recorded look; with ``sequential.auto_stop`` a stopping look stops the experiment
    (the evaluation is the certificate in the audit row). Returns the evaluation with
    ``stored`` and ``stopped``. Does not commit."""
    ev = evaluate_interleaving(uow.evidence, experiment, now=now)
    stored = record_interleaving(uow.evidence, experiment, ev, now=now)
    uow.flush()
    stopped = False
    if ((experiment.sequential or {}).get("auto_stop") and ev["stop"]
            and experiment.status == ExperimentStatus.RUNNING):
        registry.stop_experiment(uow, key=experiment.key, actor=actor,
                                 reason=f"interleaving test decided: {ev['stop_reason']}",
                                 evidence={"interleaving": ev})
        stopped = True
    return {**ev, "stored": stored, "stopped": stopped}
