"""Multi-dueling Thompson sampling: which rankers enter an interleaved request.

With more rankers than one merged list can fairly hold (``max_per_request`` = m < R), each
request multileaves only m of them. Which m is a bandit problem over pairwise preferences
(Yue, Broder, Kleinberg & Joachims 2012, the dueling bandit; Brost, Seldin, Cox & Lioma,
"Multi-dueling bandits and their application to online ranker evaluation", CIKM 2016; Sui,
Zhuang, Burdick & Yue, "Multi-dueling bandits with dependent arms", UAI 2017, whose
SelfSparring draws every slot from a posterior). armlab's rule:

* Posteriors: for every pair (i, j), theta_ij = P(i beats j in an impression that compares
  them) ~ Beta(prior + W_ij, prior + W_ji), W_ij = impressions where i's team got more clicks
  than j's (ties add nothing); theta_ji = 1 - theta_ij (as in Double Thompson Sampling, Wu &
  Liu, NeurIPS 2016).
* One Thompson draw: sample every theta_ij, score each ranker by its sampled Copeland score
  (the number of rankers it beats, theta_ij > 1/2) with its sampled Borda score (the mean
  theta_ij) breaking ties, and take the m best: the likely Condorcet winner and its closest
  challengers.
* Exploration floor: with probability epsilon the request takes a uniformly random m-subset
  instead, so every pair is compared with probability at least
  ``floor`` = epsilon m (m - 1) / (R (R - 1)).

Exact propensities. The allocator computes the distribution once per cadence from
``n_draws`` Thompson draws (:func:`ranker_distribution`); each request then takes one of
those *same* draws uniformly at random (or, with probability epsilon, a uniform subset) in
:func:`choose_rankers`. The probability that the request compares a pair is therefore exactly

    P(i, j compared) = (1 - epsilon) (draws containing i and j) / n_draws
                       + epsilon m (m - 1) / (R (R - 1)),

not a Monte Carlo estimate of it, which is what the inverse-propensity weights of
:func:`armlab.core.stats.interleaving.unit_preferences` need (an estimate of a propensity
with error e would bias the weighted outcome by a factor 1 + O(e); here e = 0). n_draws only
sets how closely the served distribution follows the posterior (default 2,000).

What to log per request: the chosen rankers, the probability of each compared pair
(:attr:`RankerChoice.pair_prob`) and of the set, and the distribution's version.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import numpy.typing as npt

from armlab.errors import PolicyError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Pair = tuple[str, str]


@dataclass(frozen=True)
class DuelingSettings:
    """max_per_request: m, the rankers per request; floor: the smallest probability of any
    pair being compared (sets epsilon); n_draws: Thompson draws per distribution; prior: the
    Beta prior's pseudo-counts per side."""

    max_per_request: int = 2
    floor: float = 0.02
    n_draws: int = 2000
    prior: float = 1.0

    def __post_init__(self) -> None:
        if self.max_per_request < 2:
            raise PolicyError(f"max_per_request must be >= 2, got {self.max_per_request}",
                              [("max_per_request", "must be >= 2")])
        if not (0.0 < self.floor < 1.0):
            raise PolicyError(f"floor must lie in (0, 1), got {self.floor}",
                              [("floor", "must lie in (0, 1)")])
        if self.n_draws < 1:
            raise PolicyError(f"n_draws must be >= 1, got {self.n_draws}",
                              [("n_draws", "must be >= 1")])
        if not (self.prior > 0.0 and math.isfinite(self.prior)):
            raise PolicyError(f"prior must be positive, got {self.prior}",
                              [("prior", "must be positive")])


def exploration_epsilon(rankers: int, m: int, floor: float) -> float:
    """epsilon giving every pair probability >= floor: floor R (R - 1) / (m (m - 1)).

    Raises when the floor cannot be met (a uniform m-subset compares a given pair with
    probability m (m - 1) / (R (R - 1)); the floor cannot exceed it)."""
    if m >= rankers:
        return 0.0
    eps = floor * rankers * (rankers - 1) / (m * (m - 1))
    if eps > 1.0:
        top = m * (m - 1) / (rankers * (rankers - 1))
        raise PolicyError(f"floor {floor} is above what uniform subsets give ({top:.4g} for "
                          f"{m} of {rankers} rankers)", [("floor", f"must be <= {top:.4g}")])
    return eps


# ---------------------------------------------------------------------------------------------
# Vectorised kernel


def thompson_sets(
    wins: npt.ArrayLike,
    m: int,
    n_draws: int,
    rng: np.random.Generator,
    *,
    prior: float = 1.0,
) -> IntArray:
    """(B, n_draws, m) ranker indices: the m best rankers of each Thompson draw.

    wins: (B, R, R) with wins[b, i, j] = impressions where i beat j (diagonal ignored).
    Scores: sampled Copeland count + sampled Borda mean / R (ties of both: random).
    """
    w = np.asarray(wins, dtype=np.float64)
    if w.ndim == 2:
        w = w[None]
    b, r, _ = w.shape
    iu, ju = np.triu_indices(r, 1)
    a = prior + w[:, iu, ju]  # (B, P)
    c = prior + w[:, ju, iu]
    theta = rng.beta(a[:, None, :], c[:, None, :], size=(b, n_draws, iu.size))
    mat = np.full((b, n_draws, r, r), 0.5)
    mat[:, :, iu, ju] = theta
    mat[:, :, ju, iu] = 1.0 - theta
    idx = np.arange(r)
    mat[:, :, idx, idx] = 0.5
    copeland = (mat > 0.5).sum(axis=3)
    borda = (mat.sum(axis=3) - 0.5) / max(r - 1, 1)
    score = copeland + borda / r + 1e-9 * rng.random((b, n_draws, r))
    top = np.argsort(-score, axis=2, kind="stable")[:, :, :m]
    return np.asarray(np.sort(top, axis=2), dtype=np.int64)


def pair_probabilities(sets: IntArray, rankers: int, epsilon: float) -> FloatArray:
    """(B, P) exact P(pair compared) of the mixture: uniform over the draws in ``sets``
    (B, n_draws, m) with probability 1 - epsilon, a uniform m-subset with epsilon. Pairs in
    :func:`armlab.core.interleaving.pair_indices` order (i < j, lexicographic)."""
    s = np.asarray(sets, dtype=np.int64)
    m = s.shape[2]
    member = (s[:, :, :, None] == np.arange(rankers)[None, None, None, :]).any(axis=2)
    iu, ju = np.triu_indices(rankers, 1)
    both = (member[:, :, iu] & member[:, :, ju]).mean(axis=1)
    uniform = m * (m - 1) / (rankers * (rankers - 1)) if rankers > 1 else 1.0
    return np.asarray((1.0 - epsilon) * both + epsilon * uniform, dtype=np.float64)


def sample_sets(sets: IntArray, epsilon: float, rankers: int, n: int,
                rng: np.random.Generator, rows: npt.ArrayLike | None = None) -> IntArray:
    """(n, m) sets for n requests: each from a uniformly chosen draw of its row of ``sets``
    (rows: which of the B distributions each request uses; default row 0), or with
    probability epsilon a uniform m-subset."""
    s = np.asarray(sets, dtype=np.int64)
    m = s.shape[2]
    row = np.zeros(n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    pick = s[row, rng.integers(0, s.shape[1], size=n)]
    explore = rng.random(n) < epsilon
    if explore.any():
        uni = np.sort(rng.random((int(explore.sum()), rankers)).argsort(axis=1)[:, :m], axis=1)
        pick = pick.copy()
        pick[explore] = uni
    return pick


# ---------------------------------------------------------------------------------------------
# The per-experiment API


@dataclass(frozen=True)
class DuelingStats:
    """Pairwise outcomes so far: wins[i][j] = impressions where ranker i beat ranker j."""

    rankers: tuple[str, ...]
    wins: FloatArray

    def __post_init__(self) -> None:
        w = np.asarray(self.wins, dtype=np.float64)
        r = len(self.rankers)
        if len(set(self.rankers)) != r or r < 2:
            raise PolicyError(f"need two or more distinct rankers, got {list(self.rankers)!r}")
        if w.shape != (r, r) or not np.all(np.isfinite(w)) or np.any(w < 0):
            raise PolicyError(f"wins must be a non-negative finite {r}x{r} matrix")
        object.__setattr__(self, "wins", w)

    @classmethod
    def empty(cls, rankers: Sequence[str]) -> DuelingStats:
        return cls(tuple(str(r) for r in rankers), np.zeros((len(rankers), len(rankers))))

    def record(self, outcomes: Mapping[Pair, float]) -> DuelingStats:
        """Add one impression's pair outcomes ((a, b) -> credit_a - credit_b; only the pairs
        it compared). A positive difference is a win of a, a negative one of b."""
        idx = {k: i for i, k in enumerate(self.rankers)}
        w = self.wins.copy()
        for (a, b), d in outcomes.items():
            if a not in idx or b not in idx:
                raise PolicyError(f"unknown ranker in pair ({a}, {b})")
            if d > 0:
                w[idx[a], idx[b]] += 1
            elif d < 0:
                w[idx[b], idx[a]] += 1
        return DuelingStats(self.rankers, w)


@dataclass(frozen=True)
class RankerDistribution:
    """The choice distribution computed once per cadence (a snapshot the API serves from).

    sets: the n_draws Thompson sets (indices into ``rankers``); epsilon: the share of uniform
    subsets; pair_prob: exact P(pair compared) per pair (a, b) in ranker order.
    """

    rankers: tuple[str, ...]
    m: int
    sets: IntArray
    epsilon: float
    pair_prob: dict[Pair, float]

    def set_probability(self, chosen: Sequence[str]) -> float:
        """Exact P(this set) under the distribution."""
        idx = sorted(self.rankers.index(c) for c in chosen)
        if len(idx) != self.m:
            return 0.0
        share = float(np.all(self.sets == np.asarray(idx)[None, :], axis=1).mean())
        return (1.0 - self.epsilon) * share + self.epsilon / math.comb(len(self.rankers), self.m)


@dataclass(frozen=True)
class RankerChoice:
    """One request's rankers and the exact probabilities to log with it.

    chosen: the rankers to multileave (in ranker order); pair_prob: P(pair compared) for
    every pair (a, b) (the compared ones' inverse is their IPW weight); set_prob: P(this set).
    """

    chosen: tuple[str, ...]
    pair_prob: dict[Pair, float]
    set_prob: float

    def compared(self) -> list[Pair]:
        return [p for p in self.pair_prob if p[0] in self.chosen and p[1] in self.chosen]


def ranker_distribution(stats: DuelingStats, settings: DuelingSettings,
                        rng: np.random.Generator) -> RankerDistribution:
    """The multi-dueling Thompson distribution over m-subsets (module doc)."""
    r = len(stats.rankers)
    m = min(settings.max_per_request, r)
    pairs = list(combinations(stats.rankers, 2))
    if m >= r:
        sets = np.tile(np.arange(r), (1, 1)).astype(np.int64)
        return RankerDistribution(stats.rankers, m, sets, 0.0, dict.fromkeys(pairs, 1.0))
    eps = exploration_epsilon(r, m, settings.floor)
    sets = thompson_sets(stats.wins, m, settings.n_draws, rng, prior=settings.prior)
    probs = pair_probabilities(sets, r, eps)[0]
    return RankerDistribution(stats.rankers, m, sets[0], eps,
                              {p: float(x) for p, x in zip(pairs, probs, strict=True)})


def choose_rankers(dist: RankerDistribution, rng: np.random.Generator) -> RankerChoice:
    """Draw one request's rankers from ``dist`` (exact propensities; module doc)."""
    r = len(dist.rankers)
    pick = sample_sets(dist.sets[None, :, :], dist.epsilon, r, 1, rng)[0]
    chosen = tuple(dist.rankers[i] for i in sorted(int(x) for x in pick))
    return RankerChoice(chosen, dict(dist.pair_prob), dist.set_probability(chosen))
