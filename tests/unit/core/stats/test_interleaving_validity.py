"""The A/A grid of ``armlab simulate interleaving``, reduced: five cells at 150 replications
(seeded, deterministic). Every cell's false-positive rate under continuous monitoring stays
within alpha + 2 Monte Carlo SE; the per-request analysis of users who disagree does not
(why the unit is the user)."""

from __future__ import annotations

import math

import pytest

from armlab.core.interleaving.grid import quick_grid
from armlab.core.interleaving.simulate import CellConfig, run_cell
from armlab.errors import StatsError

ALPHA = 0.05
REPS = 150


@pytest.mark.parametrize("cell", quick_grid(REPS, seed=1), ids=lambda c: c.label)
def test_reduced_aa_grid_within_alpha(cell: CellConfig) -> None:
    out = run_cell(cell)
    a = out["analysis"]
    limit = ALPHA + 2 * math.sqrt(ALPHA * (1 - ALPHA) / REPS)
    assert a["limit"] == pytest.approx(limit, abs=1e-4)
    assert a["fpr"] <= limit and a["pass"], out
    if cell.scenario == "split":
        # the same data analysed per request: users' opposite preferences look like evidence
        assert out["per_request_baseline"]["fpr"] > 0.3


def test_power_cell_finds_the_better_ranker() -> None:
    out = run_cell(CellConfig(scenario="better", rankers=3, clicks="cascade", reps=60,
                              units=1500, look_every=100, min_units=100, sigma_good=0.1,
                              seed=2))
    a = out["analysis"]
    assert a["power"] >= 0.8 and a["wrong_winner"] == 0.0
    assert a["median_units_to_decision"] <= 1000
    assert a["pass"]  # the two equivalent rankers are not told apart


def test_bad_cells() -> None:
    with pytest.raises(StatsError, match="select"):
        CellConfig(rankers=3, select=3)
    with pytest.raises(StatsError, match="multiple"):
        CellConfig(units=150, look_every=100)


def test_vectorised_analysis_is_the_scalar_evaluation() -> None:
    """The simulator's per-replication analysis makes the same decisions with the same
    running p-values as :func:`evaluate_preferences`, look by look."""
    import numpy as np

    from armlab.core.interleaving.simulate import _Analysis
    from armlab.core.stats.interleaving import (
        InterleavingConfig,
        PairSums,
        evaluate_preferences,
        ranker_pairs,
    )

    cfg = CellConfig(rankers=3, reps=6, units=400, look_every=20, min_units=40)
    rng = np.random.default_rng(9)
    mu = np.array([0.25, 0.25, 0.0])  # pairs (0,1), (0,2), (1,2)
    sim = _Analysis(cfg, planned_units=400, min_units=40, null_pairs=np.array([0, 0, 1], bool))
    keys = ["r0", "r1", "r2"]
    pairs = ranker_pairs(keys)
    conf = InterleavingConfig(planned_units=400, min_units=40, stop_on="never")
    states = [None] * cfg.reps
    data = np.zeros((cfg.reps, 0, 3))
    for look in range(20):
        x = rng.normal(mu, 1.0, size=(cfg.reps, 20, 3))
        data = np.concatenate([data, x], axis=1)
        sim.add(x)
        sim.look((look + 1) * 20)
        for rep in range(cfg.reps):
            sums = {p: PairSums.from_values(data[rep, :, i]) for i, p in enumerate(pairs)}
            res = evaluate_preferences(keys, sums, config=conf, state=states[rep])
            states[rep] = res.state
            assert [p.p_value for p in res.pairs] == pytest.approx(sim.p[rep].tolist(),
                                                                   rel=1e-9, abs=1e-300)
            decided = [{"a_better": 1, "b_better": -1, "undecided": 0}[p.decision]
                       for p in res.pairs]
            assert decided == sim.decided[rep].tolist()
            w = res.condorcet_winner
            assert (keys.index(w) if w else -1) == sim.winner[rep]
