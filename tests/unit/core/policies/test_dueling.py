"""Multi-dueling Thompson sampling: exact pair propensities (the served sets come from the
same draws), the exploration floor, concentration on the Condorcet winner, updates."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest

from armlab.core.policies.dueling import (
    DuelingSettings,
    DuelingStats,
    choose_rankers,
    exploration_epsilon,
    pair_probabilities,
    ranker_distribution,
    sample_sets,
    thompson_sets,
)
from armlab.errors import PolicyError

RANKERS = ("a", "b", "c", "d", "e")


def _stats(strength: list[float], n: int = 60) -> DuelingStats:
    """Wins from a Bradley-Terry model: i beats j in n strength_i/(strength_i+strength_j)."""
    r = len(strength)
    w = np.zeros((r, r))
    for i, j in itertools.permutations(range(r), 2):
        w[i, j] = round(n * strength[i] / (strength[i] + strength[j]))
    return DuelingStats(RANKERS[:r], w)


def test_pair_probabilities_are_exact_for_the_served_sets() -> None:
    rng = np.random.default_rng(1)
    stats = _stats([3.0, 1.5, 1.2, 1.0, 1.0])
    settings = DuelingSettings(max_per_request=3, floor=0.02, n_draws=400)
    dist = ranker_distribution(stats, settings, rng)
    m, r = 3, 5
    # the probabilities add up to the pairs a set holds, and respect the floor
    assert sum(dist.pair_prob.values()) == pytest.approx(m * (m - 1) / 2)
    assert min(dist.pair_prob.values()) >= 0.02 - 1e-12
    assert dist.epsilon == pytest.approx(0.02 * r * (r - 1) / (m * (m - 1)))
    # exact: the pair probability is a finite mixture of the stored draws; enumerate it
    uniform = m * (m - 1) / (r * (r - 1))
    for (x, y), p in dist.pair_prob.items():
        i, j = RANKERS.index(x), RANKERS.index(y)
        share = np.mean([(i in s) and (j in s) for s in dist.sets.tolist()])
        assert p == pytest.approx((1 - dist.epsilon) * share + dist.epsilon * uniform,
                                  abs=1e-12)
    # set probabilities sum to one over all m-subsets
    total = sum(dist.set_probability(c) for c in itertools.combinations(RANKERS, m))
    assert total == pytest.approx(1.0, abs=1e-12)
    # and what choose_rankers serves follows them (Monte Carlo check, 4 SE)
    n = 20_000
    seen = Counter()
    for _ in range(n):
        choice = choose_rankers(dist, rng)
        assert choice.pair_prob == dist.pair_prob
        assert choice.set_prob == pytest.approx(dist.set_probability(choice.chosen))
        for pair in choice.compared():
            seen[pair] += 1
    for pair, p in dist.pair_prob.items():
        assert abs(seen[pair] / n - p) <= 4 * math.sqrt(p * (1 - p) / n) + 1e-9


def test_thompson_concentrates_on_the_condorcet_winner_but_keeps_every_pair() -> None:
    rng = np.random.default_rng(2)
    dist = ranker_distribution(_stats([4.0, 1.0, 1.0, 1.0], n=200),
                               DuelingSettings(max_per_request=2, floor=0.01), rng)
    with_a = sum(p for (x, _), p in dist.pair_prob.items() if x == "a")
    assert with_a > 0.9  # a (the Condorcet winner) is in almost every request
    assert min(dist.pair_prob.values()) >= 0.01 - 1e-12
    # no data: the posterior is symmetric, every pair about equally likely
    flat = ranker_distribution(DuelingStats.empty("abcd"), DuelingSettings(n_draws=4000), rng)
    assert all(abs(p - 1 / 6) < 0.03 for p in flat.pair_prob.values())


def test_kernels_vectorised_over_experiments() -> None:
    rng = np.random.default_rng(3)
    wins = np.stack([_stats([2.0, 1.0, 1.0, 1.0]).wins, np.zeros((4, 4))])
    sets = thompson_sets(wins, 2, 100, rng)
    assert sets.shape == (2, 100, 2) and (sets[:, :, 0] < sets[:, :, 1]).all()
    probs = pair_probabilities(sets, 4, 0.12)
    assert probs.shape == (2, 6) and np.allclose(probs.sum(axis=1), 1.0)
    picks = sample_sets(sets, 0.12, 4, 1000, rng, rows=np.repeat([0, 1], 500))
    assert picks.shape == (1000, 2) and (picks[:, 0] < picks[:, 1]).all()


def test_all_rankers_fit_and_bad_settings() -> None:
    rng = np.random.default_rng(0)
    dist = ranker_distribution(DuelingStats.empty("abc"), DuelingSettings(max_per_request=3),
                               rng)
    choice = choose_rankers(dist, rng)
    assert choice.chosen == ("a", "b", "c") and set(choice.pair_prob.values()) == {1.0}
    assert choice.set_prob == 1.0
    assert exploration_epsilon(4, 2, 1 / 6) == pytest.approx(1.0)
    with pytest.raises(PolicyError, match="floor"):
        exploration_epsilon(4, 2, 0.2)
    with pytest.raises(PolicyError, match="max_per_request"):
        DuelingSettings(max_per_request=1)
    with pytest.raises(PolicyError, match="distinct"):
        DuelingStats(("a", "a"), np.zeros((2, 2)))


def test_record_counts_wins_and_ignores_ties() -> None:
    st = DuelingStats.empty("abc").record({("a", "b"): 2.0, ("a", "c"): -1.0, ("b", "c"): 0.0})
    assert st.wins.tolist() == [[0, 1, 0], [0, 0, 0], [1, 0, 0]]
    with pytest.raises(PolicyError, match="unknown ranker"):
        st.record({("a", "z"): 1.0})
