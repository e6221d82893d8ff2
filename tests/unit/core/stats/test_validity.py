"""The validity grid, reduced: a few cells at a few hundred replications (seconds). The full
grid is ``armlab simulate validity`` (figures in docs/statistics.md)."""

from __future__ import annotations

import math

import pytest

from armlab.core.stats.validity_grid import CellConfig, grid, run_cell, summarise
from armlab.errors import StatsError

ALPHA = 0.05


def _assert_valid(a: dict[str, float], reps: int) -> None:
    se = math.sqrt(ALPHA * (1 - ALPHA) / reps)  # Monte Carlo SE of a rate at alpha
    assert a["fpr"] <= ALPHA + 2 * se and a["fpr_ok"]
    assert a["coverage"] >= 1 - ALPHA - 2 * se
    assert a["fpr_greater"] <= ALPHA + 2 * se


def test_low_base_rate_with_frequent_looks_stays_within_alpha() -> None:
    """Regression: at p = 1%, floor 5%, a look every 10 impressions, the IPW test's A/A
    false-positive rate was 13-20% (a floored arm with few successes shrank the variance;
    looks were gated on impressions, not events)."""
    reps = 400
    r = run_cell(CellConfig(base_rate=0.01, floor=0.05, look_every=10, max_n=3000,
                            reps=reps, reps_alt=100, seed=3))
    _assert_valid(r["analyses"]["armlab"], reps)
    _assert_valid(r["analyses"]["armlab_horizon"], reps)
    assert r["analyses"]["armlab"]["srm_false_alarm"] <= 0.01
    # the same-run baseline that armlab replaced is invalid here
    assert r["analyses"]["msprt_thompson"]["fpr"] > ALPHA + 2 * r["analyses"][
        "msprt_thompson"]["fpr_se"]


def test_user_unit_with_delay_is_analysed_per_user() -> None:
    """Regression (sticky users): treating each impression as independent gave SRM false
    alarms in a third of A/A runs; armlab analyses one term per user (cluster-robust) and its
    SRM check counts users. Delay: only matured impressions enter, coverage holds."""
    reps = 300
    r = run_cell(CellConfig(base_rate=0.05, floor=0.1, look_every=100, unit="user",
                            delay=True, reps=reps, reps_alt=200, seed=5))
    a = r["analyses"]["armlab"]
    _assert_valid(a, reps)
    _assert_valid(r["analyses"]["armlab_horizon"], reps)
    assert a["srm_false_alarm"] <= 0.01
    per_imp = r["analyses"]["ipw_per_impression"]
    assert per_imp["srm_false_alarm"] > 0.2  # what the per-impression check did
    assert r["analyses"]["msprt_fixed"]["fpr"] > ALPHA  # i.i.d. mSPRT ignores clustering


def test_request_unit_with_delay_keeps_coverage_and_has_power() -> None:
    reps = 300
    r = run_cell(CellConfig(base_rate=0.05, floor=0.2, look_every=100, delay=True, reps=reps,
                            reps_alt=300, seed=11))
    a = r["analyses"]["armlab"]
    _assert_valid(a, reps)
    assert a["power_greater"] > 0.25 and a["power_greater"] >= a["power"]
    assert r["analyses"]["msprt_fixed"]["power"] > a["power"]  # the price of adaptivity
    # boundary: horizon buys power back inside the plan and stays valid
    h = r["analyses"]["armlab_horizon"]
    _assert_valid(h, reps)
    assert h["power_greater"] > a["power_greater"] and h["power"] > a["power"]
    s = summarise([r])
    assert s["armlab"]["cells"] == 1 and s["armlab"]["cells_fpr_within_2se"] == 1
    assert s["armlab_horizon"]["cells_fpr_within_2se"] == 1


def test_grid_cells_and_config_errors() -> None:
    cells = grid((0.01, 0.05), (0.1,), (10, 100), ("request", "user"), (False, True), reps=5)
    assert len(cells) == 16 and len({c.seed for c in cells}) == 16
    again = grid((0.05,), (0.1,), (100,), ("user",), (True,), reps=5)[0]
    assert again in cells  # a subset reproduces the full grid's seeds
    with pytest.raises(StatsError, match="multiple of impressions_per_user"):
        CellConfig(unit="user", look_every=15)
    with pytest.raises(StatsError, match="floor"):
        CellConfig(floor=0.6)


def test_planning_at_the_look_gate_buys_horizon_power_and_stays_valid() -> None:
    """The plan (tau², V_plan) is frozen per replication from its own data, as the platform
    does; frozen at min_samples alone (~5 clicks per arm at p = 0.05) its sigma² is noisy
    and the horizon boundary lost power; at the look gate (30 events per arm) it does not."""
    reps = 1500
    runs = {at: run_cell(CellConfig(base_rate=0.05, floor=0.2, reps=reps, seed=17, plan_at=at))
            for at in ("events", "samples")}
    for r in runs.values():
        _assert_valid(r["analyses"]["armlab"], reps)
        _assert_valid(r["analyses"]["armlab_horizon"], reps)
    gate, early = (runs[at]["analyses"]["armlab_horizon"] for at in ("events", "samples"))
    assert gate["power"] > early["power"] + 0.02
    assert gate["power_greater"] > early["power_greater"]
    with pytest.raises(StatsError, match="plan_at"):
        CellConfig(plan_at="never")  # type: ignore[arg-type]
