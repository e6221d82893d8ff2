"""armlab.core.policies: reference values, validation tables, floors, burn-in, selection."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate
from scipy import stats as sps

from armlab.core.policies import (
    EpsilonGreedySettings,
    PolicyStats,
    ThompsonSettings,
    apply_floor,
    make_policy,
    select,
    select_many,
)
from armlab.core.policies.thompson import (
    nig_posterior,
    prob_best_beta_quadrature,
    prob_best_t_quadrature,
    top_two_weights,
)
from armlab.errors import PolicyError


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# --------------------------------------------------------------------- P(best) references


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((3.0, 10.0), (8.0, 20.0)),
        ((1.0, 1.0), (1.0, 1.0)),
        ((51.0, 41.0), (951.0, 961.0)),
        ((5001.0, 7.0), (95001.0, 100.0)),  # very concentrated vs wide posterior
    ],
)
def test_two_beta_prob_best_matches_numerical_integration(a: tuple, b: tuple) -> None:
    p, err = prob_best_beta_quadrature(np.array(a), np.array(b))
    mean0 = a[0] / (a[0] + b[0])
    # P(X1 > X0) = int f1(x) F0(x) dx, by adaptive quadrature with the concentrated mode marked
    ref = integrate.quad(
        lambda x: sps.beta.pdf(x, a[1], b[1]) * sps.beta.cdf(x, a[0], b[0]),
        0,
        1,
        points=[mean0],
        limit=500,
        epsabs=1e-12,
    )[0]
    assert p[1] == pytest.approx(ref, abs=2e-4)
    assert p.sum() == pytest.approx(1.0)
    assert err < 1e-3


def test_equal_arms_are_equally_likely_best() -> None:
    p, _ = prob_best_beta_quadrature(np.full(5, 11.0), np.full(5, 91.0))
    np.testing.assert_allclose(p, 0.2, atol=1e-6)


def test_student_t_prob_best_matches_normal_limit_and_monte_carlo() -> None:
    # two t posteriors with huge df are normal: P(X1 > X0) = Phi((m1 - m0) / sqrt(s0^2 + s1^2))
    df = np.array([1e7, 1e7])
    loc = np.array([0.0, 0.1])
    scale = np.array([0.1, 0.2])
    p, _ = prob_best_t_quadrature(df, loc, scale)
    assert p[1] == pytest.approx(sps.norm.cdf(0.1 / np.sqrt(0.05)), abs=1e-4)
    # small df: compare with a large Monte Carlo sample
    df = np.array([3.0, 5.0, 4.0])
    loc = np.array([0.0, 0.2, 0.1])
    scale = np.array([0.3, 0.4, 0.2])
    p, _ = prob_best_t_quadrature(df, loc, scale)
    draws = loc + scale * rng(1).standard_t(df, size=(1_000_000, 3))
    mc = np.bincount(draws.argmax(axis=1), minlength=3) / 1e6
    np.testing.assert_allclose(p, mc, atol=3e-3)


def test_nig_posterior_reference_values() -> None:
    # Murphy 2007 eqs. 85-90 by hand: n=4, data 1,2,3,4, prior mu0=0, kappa0=1, a0=1, b0=1
    df, loc, scale = nig_posterior(
        np.array([4.0]), np.array([10.0]), np.array([30.0]), 0.0, 1.0, 1.0, 1.0
    )
    kappa_n, mu_n, a_n = 5.0, 10.0 / 5.0, 3.0
    b_n = 1.0 + 5.0 / 2.0 + 1.0 * 4.0 * 2.5**2 / (2 * 5.0)
    assert df[0] == pytest.approx(2 * a_n)
    assert loc[0] == pytest.approx(mu_n)
    assert scale[0] == pytest.approx(np.sqrt(b_n / (a_n * kappa_n)))


def test_monte_carlo_reports_standard_error_and_agrees_with_quadrature() -> None:
    stats = PolicyStats.from_lists([200, 220, 180], [20, 30, 15])
    quad = make_policy("thompson").weights(stats, rng())
    mc = make_policy("thompson", {"method": "monte_carlo", "n_draws": 200_000}).weights(
        stats, rng()
    )
    assert quad.method == "quadrature" and quad.mc_se is None and quad.quad_error < 1e-3
    assert mc.method == "monte_carlo" and mc.mc_se is not None
    assert mc.mc_se == pytest.approx(np.sqrt(mc.prob_best * (1 - mc.prob_best) / 200_000).max())
    np.testing.assert_allclose(mc.weights, quad.weights, atol=5 * mc.mc_se)


def test_continuous_thompson_prefers_the_higher_mean() -> None:
    # arm 1: mean 1.5 over 200 obs, arm 0: mean 1.0; same variance 1
    n = np.array([200.0, 200.0])
    s = np.array([200.0, 300.0])
    q = np.array([200.0 * (1 + 1.0), 200.0 * (1 + 2.25)])
    w = make_policy("thompson", reward_kind="continuous").weights(PolicyStats(n, s, q), rng())
    assert w.weights[1] > 0.999


def test_top_two_formula_against_simulation() -> None:
    p = np.array([0.6, 0.3, 0.1])
    psi = top_two_weights(p, 0.5)
    # simulate the algorithm: leader ~ p; w.p. 1/2 keep it, else re-sample until different
    g = rng(3)
    n = 400_000
    leader = g.choice(3, size=n, p=p)
    keep = g.random(n) < 0.5
    out = leader.copy()
    todo = ~keep
    while todo.any():
        c = g.choice(3, size=todo.sum(), p=p)
        idx = np.flatnonzero(todo)
        ok = c != leader[idx]
        out[idx[ok]] = c[ok]
        todo[idx[ok]] = False
    np.testing.assert_allclose(psi, np.bincount(out, minlength=3) / n, atol=4e-3)
    assert psi.sum() == pytest.approx(1.0)


# --------------------------------------------------------------------- epsilon-greedy, uniform


def test_epsilon_greedy_weights_are_exact() -> None:
    stats = PolicyStats.from_lists([100, 100, 100, 100], [5, 9, 7, 9])  # tie between arms 1 and 3
    w = make_policy("epsilon_greedy", {"epsilon": 0.2}).weights(stats, rng())
    np.testing.assert_allclose(w.weights, [0.05, 0.05 + 0.4, 0.05, 0.05 + 0.4])
    assert w.epsilon == 0.2


def test_epsilon_decay_schedule() -> None:
    pol = make_policy("epsilon_greedy", {"epsilon": 0.5, "schedule": "decay", "decay_c": 100.0})
    few = pol.weights(PolicyStats.from_lists([50, 50], [1, 2]), rng())
    many = pol.weights(PolicyStats.from_lists([5000, 5000], [100, 200]), rng())
    assert few.epsilon == 0.5  # min(0.5, 100/100)
    assert many.epsilon == pytest.approx(100 / 10_000)
    np.testing.assert_allclose(many.weights, [0.005, 0.995])


def test_unplayed_arm_counts_as_best_for_epsilon_greedy() -> None:
    w = make_policy("epsilon_greedy", {"epsilon": 0.1}).weights(
        PolicyStats.from_lists([100, 0], [50, 0]), rng()
    )
    np.testing.assert_allclose(w.weights, [0.05, 0.95])


def test_uniform() -> None:
    w = make_policy("uniform").weights(PolicyStats.from_lists([1, 1000, 3], [1, 10, 3]), rng())
    np.testing.assert_allclose(w.weights, [1 / 3] * 3)


# --------------------------------------------------------------------- floors and burn-in


def test_floor_projection_examples() -> None:
    np.testing.assert_allclose(apply_floor(np.array([0.9, 0.1, 0.0]), 0.05), [0.855, 0.095, 0.05])
    # already above the floor: unchanged
    np.testing.assert_allclose(apply_floor(np.array([0.5, 0.3, 0.2]), 0.1), [0.5, 0.3, 0.2])
    # cascade: lifting one arm pushes another below the floor
    out = apply_floor(np.array([0.96, 0.039, 0.001]), 0.04)
    np.testing.assert_allclose(out, [0.92, 0.04, 0.04])
    np.testing.assert_allclose(apply_floor(np.array([1.0, 0.0]), 0.5), [0.5, 0.5])


def test_burn_in_is_uniform_until_every_arm_has_enough_observations() -> None:
    pol = make_policy("thompson", burn_in=100)
    w = pol.weights(PolicyStats.from_lists([500, 99, 400], [100, 0, 1]), rng())
    assert w.method == "burn_in"
    np.testing.assert_allclose(w.weights, [1 / 3] * 3)
    w = pol.weights(PolicyStats.from_lists([500, 100, 400], [100, 0, 1]), rng())
    assert w.method == "quadrature" and w.weights[0] > 0.99


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    k=st.integers(2, 8),
    policy=st.sampled_from(["thompson", "top_two_thompson", "epsilon_greedy", "uniform"]),
)
def test_weights_are_a_distribution_respecting_the_floor(
    data: st.DataObject, k: int, policy: str
) -> None:
    n = np.array(data.draw(st.lists(st.integers(0, 10**6), min_size=k, max_size=k)), float)
    frac = np.array(data.draw(st.lists(st.floats(0, 1), min_size=k, max_size=k)))
    floor = data.draw(st.floats(0.0, 1.0 / k))
    s = np.floor(n * frac)
    w = make_policy(policy, floor=floor).weights(PolicyStats(n, s, s), rng()).weights
    assert w.shape == (k,)
    assert np.all(np.isfinite(w))
    assert w.sum() == pytest.approx(1.0, abs=1e-9)
    assert np.all(w >= floor - 1e-9)


# --------------------------------------------------------------------- selection


def test_select_frequencies_match_weights_and_propensity_is_the_weight() -> None:
    w = np.array([0.5, 0.3, 0.0, 0.2])
    g = rng(7)
    picks = [select(w, g) for _ in range(20_000)]
    arms = np.array([a for a, _ in picks])
    assert all(p == w[a] for a, p in picks)
    freq = np.bincount(arms, minlength=4) / arms.size
    np.testing.assert_allclose(freq, w, atol=0.015)
    arms2, props = select_many(w, rng(8), 100_000)
    np.testing.assert_allclose(np.bincount(arms2, minlength=4) / 1e5, w, atol=0.006)
    np.testing.assert_array_equal(props, w[arms2])


def test_same_seed_same_draws() -> None:
    w = np.array([0.2, 0.8])
    assert [select(w, rng(1)) for _ in range(3)] == [select(w, rng(1)) for _ in range(3)]


# --------------------------------------------------------------------- validation tables


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"floor": -0.1}, "floor"),
        ({"floor": 1.0}, "floor"),
        ({"burn_in": -1}, "burn_in"),
        ({"burn_in": 1.5}, "burn_in"),
        ({"reward": "ordinal"}, "reward"),
        ({"prior_alpha": 0}, "prior_alpha"),
        ({"prior_rate": -1.0}, "prior_rate"),
        ({"method": "exact"}, "method"),
        ({"n_draws": 5}, "n_draws"),
        ({"top_two_beta": 1.0}, "top_two_beta"),
        ({"prior_mean": float("nan")}, "prior_mean"),
        ({"grid": 3}, "grid"),
    ],
)
def test_thompson_settings_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(PolicyError, match=match):
        ThompsonSettings(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epsilon": 1.5}, "epsilon"),
        ({"schedule": "cosine"}, "schedule"),
        ({"decay_c": 0}, "decay_c"),
    ],
)
def test_epsilon_settings_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(PolicyError, match=match):
        EpsilonGreedySettings(**kwargs)


def test_make_policy_errors() -> None:
    with pytest.raises(PolicyError, match="unknown policy 'ucb'"):
        make_policy("ucb")
    with pytest.raises(PolicyError, match="unknown policy parameter.*alpha0.*valid"):
        make_policy("thompson", {"alpha0": 2})
    with pytest.raises(PolicyError, match="too large for 3 arms"):
        make_policy("uniform", floor=0.4).weights(
            PolicyStats.from_lists([1, 1, 1], [0, 0, 0]), rng())


@pytest.mark.parametrize(
    ("n", "s", "match"),
    [
        ([], [], "non-empty"),
        ([1, 2], [1], "same shape"),
        ([-1, 2], [0, 0], ">= 0"),
        ([1, float("inf")], [0, 0], "finite"),
    ],
)
def test_arm_stats_validation(n: list, s: list, match: str) -> None:
    with pytest.raises(PolicyError, match=match):
        PolicyStats.from_lists(n, s)
