"""The per-request API end to end, as the platform will wire it: the dueling bandit picks 2
of 3 rankers (exact pair propensities), team draft merges their lists, clicks are credited,
each compared pair's outcome is weighted by 1/P(pair compared), and the per-unit test finds
the better ranker. Also what gets logged."""

from __future__ import annotations

import json

import numpy as np

from armlab.core.interleaving import credit, team_draft
from armlab.core.policies.dueling import (
    DuelingSettings,
    DuelingStats,
    choose_rankers,
    ranker_distribution,
)
from armlab.core.stats.interleaving import (
    InterleavingConfig,
    PairSums,
    evaluate_preferences,
    ranker_pairs,
    unit_preferences,
)

RANKERS = ("good", "meh", "poor")
NOISE = {"good": 0.05, "meh": 0.3, "poor": 0.6}


def test_dueling_team_draft_credit_ipw_and_the_test() -> None:
    rng = np.random.default_rng(7)
    settings = DuelingSettings(max_per_request=2, floor=0.05, n_draws=500)
    stats = DuelingStats.empty(RANKERS)
    pairs = ranker_pairs(RANKERS)
    diffs, props, comp = [], [], []
    dist = ranker_distribution(stats, settings, rng)
    logged = None
    for t in range(3000):
        if t % 100 == 0:  # the allocator's cadence: a new distribution snapshot
            dist = ranker_distribution(stats, settings, rng)
        choice = choose_rankers(dist, rng)
        rel = rng.random(30)
        lists = {r: [f"i{j}" for j in np.argsort(-(rel + NOISE[r] * rng.standard_normal(30)))
                     [:10]] for r in choice.chosen}
        il = team_draft(lists, 10, rng=rng)
        # cascade clicks on relevance
        clicked = []
        for it in il.items:
            if rng.random() < rel[int(it.item_id[1:])] ** 2:
                clicked.append(it.item_id)
                break
        c = credit(il, clicked)
        stats = stats.record(c.pairs)
        diffs.append([c.pairs.get(p, 0.0) for p in pairs])
        comp.append([p in c.pairs for p in pairs])
        props.append([choice.pair_prob[p] for p in pairs])
        if t == 0:
            logged = {"rankers": il.as_log(), "pair_prob": {"|".join(k): v for k, v in
                                                            choice.pair_prob.items()},
                      "set_prob": choice.set_prob}
    # every request is a unit; IPW per pair
    _, x = unit_preferences(np.asarray(diffs), np.arange(len(diffs)), compared=np.asarray(comp),
                            propensity=np.asarray(props))
    sums = {p: PairSums.from_values(x[:, i]) for i, p in enumerate(pairs)}
    res = evaluate_preferences(RANKERS, sums, config=InterleavingConfig(planned_units=3000,
                                                                         min_units=100))
    assert res.condorcet_winner == "good" and res.stop
    assert res.pair("good", "poor").winner == "good"
    assert all(p.winner in (None, p.a) for p in res.pairs)  # never the worse ranker
    # the bandit compared the winner far more often than the floor
    share = np.asarray(comp).mean(axis=0)
    assert share[pairs.index(("good", "poor"))] > 0.2 and share.min() > 0.02
    # the log is plain JSON
    assert logged is not None
    json.dumps(logged)
    assert len(logged["rankers"]["items"]) == 10 and logged["set_prob"] > 0
