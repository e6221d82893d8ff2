"""``linear_thompson``'s model average (:mod:`armlab.core.policies.linear_pooling`): the
evidence against the Gaussian density it stands for, the weight of the per-context model on
data where the context matters and where it does not, the propensity against the two-stage
Thompson draw it stands for, and the snapshot round trip."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy import stats

from armlab.core.policies.contextual_snapshot import allocation_from_dict, allocation_to_dict
from armlab.core.policies.linear_pooling import context_free, log_evidence
from armlab.core.policies.linear_thompson import LinearStats, LinearThompson, LinearThompsonSettings
from armlab.core.policies.normal_max import normal_prob_best

FEATURES = [{"name": "segment", "kind": "categorical", "levels": ["s0", "s1", "s2"]}]


def test_log_evidence_is_the_gaussian_marginal_up_to_shared_terms() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    y = x @ np.array([0.3, -0.2, 0.1]) + rng.normal(0, 0.5, 40)
    v2 = 0.25
    dens = []
    ours = []
    for lam in (np.array([1.0, 2.0, 0.5]), np.array([50.0, 0.1, 3.0])):
        cov = v2 * np.eye(40) + x @ np.diag(v2 / lam) @ x.T  # theta ~ N(0, v2 / lam)
        dens.append(stats.multivariate_normal(np.zeros(40), cov).logpdf(y))
        ours.append(float(log_evidence(x.T @ x, x.T @ y, lam, np.float64(v2))))
    assert ours[0] - ours[1] == pytest.approx(dens[0] - dens[1], rel=1e-9)


def _stats(mu: np.ndarray, q: np.ndarray, n: int, seed: int) -> LinearStats:
    """Uniformly served impressions of a (segment, arm) click-rate table."""
    pol = LinearThompson(LinearThompsonSettings(features=FEATURES))
    rng = np.random.default_rng(seed)
    g = rng.choice(len(q), n, p=q)
    arms = rng.integers(0, mu.shape[1], n)
    rewards = (rng.random(n) < mu[g, arms]).astype(float)
    ctx = [{"segment": f"s{i}"} for i in g]
    return pol.update(LinearStats.empty(mu.shape[1], pol.spec.dim), ctx, arms, rewards)


def _h0(st: LinearStats) -> Any:
    return context_free(st.xtx, st.xty, ridge=1.0, noise_sd=0.15, effect_scale=0.5,
                        context_prior=0.95, binary=True, grid=48)


Q = np.array([0.5, 0.3, 0.2])
DIFFER = np.array([[0.06, 0.04, 0.03], [0.03, 0.07, 0.04], [0.02, 0.03, 0.08]])
MAIN_EFFECT = np.array([[0.08, 0.064, 0.048], [0.04, 0.032, 0.024], [0.02, 0.016, 0.012]])
SAME = np.array([[0.05, 0.04, 0.03]] * 3)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_per_context_model_wins_where_the_best_arm_differs(seed: int) -> None:
    h0 = _h0(_stats(DIFFER, Q, 20_000, seed))
    assert float(h0.context_weight) > 0.99


@pytest.mark.parametrize(("mu", "seed"), [(SAME, 1), (SAME, 2), (MAIN_EFFECT, 1),
                                          (MAIN_EFFECT, 2)])
def test_the_context_free_model_wins_where_the_ranking_is_the_same(mu: np.ndarray,
                                                                    seed: int) -> None:
    """Alike segments, and segments whose click rates differ fourfold with the same ratios
    between the arms: the context-free model (a shared baseline times a factor per arm)."""
    h0 = _h0(_stats(mu, Q, 20_000, seed))
    assert float(h0.context_weight) < 0.2
    assert int(np.argmax(h0.prob_best)) == 0


def test_auto_noise_sd_follows_the_click_rate() -> None:
    """``noise_sd: auto``: 0.7 x the Bernoulli sd of the mean reward (0.15 near 5%), the
    fixed number when given, 0.15 for continuous rewards."""
    from armlab.core.policies.linear_thompson import exploration_sd

    st = _stats(SAME, Q, 20_000, 7)  # mean about 0.044
    auto = LinearThompsonSettings(features=FEATURES)
    m = (st.xty[:, 0].sum() + 1) / (st.xtx[:, 0, 0].sum() + 2)
    assert float(exploration_sd(auto, st.xtx, st.xty)) == pytest.approx(
        0.7 * np.sqrt(m * (1 - m)))
    low = _stats(SAME / 10, Q, 20_000, 7)
    assert float(exploration_sd(auto, low.xtx, low.xty)) < 0.06
    fixed = LinearThompsonSettings(features=FEATURES, noise_sd=0.3)
    assert float(exploration_sd(fixed, low.xtx, low.xty)) == 0.3
    cont = LinearThompsonSettings(features=FEATURES, binary_rewards=False)
    assert float(exploration_sd(cont, low.xtx, low.xty)) == 0.15
    # the posterior's width follows: v^2 A^-1
    pol = LinearThompson(auto)
    wide = LinearThompson(LinearThompsonSettings(features=FEATURES, noise_sd=0.15))
    assert np.all(pol.allocate(low).cov[:, 0, 0] < wide.allocate(low).cov[:, 0, 0] / 5)


def test_no_data_leaves_the_prior() -> None:
    h0 = _h0(LinearStats.empty(3, 5))
    assert float(h0.context_weight) == pytest.approx(0.95)
    np.testing.assert_allclose(h0.prob_best, np.full(3, 1 / 3), atol=1e-9)


def test_model_average_propensity_is_the_two_stage_thompson_draw() -> None:
    """P(arm | x) = w P_H1 + (1 - w) P_H0: draw the model (H1 with probability w), then its
    parameters (theta_k for H1, the factors f_k for H0) and serve the argmax."""
    pol = LinearThompson(LinearThompsonSettings(features=FEATURES, noise_sd=0.15))
    st = _stats(np.array([[0.06, 0.05, 0.03], [0.05, 0.06, 0.03], [0.05, 0.05, 0.04]]), Q,
                6_000, 4)
    al = pol.allocate(st)
    assert al.pooled is not None and 0.02 < al.context_weight < 0.98, al.context_weight
    h0 = _h0(st)
    rng = np.random.default_rng(5)
    draws = 200_000
    use_h1 = rng.random(draws) < al.context_weight
    for ctx in ({"segment": "s0"}, {"segment": "s2"}):
        x = pol.spec.encode(ctx)
        theta = np.stack([rng.multivariate_normal(al.mean[k], al.cov[k], draws)
                          for k in range(3)], axis=1)
        h1_pick = (theta @ x).argmax(axis=1)
        # H0's factors: the posterior behind h0.prob_best (normal, independent per arm)
        loc, sd = _h0_moments(st)
        np.testing.assert_allclose(normal_prob_best(loc, sd, 48)[0], h0.prob_best, atol=1e-12)
        h0_pick = rng.normal(loc, sd, size=(draws, 3)).argmax(axis=1)
        pick = np.where(use_h1, h1_pick, h0_pick)
        mc = np.bincount(pick, minlength=3) / draws
        np.testing.assert_allclose(al.propensities([ctx])[0], mc, atol=0.005)


def _h0_moments(st: LinearStats) -> tuple[np.ndarray, np.ndarray]:
    """H0's factor posteriors, recomputed from the module doc's formulas."""
    d = st.xty.shape[-1]
    beta = np.linalg.solve(st.xtx.sum(axis=0) + np.eye(d), st.xty.sum(axis=0))
    b2 = np.einsum("d,kde,e->k", beta, st.xtx, beta)
    g = st.xty @ beta - b2
    a0s = b2 + 0.15**2
    return 1.0 + g / a0s, 0.15 / np.sqrt(a0s)


def test_snapshot_round_trip_and_older_snapshots() -> None:
    pol = LinearThompson(LinearThompsonSettings(features=FEATURES, floor=0.05))
    al = pol.allocate(_stats(SAME, Q, 3000, 6))
    d = allocation_to_dict(al, ["a", "b", "c"])
    back = allocation_from_dict(d)
    ctx = [{"segment": "s1"}, {"segment": "s0"}]
    np.testing.assert_allclose(back.propensities(ctx), al.propensities(ctx), atol=1e-12)
    old = {k: v for k, v in d.items() if k not in ("pooled", "context_weight")}
    before = allocation_from_dict(old)  # a snapshot written before pooling: model_average
    none = LinearThompson(LinearThompsonSettings(features=FEATURES, floor=0.05,
                                                 pooling="none")).allocate(
        _stats(SAME, Q, 3000, 6))
    np.testing.assert_allclose(before.propensities(ctx), none.propensities(ctx), atol=1e-12)
