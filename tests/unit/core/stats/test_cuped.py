"""CUPED under a bandit (:mod:`armlab.core.stats.cuped`): the adjusted sums against sums of Y'
computed directly, and the validity grid's sticky-user cell with a pre-period covariate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from armlab.core.evidence import ArmSums
from armlab.core.stats.cuped import (
    CovariateSums,
    adjust_arms,
    adjusted_sums,
    pooled_slope,
    variance_reduction,
)
from armlab.core.stats.validity_grid import CellConfig, grid, run_cell
from armlab.errors import StatsError

ALPHA = 0.05


def test_adjusted_sums_are_the_sums_of_the_adjusted_outcome() -> None:
    rng = np.random.default_rng(3)
    x = [rng.poisson(2.0, 50).astype(float), rng.poisson(2.0, 70).astype(float)]
    y = [xi * 0.7 + rng.normal(0, 1, xi.size) for xi in x]
    p = [rng.uniform(0.1, 0.9, xi.size) for xi in x]
    # the within-arm least-squares slope, pooled: numpy's regression on arm-centred data
    xc = np.concatenate([xi - xi.mean() for xi in x])
    yc = np.concatenate([yi - yi.mean() for yi in y])
    want = float(np.dot(xc, yc) / np.dot(xc, xc))
    theta = pooled_slope(*(tuple(np.float64(f(k)) for k in (0, 1)) for f in (
        lambda k: x[k].size, lambda k: y[k].sum(), lambda k: x[k].sum(),
        lambda k: (x[k] ** 2).sum(), lambda k: (x[k] * y[k]).sum())))
    assert float(theta) == pytest.approx(want)
    for k in (0, 1):
        xk, yk, pk = x[k], y[k], p[k]
        got = adjusted_sums(theta, np.float64(xk.size), yk.sum(), (yk**2).sum(),
                            (1 / pk).sum(), (yk / pk).sum(), (yk**2 / pk**2).sum(),
                            (1 / pk**2).sum(), xk.sum(), (xk**2).sum(), (xk * yk).sum(),
                            (xk / pk).sum(), (xk**2 / pk**2).sum(), (xk * yk / pk**2).sum())
        yp = yk - theta * xk
        direct = (xk.size, yp.sum(), (yp**2).sum(), (1 / pk).sum(), (yp / pk).sum(),
                  (yp**2 / pk**2).sum(), (1 / pk**2).sum())
        assert np.allclose(np.array(got, dtype=float), np.array(direct, dtype=float))
    assert float(pooled_slope((np.float64(3),) * 2, (np.float64(1),) * 2, (np.float64(3),) * 2,
                              (np.float64(3),) * 2, (np.float64(1),) * 2)) == 0.0  # X constant
    assert variance_reduction(0.6) == pytest.approx(0.64)


def test_cuped_keeps_alpha_and_adds_power_on_sticky_users() -> None:
    """Sticky users (10 impressions each, ICC 0.15) with 10 pre-period impressions: the
    covariate is correlated with the outcome (rho = m icc / (1 + (m - 1) icc) ~ 0.64 between
    two 10-impression windows), so the IPW variance shrinks by ~1 - rho² and the power grows,
    while A/A and coverage stay within alpha under the bandit."""
    reps = 600
    r = run_cell(CellConfig(base_rate=0.05, floor=0.2, unit="user", pre_impressions=10,
                            reps=reps, reps_alt=reps, seed=8))
    se = math.sqrt(ALPHA * (1 - ALPHA) / reps)
    for name in ("armlab_cuped", "armlab_cuped_horizon"):
        a = r["analyses"][name]
        assert a["fpr"] <= ALPHA + 2 * se and a["fpr_greater"] <= ALPHA + 2 * se
        assert a["coverage"] >= 1 - ALPHA - 2 * se
    for plain, cuped in (("armlab", "armlab_cuped"), ("armlab_horizon", "armlab_cuped_horizon")):
        assert r["analyses"][cuped]["power"] > r["analyses"][plain]["power"] + 0.05
    assert "armlab_cuped" not in run_cell(CellConfig(unit="user", reps=20, seed=1))["analyses"]


def test_pre_period_is_a_user_setting() -> None:
    with pytest.raises(StatsError, match="pre_impressions"):
        CellConfig(pre_impressions=10)  # unit request
    cells = grid((0.05,), (0.1,), (100,), ("request", "user"), (False,), pre_impressions=10)
    assert [c.pre_impressions for c in cells] == [0, 10]


def test_adjust_arms_gives_the_arm_sums_of_the_adjusted_outcome_and_the_fit() -> None:
    """The platform's entry (:func:`adjust_arms`, three arms): each arm's ``ArmSums`` of Y'
    with theta the slope pooled over all arms, the counts untouched, and the fit's variance
    ratio = 1 - rho² of the pooled within-arm correlation."""
    rng = np.random.default_rng(5)
    arms = {}
    for k, m in (("control", 60), ("t1", 40), ("t2", 30)):
        x = rng.poisson(3.0, m).astype(float)
        arms[k] = (x, 0.5 * x + rng.normal(0, 1, m), rng.uniform(0.2, 0.8, m))
    sums = {k: ArmSums(n=x.size, reward_sum=y.sum(), reward_sumsq=(y**2).sum(),
                       ipw_n=(1 / p).sum(), ipw_sum=(y / p).sum(),
                       ipw_sumsq=(y**2 / p**2).sum(), ipw_n_sq=(1 / p**2).sum(),
                       feedback_n=7.0)
            for k, (x, y, p) in arms.items()}
    cov = {k: CovariateSums(pre_units=float((x > 0).sum()), x=x.sum(), xx=(x**2).sum(),
                            xy=(x * y).sum(), ipw_x=(x / p).sum(), ipw_xx=(x**2 / p**2).sum(),
                            ipw_xy=(x * y / p**2).sum())
           for k, (x, y, p) in arms.items()}
    out, fit = adjust_arms(sums, cov)
    xc = np.concatenate([x - x.mean() for x, _, _ in arms.values()])
    yc = np.concatenate([y - y.mean() for _, y, _ in arms.values()])
    theta = float(np.dot(xc, yc) / np.dot(xc, xc))
    rho = float(np.dot(xc, yc) / math.sqrt(np.dot(xc, xc) * np.dot(yc, yc)))
    assert fit.theta == pytest.approx(theta) and fit.rho == pytest.approx(rho)
    assert fit.variance_ratio == pytest.approx(1 - rho**2) and fit.variance_ratio < 0.7
    assert fit.units == 130 and fit.pre_units == sum(c.pre_units for c in cov.values())
    for k, (x, y, p) in arms.items():
        yp = y - theta * x
        want = ArmSums(n=x.size, reward_sum=yp.sum(), reward_sumsq=(yp**2).sum(),
                       ipw_n=(1 / p).sum(), ipw_sum=(yp / p).sum(),
                       ipw_sumsq=(yp**2 / p**2).sum(), ipw_n_sq=(1 / p**2).sum(), feedback_n=7)
        assert out[k].as_dict() == pytest.approx(want.as_dict())
    # no covariate (nobody seen before): the sums unchanged, nothing explained
    same, none = adjust_arms(sums, {})
    assert same == sums and none.theta == 0.0 and none.variance_ratio == 1.0
