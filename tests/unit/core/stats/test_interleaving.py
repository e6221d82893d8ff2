"""The interleaving test: per-unit preferences (with IPW), the mixture test against msprt's
closed form and an independent quadrature, the scale-free tau² against Waudby-Smith et al.'s
asymptotic confidence sequence, Holm, directions, the Condorcet winner, running state and the
freeze at stop."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate
from scipy.stats import norm

from armlab.core.stats.interleaving import (
    InterleavingConfig,
    PairSums,
    condorcet_winner,
    evaluate_preferences,
    holm_adjust_many,
    preference_kernel,
    preference_test,
    rho2_for_units,
    unit_preferences,
)
from armlab.core.stats.msprt import holm_adjust, mixture_test, tau2_for_horizon
from armlab.errors import StatsError


def test_unit_preferences_mean_sum_and_missing_pairs() -> None:
    d = np.array([[1, 0], [-1, 2], [2, 1], [0, 0]], dtype=float)
    units = np.array([7, 7, 3, 7])
    ids, x = unit_preferences(d, units)
    assert ids.tolist() == [3, 7]
    assert x.tolist() == [[2.0, 1.0], [0.0, 2 / 3]]
    _, xs = unit_preferences(d, units, aggregate="sum")
    assert xs.tolist() == [[2.0, 1.0], [0.0, 2.0]]
    compared = np.array([[True, False], [True, False], [True, False], [True, False]])
    _, xc = unit_preferences(d, units, compared=compared)
    assert xc[0, 0] == 2.0 and math.isnan(xc[0, 1])  # never compared: no outcome
    with pytest.raises(StatsError, match="aggregate"):
        unit_preferences(d, units, aggregate="median")  # type: ignore[arg-type]


def test_ipw_recovers_the_population_preference_under_a_context_dependent_choice() -> None:
    """How the dueling bandit's propensities are used. Half the requests come from users who
    prefer a strongly (d = +1), half from users who slightly prefer b (d = -0.2); the bandit
    compares (a, b) in 90% of the first kind and 10% of the second. The plain mean over the
    compared requests estimates the bandit's mix (about 0.88); weighting every request by
    1{compared}/P(compared) recovers the population preference 0.4, and its test decides."""
    rng = np.random.default_rng(5)
    n = 40_000
    kind = rng.random(n) < 0.5
    prob = np.where(kind, 0.9, 0.1)
    compared = rng.random(n) < prob
    d = np.where(kind, 1.0, -0.2)
    _, plain = unit_preferences(d, np.arange(n), compared=compared)
    _, ipw = unit_preferences(d, np.arange(n), compared=compared, propensity=prob)
    plain_mean = float(np.nanmean(plain))
    ipw_sums = PairSums.from_values(ipw)
    assert ipw_sums.n == n  # every request is a unit term (0 when not compared)
    assert plain_mean == pytest.approx(0.88, abs=0.01)
    assert ipw_sums.total / ipw_sums.n == pytest.approx(0.4, abs=0.02)
    res = evaluate_preferences(["a", "b"], {("a", "b"): ipw_sums},
                               config=InterleavingConfig(planned_units=n))
    p = res.pair("a", "b")
    assert p.winner == "a" and p.ci_low < 0.4 < p.ci_high
    with pytest.raises(StatsError, match="propensities"):
        unit_preferences(d, np.arange(n), compared=compared, propensity=np.zeros(n))


def _sums(x: np.ndarray) -> PairSums:
    return PairSums.from_values(x)


def lambda_by_quadrature(d: float, v: float, tau2: float) -> float:
    """Integral of N(d; theta, V)/N(d; 0, V) over theta ~ N(0, tau²) (independent check)."""
    tau = math.sqrt(tau2)
    f = lambda th: norm.pdf(d, th, math.sqrt(v)) * norm.pdf(th, 0.0, tau)  # noqa: E731
    num, _ = integrate.quad(f, -12 * tau, 12 * tau, points=[d], limit=200)
    return num / norm.pdf(d, 0.0, math.sqrt(v))


def test_one_pair_matches_msprt_and_the_asymptotic_confidence_sequence() -> None:
    rng = np.random.default_rng(11)
    x = rng.normal(0.08, 1.3, size=400)
    s = _sums(x)
    cfg = InterleavingConfig(planned_units=2000, min_units=30)
    res = preference_test(s, config=cfg)
    n, mean, s2 = len(x), float(x.mean()), float(x.var(ddof=1))
    rho2 = tau2_for_horizon(1 / 2000, 0.05)
    assert cfg.rho2 == rho2 == rho2_for_units(2000, 0.05)
    ref = mixture_test(mean, s2 / n, tau2=rho2 * s2, alpha=0.05)
    assert res.estimate == pytest.approx(mean) and res.variance == pytest.approx(s2 / n)
    assert res.log_lambda == pytest.approx(ref.log_lambda, rel=1e-12)
    assert res.p_value == pytest.approx(ref.p_value, rel=1e-12)
    assert math.exp(res.log_lambda) == pytest.approx(
        lambda_by_quadrature(mean, s2 / n, rho2 * s2), rel=1e-6)
    # Waudby-Smith et al. (2021) Thm 2.5: mean ± sigma sqrt(2 (n rho² + 1) / (n² rho²)
    # log(sqrt(n rho² + 1) / alpha)), with sigma the sample standard deviation
    half = math.sqrt(s2) * math.sqrt(2 * (n * rho2 + 1) / (n * n * rho2)
                                     * math.log(math.sqrt(n * rho2 + 1) / 0.05))
    assert res.ci_low == pytest.approx(mean - half, rel=1e-10)
    assert res.ci_high == pytest.approx(mean + half, rel=1e-10)


def test_reference_numbers() -> None:
    """100 units, sum 20, sum of squares 100: D = 0.2, s² = 96/99, V = s²/100, rho² =
    8.2092 / 100 (Howard et al.'s rule, ≈ 8.2 V* at alpha 0.05), tau² = rho² s²."""
    res = preference_test(PairSums(100, 20, 100),
                          config=InterleavingConfig(planned_units=100, min_units=30))
    assert res.estimate == pytest.approx(0.2)
    assert res.variance == pytest.approx(96 / 99 / 100)
    assert res.tau2 == pytest.approx(0.0820916 * 96 / 99, rel=1e-5)
    assert res.log_lambda == pytest.approx(0.728439, rel=1e-5)
    assert res.p_value == pytest.approx(0.482662, rel=1e-5)
    assert (res.ci_low, res.ci_high) == pytest.approx((-0.098878, 0.498878), rel=1e-5)


def test_fixed_tau2_is_the_plain_mixture_test() -> None:
    x = np.random.default_rng(2).normal(0.3, 1.0, size=200)
    s = _sums(x)
    res = preference_test(s, config=InterleavingConfig(tau2=0.04, min_units=10))
    ref = mixture_test(float(x.mean()), float(x.var(ddof=1)) / 200, tau2=0.04)
    assert res.log_lambda == pytest.approx(ref.log_lambda, rel=1e-12)
    d, v, t2, llr, ok = preference_kernel(s.n, s.total, s.sumsq, rho2=None, tau2=0.04)
    assert bool(ok) and float(llr) == pytest.approx(ref.log_lambda, rel=1e-12)


def test_gate_and_zero_variance_carry_no_evidence() -> None:
    cfg = InterleavingConfig(min_units=50)
    res = preference_test(_sums(np.full(49, 1.0) + np.arange(49) * 0.01), config=cfg)
    assert not res.valid and res.p_value == 1.0 and res.reason == "fewer than 50 units"
    res = preference_test(_sums(np.zeros(100)), config=cfg)
    assert not res.valid and res.reason == "zero variance"


def test_holm_many_matches_holm() -> None:
    rng = np.random.default_rng(0)
    p = rng.random((50, 6)) ** 3
    p[:, 2] = p[:, 4]  # ties
    many = holm_adjust_many(p)
    for row, adj in zip(p, many, strict=True):
        assert adj.tolist() == pytest.approx(holm_adjust(row.tolist()))


def test_condorcet_winner() -> None:
    r = ["a", "b", "c"]
    assert condorcet_winner(r, {("a", "b"): "a", ("a", "c"): "a", ("b", "c"): None}) == "a"
    assert condorcet_winner(r, {("a", "b"): "a", ("a", "c"): None, ("b", "c"): "c"}) is None
    assert condorcet_winner(r, {("a", "b"): "b", ("a", "c"): "c", ("b", "c"): "c"}) == "c"


def test_running_state_monotone_p_intersected_cs_direction_and_freeze() -> None:
    """Three rankers, c clearly worse: the running p never rises, the confidence sequences
    only shrink, decisions never flip, and the stop at the Condorcet winner freezes it."""
    rng = np.random.default_rng(4)
    keys = ["a", "b", "c"]
    effect = {("a", "b"): 0.0, ("a", "c"): 0.5, ("b", "c"): 0.5}
    data: dict[tuple[str, str], list[float]] = {p: [] for p in effect}
    cfg = InterleavingConfig(planned_units=500, min_units=20, stop_on="all_pairs")
    state = None
    prev = None
    for _ in range(40):
        for p, mu in effect.items():
            data[p].extend(rng.normal(mu, 1.0, size=10))
        res = evaluate_preferences(keys, {p: PairSums.from_values(v) for p, v in data.items()},
                                   config=cfg, state=state)
        state = res.state
        if prev is not None:
            for now, before in zip(res.pairs, prev.pairs, strict=True):
                assert now.p_value <= before.p_value
                assert now.ci_low >= before.ci_low and now.ci_high <= before.ci_high
                if before.decision != "undecided":
                    assert now.decision == before.decision
        prev = res
    assert res.cs_alpha == pytest.approx(0.05 / 3)
    assert res.pair("a", "c").winner == "a" and res.pair("c", "b").winner == "b"
    assert res.pair("a", "b").decision == "undecided" and not res.stop
    assert res.condorcet_winner is None  # a and b are tied: no one beats everyone

    # stop_on condorcet with two rankers: the decision stops and freezes the experiment
    cfg2 = InterleavingConfig(planned_units=500, min_units=20)
    x = list(rng.normal(0.6, 1.0, size=200))
    res2 = evaluate_preferences(["a", "b"], {("a", "b"): PairSums.from_values(x)}, config=cfg2)
    assert res2.stop and res2.condorcet_winner == "a" and "Condorcet" in res2.stop_reason
    frozen = evaluate_preferences(["a", "b"], {("a", "b"): PairSums(500, -400.0, 900.0)},
                                  config=cfg2, state=res2.state)
    assert frozen == res2 and frozen.looks == res2.looks


def test_bad_inputs() -> None:
    with pytest.raises(StatsError, match="distinct"):
        evaluate_preferences(["a", "a"], {})
    with pytest.raises(StatsError, match="pairs that are not"):
        evaluate_preferences(["a", "b"], {("b", "a"): PairSums()})
    with pytest.raises(StatsError, match="min_units"):
        InterleavingConfig(min_units=1)
    with pytest.raises(StatsError, match="finite"):
        PairSums(1, math.nan, 0)
