"""Adaptive-valid IPW test, SRM check and reduced simulations that can still fail."""

from __future__ import annotations

import math

import numpy as np
import pytest

from armlab.core.evidence import ArmSums
from armlab.core.stats.adaptive import (
    KERNEL_FIELDS,
    ipw_kernel,
    ipw_moments,
    ipw_msprt,
    srm_check,
)
from armlab.core.stats.msprt import log_lambda, msprt_two_sample, tau2_for_horizon
from armlab.core.stats.sequential_simulation import (
    SequentialSimConfig,
    fixed_horizon_n,
    simulate_sequential,
)
from armlab.errors import StatsError


def sums_from_impressions(arm: np.ndarray, r: np.ndarray, p: np.ndarray, k: int) -> ArmSums:
    m = arm == k
    return ArmSums(float(m.sum()), float(r[m].sum()), float((r[m] ** 2).sum()),
                   float((1 / p[m]).sum()), float((r[m] / p[m]).sum()),
                   float((r[m] ** 2 / p[m] ** 2).sum()), float((1 / p[m] ** 2).sum()))


def test_ipw_moments_equal_the_per_impression_computation() -> None:
    rng = np.random.default_rng(1)
    t = 5000
    w_b = np.clip(np.linspace(0.5, 0.9, t) + rng.normal(0, 0.02, t), 0.1, 0.9)
    arm = np.where(rng.random(t) < w_b, 1, 0)  # 0 = control, 1 = treatment, 2 = never here
    p = np.where(arm == 1, w_b, 1 - w_b)
    r = rng.normal(3.5, 1.0, t)  # continuous rewards (ratings-like)
    a, b = sums_from_impressions(arm, r, p, 0), sums_from_impressions(arm, r, p, 1)
    m = ipw_moments(t, a, b)
    c = r.mean()  # pooled plain mean of the two arms
    z = np.where(arm == 1, (r - c) / p, -(r - c) / p)
    assert np.isclose(m.centre, c) and np.isclose(m.estimate, z.mean())
    # model variance: sum_k m2_k * sum 1/p² over arm k
    # (never below the pooled second moment of both arms: the robust floor)
    m2 = {k: max(((r[arm == k] - c) ** 2).mean(), ((r - c) ** 2).mean()) for k in (0, 1)}
    model = (m2[0] * (1 / p[arm == 0] ** 2).sum() + m2[1] * (1 / p[arm == 1] ** 2).sum()) / t
    assert np.isclose(m.sigma2, (model - z.mean() ** 2) * t / (t - 1))
    # Z-contributions of impressions of a third arm are zero: adding them changes only T.
    m3 = ipw_moments(t + 1000, a, b)
    assert np.isclose(m3.estimate * (t + 1000), m.estimate * t)


def test_binary_variance_is_at_least_the_realised_one() -> None:
    rng = np.random.default_rng(2)
    t = 4000
    p = np.full(t, 0.5)
    arm = (rng.random(t) < 0.5).astype(int)
    r = (rng.random(t) < 0.05).astype(float)
    a, b = sums_from_impressions(arm, r, p, 0), sums_from_impressions(arm, r, p, 1)
    c = r.mean()
    z = np.where(arm == 1, (r - c) / p, -(r - c) / p)
    realised = (z**2).mean() - z.mean() ** 2
    assert ipw_moments(t, a, b, binary=True).sigma2 >= realised * t / (t - 1) - 1e-12


def test_arm_sums_without_propensities_are_rejected() -> None:
    with pytest.raises(StatsError, match="propensities were not logged"):
        ipw_msprt(200, ArmSums(100, 5, 5, 0, 0, 0, 0), ArmSums(100, 5, 5, 200, 10, 20, 400),
                  tau2=1e-4)
    with pytest.raises(StatsError, match="must be a finite"):
        ArmSums(100, float("nan"), 5, 200, 10, 20, 400)


def test_srm_detects_wrong_logged_propensities_and_accepts_right_ones() -> None:
    rng = np.random.default_rng(3)
    t = 20_000
    w_b = np.linspace(0.5, 0.9, t)  # time-varying weights, truly used
    arm = (rng.random(t) < w_b).astype(int)
    r = np.zeros(t)
    good = srm_check(*_srm_args(arm, np.where(arm == 1, w_b, 1 - w_b), r))
    assert good.checked and not good.mismatch and abs(good.ratio["b"] - 1) < 0.05
    # A chi-square against the final weights would cry wolf here; the IPW check does not.
    # Logged propensities that differ from the served ones (e.g. a stale snapshot) are caught.
    stale = np.where(arm == 1, 0.5, 0.5)
    bad = srm_check(*_srm_args(arm, stale, r))
    assert bad.mismatch and bad.p_value < 1e-3


def _srm_args(arm: np.ndarray, p: np.ndarray, r: np.ndarray) -> tuple[dict, dict, dict]:
    a, b = sums_from_impressions(arm, r, p, 0), sums_from_impressions(arm, r, p, 1)
    return ({"a": a.n, "b": b.n}, {"a": a.ipw_n, "b": b.ipw_n}, {"a": a.ipw_n_sq, "b": b.ipw_n_sq})


def test_non_stationary_rewards_break_plain_means_but_not_ipw() -> None:
    """Both arms identical at every moment, base rate rising 2% -> 10% while traffic moves to b.

    The plain difference of means credits b with the later, higher base rate (Simpson's
    paradox) and the mSPRT on it rejects almost always; the IPW contributions have conditional
    mean 0 at every t, so the adaptive-valid test stays at or below alpha. Replacing IPW by
    plain means in armlab's test makes this test fail.
    """
    rng = np.random.default_rng(4)
    reps, t = 200, 20_000
    rate = np.linspace(0.02, 0.10, t)
    w_b = np.linspace(0.5, 0.9, t)
    tau2 = tau2_for_horizon(2 * 0.06 * 0.94 / (t / 2))
    plain_rej = ipw_rej = 0
    for _ in range(reps):
        arm = (rng.random(t) < w_b).astype(int)
        r = (rng.random(t) < rate).astype(float)
        p = np.where(arm == 1, w_b, 1 - w_b)
        a, b = sums_from_impressions(arm, r, p, 0), sums_from_impressions(arm, r, p, 1)
        plain_rej += msprt_two_sample("bernoulli", a.n, a.reward_sum, None, b.n, b.reward_sum,
                                      None, tau2=tau2).p_value <= 0.05
        ipw_rej += ipw_msprt(t, a, b, tau2=tau2, binary=True).p_value <= 0.05
    assert plain_rej / reps > 0.5
    assert ipw_rej / reps <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / reps)


def test_naive_z_peeking_is_inflated() -> None:
    r = simulate_sequential(SequentialSimConfig(allocation="fixed", method="naive-z", reps=300,
                                                seed=11))
    assert r["rejection_rate"] > 0.1


def test_adaptive_valid_test_under_thompson_keeps_alpha() -> None:
    r = simulate_sequential(SequentialSimConfig(allocation="thompson", method="armlab", reps=300,
                                                seed=12, floor=0.05, ts_draws=64))
    assert r["rejection_rate"] <= 0.05 + 3 * r["rejection_rate_se"] + 1e-9


def test_msprt_under_fixed_allocation_keeps_alpha_and_has_power() -> None:
    null = simulate_sequential(SequentialSimConfig(method="msprt", reps=400, seed=13))
    alt = simulate_sequential(SequentialSimConfig(method="msprt", reps=400, seed=14,
                                                  p_treatment=0.06))
    assert null["rejection_rate"] <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 400)
    assert alt["rejection_rate"] > 0.4 and alt["mean_n"] < 10_000
    assert alt["fixed_horizon_n_80"] == fixed_horizon_n(0.05, 0.06)
    assert 8_000 < fixed_horizon_n(0.05, 0.06) < 8_300


def test_sim_kernel_is_the_platform_kernel() -> None:
    a = ArmSums(300, 20, 20, 600, 40, 80, 1200)
    b = ArmSums(500, 30, 30, 700, 45, 70, 1100)
    m = ipw_moments(800, a, b, binary=True)
    arr = [np.array([getattr(a, f)]) for f in KERNEL_FIELDS]
    brr = [np.array([getattr(b, f)]) for f in KERNEL_FIELDS]
    mean, s2, _ = ipw_kernel(np.array([800.0]), *arr, *brr, binary=True)
    assert np.isclose(mean[0], m.estimate) and np.isclose(s2[0], m.sigma2)
    assert np.isclose(float(log_lambda(m.estimate, m.variance, 1e-4)),
                      ipw_msprt(800, a, b, tau2=1e-4, binary=True).log_lambda)


def test_a_floored_arm_with_sparse_successes_does_not_shrink_the_variance() -> None:
    """Regression (low base rates): a treatment held at a 10% floor that has seen few
    successes had m2 = per-arm mean of (R - c)², far below the pooled p(1 - p), on the term
    weighted by 1/p² = 100: sigma² collapsed exactly when Zbar was most extreme (2 successes
    in 1,000 against 1% elsewhere gave p = 3e-4). Its second moment is now at least the
    pooled one."""
    p_a, p_b = 0.9, 0.1
    a = ArmSums(n=9000, reward_sum=90, reward_sumsq=90, ipw_n=9000 / p_a, ipw_sum=90 / p_a,
                ipw_sumsq=90 / p_a**2, ipw_n_sq=9000 / p_a**2)
    b = ArmSums(n=1000, reward_sum=2, reward_sumsq=2, ipw_n=1000 / p_b, ipw_sum=2 / p_b,
                ipw_sumsq=2 / p_b**2, ipw_n_sq=1000 / p_b**2)
    t = 10_000
    m = ipw_moments(t, a, b, binary=True)
    c = 92 / 10_000
    pooled = c * (1 - c)  # second moment of (R - c) over both arms
    floor_term = pooled * (a.ipw_n_sq + b.ipw_n_sq) / t
    assert m.sigma2 >= (floor_term - m.estimate**2) * 0.999
    res = ipw_msprt(t, a, b, tau2=1e-4, binary=True, min_samples=100)
    assert res.p_value > 0.1
