"""The A/A grid of ``armlab simulate interleaving``, reduced: five cells at 150 replications
(seeded, deterministic). Every cell's false-positive rate under continuous monitoring stays
within alpha + 2 Monte Carlo SE; the per-request analysis of users who disagree does not
(why the unit is the user)."""

from __future__ import annotations

import math

import pytest

from armlab.core.interleaving.simulate import CellConfig, quick_grid, run_cell
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
