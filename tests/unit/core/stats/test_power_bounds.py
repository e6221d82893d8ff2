"""The power arithmetic of :mod:`armlab.core.stats.power_bounds`: its closed forms against a
random walk, its ceiling against the validity grid's own power figures (seconds)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from armlab.core.stats.power_bounds import (
    boundary_power,
    fixed_sample_power,
    flat_boundary_power,
    flat_critical,
    inverse_sum_for_z,
    ipw_z,
    mixture_floor_se,
    z_needed,
)
from armlab.core.stats.validity_grid import CellConfig, run_cell
from armlab.errors import StatsError

ALPHA = 0.05


def test_fixed_sample_power_is_alpha_at_zero_drift_and_grows() -> None:
    assert fixed_sample_power(0.0, ALPHA) == pytest.approx(ALPHA)
    assert fixed_sample_power(0.0, ALPHA, "greater") == pytest.approx(ALPHA)
    # z = 1.96 + 0.84: the textbook 80% power of a two-sided 5% test
    assert fixed_sample_power(1.959964 + 0.841621, ALPHA) == pytest.approx(0.8, abs=1e-3)
    assert fixed_sample_power(2.0) < fixed_sample_power(2.0, alternative="greater")


def test_flat_boundary_power_matches_a_random_walk() -> None:
    """Siegmund's crossing probability of a drifted Brownian motion, against a random walk with
    2,000 looks (discrete looks cross less: his correction shifts c by 0.583 sqrt(step))."""
    rng = np.random.default_rng(7)
    looks, reps, z, c = 2000, 4000, 2.0, flat_critical(ALPHA, 0.8, "greater")
    s = np.cumsum(rng.standard_normal((reps, looks)) / math.sqrt(looks) + z / looks, axis=1)
    mc = float(np.mean(s.max(axis=1) >= c))
    expected = flat_boundary_power(z, c + 0.583 / math.sqrt(looks))
    assert abs(mc - expected) <= 3 * math.sqrt(expected * (1 - expected) / reps)
    assert flat_boundary_power(0.0, c) == pytest.approx(2 * (1 - 0.5 * (1 + math.erf(
        c / math.sqrt(2)))))  # the reflection principle at zero drift


def test_boundaries_stay_below_the_fixed_sample_ceiling_and_within_alpha() -> None:
    zs = np.array([0.0, 1.5, 2.0, 2.5, 3.0])
    reps = 6000
    se = math.sqrt(0.25 / reps)
    for boundary in ("mixture", "horizon"):
        for alt in ("two-sided", "greater"):
            pw = boundary_power(zs, boundary=boundary, alternative=alt, reps=reps, seed=1)  # type: ignore[arg-type]
            ceiling = np.array([fixed_sample_power(z, ALPHA, alt) for z in zs])  # type: ignore[arg-type]
            assert np.all(pw <= ceiling + 2 * se), (boundary, alt, pw, ceiling)
            assert pw[0] <= ALPHA + 2 * math.sqrt(ALPHA * (1 - ALPHA) / reps)
            assert np.all(np.diff(pw) >= 0)  # shared walks: monotone in the drift
    # the mixture never dips below ~3 standard errors: it needs a larger drift than the flat one
    assert 2.9 < mixture_floor_se(ALPHA) < 3.1
    assert z_needed(0.4, reps=4000) > z_needed(0.4, boundary="horizon", reps=4000)


def test_grid_power_is_capped_by_the_information_the_bandit_leaves() -> None:
    """The cell's own realised mean 1/p(a) + 1/p(b) fixes z at the horizon; no analysis of the
    IPW test beats the fixed-sample test at that z, and the fixed split (sum 4) has more."""
    reps = 300
    cfg = CellConfig(base_rate=0.05, floor=0.1, reps=reps, reps_alt=300, seed=21)
    r = run_cell(cfg)
    a = r["analyses"]["armlab"]
    inv = a["inverse_sum"]
    assert 4.0 < inv <= 1 / cfg.floor + 1 / (1 - cfg.floor)
    p_a, p_b = cfg.base_rate, r["p_treatment"]
    sigma2 = 0.5 * (p_a * (1 - p_a) + p_b * (1 - p_b))
    z = ipw_z(p_b - p_a, sigma2, cfg.horizon, inv)
    assert z < ipw_z(p_b - p_a, sigma2, cfg.horizon, 4.0)
    se = math.sqrt(0.25 / reps)
    for name in ("armlab", "armlab_horizon"):
        row = r["analyses"][name]
        assert row["power"] <= fixed_sample_power(z, ALPHA) + 2 * se
        assert row["power_greater"] <= fixed_sample_power(z, ALPHA, "greater") + 2 * se
        assert row["power_fixed"] == r["analyses"]["msprt_fixed"]["power"]
        assert row["fpr_fixed"] == r["analyses"]["msprt_fixed"]["fpr"]
        assert row["alpha_unspent"] == pytest.approx(ALPHA - row["fpr"])
    # the round trip of the arithmetic
    assert inverse_sum_for_z(z, p_b - p_a, sigma2, cfg.horizon) == pytest.approx(inv)


def test_horizon_share_is_a_cell_setting() -> None:
    with pytest.raises(StatsError, match="horizon_share"):
        CellConfig(horizon_share=1.0)
    with pytest.raises(StatsError):
        ipw_z(0.01, 0.0, 100, 4.0)
    with pytest.raises(StatsError):
        z_needed(1.5)
