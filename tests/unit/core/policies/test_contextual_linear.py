"""Linear Thompson sampling: P(arm | x) against Monte Carlo, floors, recovery of the best arm."""

from __future__ import annotations

import numpy as np
import pytest

from armlab.core.policies.linear_thompson import (
    LinearStats,
    LinearThompson,
    LinearThompsonSettings,
    normal_prob_best,
    normal_prob_best_one,
    onehot_precision,
)
from armlab.errors import PolicyError

FEATURES = [
    {"name": "segment", "kind": "categorical", "levels": ["a", "b", "c"]},
    {"name": "recency", "kind": "numeric", "center": 0.5, "scale": 0.5},
]


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def true_rate(ctx: dict[str, object], arm: int) -> float:
    """Best arm: a -> 0, b -> 1, c -> 2; recency raises every arm a little."""
    seg = ["a", "b", "c"].index(str(ctx["segment"]))
    return 0.03 + 0.05 * (arm == seg) + 0.02 * float(ctx["recency"])  # type: ignore[arg-type]


def _logged(n: int, seed: int) -> tuple[list[dict[str, object]], np.ndarray, np.ndarray]:
    r = rng(seed)
    ctx: list[dict[str, object]] = [
        {"segment": str(r.choice(["a", "b", "c"])), "recency": float(r.random())}
        for _ in range(n)
    ]
    arms = r.integers(0, 3, n)
    rewards = np.array([r.random() < true_rate(c, int(a)) for c, a in zip(ctx, arms)], float)
    return ctx, arms, rewards


@pytest.mark.parametrize(
    ("loc", "sd"),
    [
        ([0.1, 0.12, 0.05, 0.11], [0.02, 0.05, 0.001, 0.01]),
        ([0.0, 0.0], [1.0, 1.0]),
        ([0.05, 0.051, 0.049], [1e-4, 0.3, 1e-3]),
    ],
)
def test_normal_prob_best_matches_monte_carlo(loc: list[float], sd: list[float]) -> None:
    loc_a, sd_a = np.array(loc), np.array(sd)
    p, err = normal_prob_best(loc_a, sd_a, 48)
    draws = rng(1).normal(loc_a, sd_a, size=(400_000, len(loc)))
    mc = np.bincount(draws.argmax(axis=1), minlength=len(loc)) / 400_000
    assert np.all(np.abs(p - mc) < 0.004) and float(err) < 0.01
    np.testing.assert_allclose(normal_prob_best_one(loc_a, sd_a, np.linspace(-6.5, 6.5, 48)), p,
                               atol=1e-12)


def test_context_propensities_are_thompson_probabilities() -> None:
    """P(arm | x) equals the frequency with which drawing theta_k ~ N(mu_k, v^2 A_k^-1) and
    taking argmax x' theta_k picks each arm (the Thompson rule it stands for)."""
    pol = LinearThompson(LinearThompsonSettings(features=FEATURES, pooling="none"))
    ctx, arms, rew = _logged(600, 3)
    al = pol.allocate(pol.update(LinearStats.empty(3, pol.spec.dim), ctx, arms, rew))
    assert al.pooled is None and al.context_weight == 1.0
    for c in ({"segment": "a", "recency": 0.9}, {"segment": "c"}, {}):
        x = pol.spec.encode(c)
        p = al.propensities([c])[0]
        np.testing.assert_allclose(p.sum(), 1.0)
        draws = np.stack([rng(5 + k).multivariate_normal(al.mean[k], al.cov[k], 200_000)
                          for k in range(3)], axis=1)  # (D, K, d)
        mc = np.bincount((draws @ x).argmax(axis=1), minlength=3) / 200_000
        assert np.all(np.abs(p - mc) < 0.006), (c, p, mc)
        np.testing.assert_allclose(al.weights_one(x), p, atol=1e-12)


def test_linear_ts_recovers_best_arm_per_context_and_floor_holds() -> None:
    pol = LinearThompson(LinearThompsonSettings(features=FEATURES, floor=0.05))
    ctx, arms, rew = _logged(30_000, 11)
    al = pol.allocate(pol.update(LinearStats.empty(3, pol.spec.dim), ctx, arms, rew))
    grid = [{"segment": s, "recency": t} for s in "abc" for t in (0.0, 0.5, 1.0)]
    props = al.propensities(grid)
    assert np.all(props >= 0.05 - 1e-12)
    np.testing.assert_allclose(props.sum(axis=1), 1.0)
    assert list(props.argmax(axis=1)) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert np.all(props.max(axis=1) > 0.85)


def test_decisions_follow_propensities() -> None:
    pol = LinearThompson(LinearThompsonSettings(features=FEATURES, floor=0.1))
    ctx, arms, rew = _logged(900, 4)
    al = pol.allocate(pol.update(LinearStats.empty(3, pol.spec.dim), ctx, arms, rew))
    c = {"segment": "b", "recency": 0.2}
    p = al.propensities([c])[0]
    r, draws = rng(9), 8_000
    picks = [al.decide(c, r) for _ in range(draws)]
    freq = np.bincount([a for a, _ in picks], minlength=3) / draws
    assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / draws))
    assert all(q == pytest.approx(p[a]) for a, q in picks[:50])
    many, props = al.decide_many([c] * draws, r)
    np.testing.assert_allclose(props, p[many])


def test_burn_in_serves_uniformly_and_shapes_are_checked() -> None:
    pol = LinearThompson(LinearThompsonSettings(features=FEATURES, burn_in=50))
    ctx, arms, rew = _logged(60, 1)
    al = pol.allocate(pol.update(LinearStats.empty(3, pol.spec.dim), ctx, arms, rew))
    np.testing.assert_allclose(al.propensities(ctx[:4]), 1 / 3)
    with pytest.raises(PolicyError, match="dimension 4"):
        pol.allocate(LinearStats.empty(3, 4))
    with pytest.raises(PolicyError, match="floor"):
        LinearThompson(LinearThompsonSettings(features=FEATURES, floor=0.4)).allocate(
            LinearStats.empty(3, pol.spec.dim))


def test_empirical_bayes_onehot_precision_pools_alike_levels_only() -> None:
    st = LinearThompsonSettings(features=FEATURES[:1], onehot_ridge="empirical_bayes")
    pol = LinearThompson(st)
    r = rng(2)
    ctx = [{"segment": str(s)} for s in r.choice(["a", "b", "c"], 30_000)]
    arms = r.integers(0, 3, 30_000)
    alike = (r.random(30_000) < 0.05).astype(float)
    differ = np.array([r.random() < true_rate({**c, "recency": 0.0}, int(a))
                       for c, a in zip(ctx, arms)], float)
    spec = pol.spec
    lam_alike = onehot_precision(spec, *_sums(pol, ctx, arms, alike), 1.0, 0.15)
    lam_differ = onehot_precision(spec, *_sums(pol, ctx, arms, differ), 1.0, 0.15)
    assert lam_alike.shape == (3, spec.dim) and np.all(lam_alike[:, 0] == 1.0)
    assert np.all(lam_alike[:, 1:] > 500)  # tau^2 ~ 0: deviations pooled
    assert np.all(lam_differ[:, 1:] < 100)  # tau^2 ~ 5e-4: noise_sd^2 / tau^2 ~ 45
    # the policy uses them: P(best | level) follows the levels only where they differ
    al = pol.allocate(pol.update(LinearStats.empty(3, spec.dim), ctx, arms, differ))
    assert list(al.propensities([{"segment": s} for s in "abc"]).argmax(axis=1)) == [0, 1, 2]
    with pytest.raises(PolicyError, match="onehot_ridge"):
        LinearThompsonSettings(features=FEATURES, onehot_ridge="lots")


def _sums(pol: LinearThompson, ctx: list[dict[str, str]], arms: np.ndarray,
          rewards: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    st = pol.update(LinearStats.empty(3, pol.spec.dim), ctx, arms, rewards)
    return st.xtx, st.xty
