"""Monte Carlo validity and power of interleaved comparisons (``armlab simulate interleaving``).

One *cell* simulates ``reps`` interleaving experiments at once (every state is an array over
replications) through the platform's own code: the team-draft kernel
(:func:`armlab.core.interleaving.team_draft_kernel`), the credit
(:func:`armlab.core.interleaving.team_credit_kernel`), the dueling bandit's choice with its
exact pair propensities (:mod:`armlab.core.policies.dueling`), and the sequential test's
kernel (:func:`armlab.core.stats.interleaving.preference_kernel`, Holm across pairs, the
direction rule and the Condorcet winner of :func:`armlab.core.stats.interleaving.
evaluate_preferences`), looking every ``look_every`` units up to ``units`` units.

The world of a request: ``candidates`` items with relevance ~ Beta(1, 3); a ranker scores
relevance + sigma x N(0, 1) and shows its top k (10). Scenarios:

* ``self``: every ranker is the same ranker (one list, shown r times): the A/A test.
* ``identical``: different rankers whose output is identical, as short lists (length drawn
  uniformly from 1..k per request, so k exceeds the union and the draft runs out).
* ``random_clicks``: rankers of very different quality (sigma 0.05, 0.3, 1, 3) under the
  random click model: clicks ignore the items, so no ranker can be preferred.
* ``split``: two rankers that each serve one half of the users (two independent relevance
  tastes; a user's clicks follow its taste): no preference on average, but a strong one per
  user. Reported with the per-request analysis of the same data as a baseline.
* ``better``: ranker 0 (``sigma_good`` < 0.4) is better than the others (sigma 0.4, mutually
  equivalent): power, units to a decision, and the false decisions among the equivalent
  others (a partial null).

Click models, on the merged list: ``random``: each shown position is clicked with
probability 0.15 c (whatever the item); ``cascade``: the user scans from the top, clicks an
examined item with probability min(1, 2 c rel), stops after a click with probability 0.5 and
moves on after a skip with probability 0.85 (position bias through abandonment; Craswell,
Zoeter, Taylor & Ramsey 2008 and the dependent click model of Guo, Liu & Wang 2009). c is the
user's click propensity, Beta(1, 1): for ``unit: user`` one draw per user shared by its
``requests_per_user`` requests (correlated requests), for ``unit: request`` one per request.

``select`` m < r: the dueling bandit (multi-dueling Thompson sampling, exploration floor)
chooses m rankers per request, its distribution recomputed at every look from the pairwise
wins so far; outcomes are weighted by 1 / P(pair compared) (IPW).

Per cell: ``fpr`` = share of replications in which any *null* pair was decided at any look
(continuous monitoring; all pairs are null except in ``better``, where only the pairs of
equivalent rankers are, and a two-ranker ``better`` cell has none: fpr 0 by construction,
``null_pairs`` 0), its Monte Carlo standard
error sqrt(fpr (1 - fpr) / reps), and ``pass`` iff fpr <= alpha + 2 sqrt(alpha (1 - alpha) /
reps). Power cells also report the share of replications that declared ranker 0 the Condorcet
winner, the median units to that decision, and wrong winners.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from armlab.core.interleaving.team_draft import (
    draw_orders,
    pair_differences,
    pair_indices,
    team_credit_kernel,
    team_draft_kernel,
)
from armlab.core.policies.dueling import (
    exploration_epsilon,
    pair_probabilities,
    sample_sets,
    thompson_sets,
)
from armlab.core.stats.interleaving import (
    holm_adjust_many,
    preference_kernel,
    rho2_for_units,
)
from armlab.errors import StatsError

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
Scenario = Literal["self", "identical", "random_clicks", "split", "better"]
Clicks = Literal["random", "cascade"]
Unit = Literal["request", "user"]

SIGMA_SELF = 0.3
SIGMA_OTHERS = 0.4
SIGMA_SPREAD = (0.05, 0.3, 1.0, 3.0, 0.6, 2.0)


@dataclass(frozen=True)
class CellConfig:
    """One cell of the grid (module doc)."""

    scenario: Scenario = "self"
    rankers: int = 2
    select: int | None = None
    clicks: Clicks = "cascade"
    unit: Unit = "request"
    reps: int = 1000
    units: int = 4000
    look_every: int = 100
    min_units: int = 100
    requests_per_user: int = 40
    k: int = 10
    candidates: int = 20
    alpha: float = 0.05
    floor: float = 0.02
    n_draws: int = 256
    sigma_good: float = 0.1
    seed: int = 0
    name: str = ""

    def __post_init__(self) -> None:
        if self.scenario not in ("self", "identical", "random_clicks", "split", "better"):
            raise StatsError(f"unknown scenario {self.scenario!r}")
        if self.rankers < 2 or (self.scenario == "split" and self.rankers != 2):
            raise StatsError("rankers must be >= 2 (exactly 2 for split)")
        if self.select is not None and not (2 <= self.select < self.rankers):
            raise StatsError("select must lie in [2, rankers)")
        if self.clicks not in ("random", "cascade") or self.unit not in ("request", "user"):
            raise StatsError("clicks must be random|cascade and unit request|user")
        if self.reps < 1 or self.units < 1 or self.look_every < 1:
            raise StatsError("reps, units and look_every must be >= 1")
        if self.units % self.look_every:
            raise StatsError("units must be a multiple of look_every")
        if self.k < 1 or self.candidates < self.k:
            raise StatsError("need 1 <= k <= candidates")

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        who = f"{self.select} of {self.rankers}" if self.select else f"{self.rankers}"
        return f"{self.scenario} r={who} {self.clicks} {self.unit}"

    @property
    def n_pairs(self) -> int:
        return self.rankers * (self.rankers - 1) // 2


def _seed(cfg: CellConfig) -> np.random.Generator:
    key = f"{cfg.label}|{cfg.seed}".encode()
    return np.random.default_rng([cfg.seed, zlib.crc32(key)])


def _beta13(rng: np.random.Generator, shape: tuple[int, int]) -> FloatArray:
    """Beta(1, 3) by inversion (F(x) = 1 - (1 - x)^3): faster than rng.beta."""
    return np.asarray(1.0 - np.cbrt(rng.random(shape)), dtype=np.float64)


def _top_k(scores: FloatArray, k: int) -> npt.NDArray[np.int64]:
    """The k best items per (row, ranker), best first."""
    part = np.argpartition(-scores, k - 1, axis=2)[:, :, :k]
    top = np.take_along_axis(scores, part, axis=2)
    return np.asarray(np.take_along_axis(part, np.argsort(-top, axis=2), axis=2), np.int64)


def _world(cfg: CellConfig, rng: np.random.Generator, rows: int, c: FloatArray
           ) -> tuple[npt.NDArray[np.int64], FloatArray, FloatArray]:
    """(lists (rows, r, k), click relevance (rows, N), click propensity (rows,))."""
    n, r, k = cfg.candidates, cfg.rankers, cfg.k
    rel = _beta13(rng, (rows, n))
    if cfg.scenario == "split":
        other = _beta13(rng, (rows, n))
        noise = rng.standard_normal((rows, 2, n))
        scores = np.stack([rel, other], axis=1) + 0.2 * noise
        lists = _top_k(scores, k)
        # the user's taste: c > 0.5 follows ranker 0's relevance, else ranker 1's (the
        # propensity and the taste come from the same per-user draw, so both are per user)
        taste = c > 0.5
        click_rel = np.where(taste[:, None], rel, other)
        c = np.where(taste, 2.0 * (c - 0.5), 2.0 * c)
        return lists.astype(np.int64), click_rel, c
    if cfg.scenario in ("self", "identical"):
        scores = rel[:, None, :] + SIGMA_SELF * rng.standard_normal((rows, 1, n))
        scores = np.broadcast_to(scores, (rows, r, n))
    else:
        sig = (np.asarray(SIGMA_SPREAD[:r]) if cfg.scenario == "random_clicks"
               else np.asarray([cfg.sigma_good] + [SIGMA_OTHERS] * (r - 1)))
        scores = rel[:, None, :] + sig[None, :, None] * rng.standard_normal((rows, r, n))
    lists = _top_k(scores, k)
    if cfg.scenario == "identical":
        length = rng.integers(1, k + 1, size=rows)
        lists = np.where(np.arange(k)[None, None, :] < length[:, None, None], lists, -1)
    return lists, rel, c


def _clicks(cfg: CellConfig, rng: np.random.Generator, shown: npt.NDArray[np.int64],
            rel: FloatArray, c: FloatArray) -> FloatArray:
    rows, k = shown.shape
    valid = shown >= 0
    if cfg.clicks == "random":
        return np.asarray(valid & (rng.random((rows, k)) < 0.15 * c[:, None]), np.float64)
    r_shown = np.where(valid, np.take_along_axis(rel, np.maximum(shown, 0), axis=1), 0.0)
    u1, u2 = rng.random((rows, k)), rng.random((rows, k))
    exam = np.ones(rows, dtype=bool)
    out = np.zeros((rows, k))
    for i in range(k):
        cl = exam & valid[:, i] & (u1[:, i] < np.minimum(1.0, 2.0 * c * r_shown[:, i]))
        out[:, i] = cl
        exam &= np.where(cl, u2[:, i] >= 0.5, u2[:, i] < 0.85)
    return out


class _Analysis:
    """Running always-valid state of one analysis (per replication, per pair)."""

    def __init__(self, cfg: CellConfig, planned_units: int, min_units: int,
                 null_pairs: BoolArray) -> None:
        reps, pairs = cfg.reps, cfg.n_pairs
        self.alpha, self.min_units = cfg.alpha, min_units
        self.rho2 = rho2_for_units(planned_units, cfg.alpha)
        self.n = np.zeros((reps, pairs))
        self.s = np.zeros((reps, pairs))
        self.ss = np.zeros((reps, pairs))
        self.p = np.ones((reps, pairs))
        self.direction = np.zeros((reps, pairs))
        self.decided = np.zeros((reps, pairs))  # +1 a better, -1 b better, 0 undecided
        self.null_pairs = null_pairs
        self.false = np.zeros(reps, dtype=bool)
        self.winner = np.full(reps, -1)
        self.units_at_winner = np.full(reps, np.nan)
        self.pairs = pair_indices(cfg.rankers)
        self.r = cfg.rankers

    def add(self, x: FloatArray) -> None:
        """x: (reps, units, pairs) per-unit preferences (NaN = not compared)."""
        ok = ~np.isnan(x)
        xx = np.where(ok, x, 0.0)
        self.n += ok.sum(axis=1)
        self.s += xx.sum(axis=1)
        self.ss += (xx * xx).sum(axis=1)

    def look(self, units: int) -> None:
        d, _, _, llr, ok = preference_kernel(self.n, self.s, self.ss, rho2=self.rho2,
                                             min_units=self.min_units)
        p_now = np.exp(-np.maximum(llr, 0.0))
        lower = ok & (p_now < self.p) & (d != 0.0)
        self.direction = np.where(lower, np.sign(d), self.direction)
        self.p = np.minimum(self.p, p_now)
        adj = holm_adjust_many(self.p)
        new = (self.decided == 0) & (adj <= self.alpha) & (self.direction != 0)
        self.decided = np.where(new, self.direction, self.decided)
        self.false |= ((self.decided != 0) & self.null_pairs[None, :]).any(axis=1)
        # Condorcet winner: a ranker decided better than every other
        beats = np.zeros((self.decided.shape[0], self.r), dtype=np.int64)
        for col, (i, j) in enumerate(self.pairs):
            beats[:, i] += self.decided[:, col] > 0
            beats[:, j] += self.decided[:, col] < 0
        has = (beats == self.r - 1).any(axis=1) & (self.winner < 0)
        self.winner = np.where(has, beats.argmax(axis=1), self.winner)
        self.units_at_winner = np.where(has, units, self.units_at_winner)

    def summary(self, reps: int, alpha: float, power: bool) -> dict[str, Any]:
        fpr = float(self.false.mean())
        se = math.sqrt(fpr * (1 - fpr) / reps)
        limit = alpha + 2 * math.sqrt(alpha * (1 - alpha) / reps)
        out: dict[str, Any] = {"fpr": round(fpr, 4), "fpr_se": round(se, 4),
                               "limit": round(limit, 4), "pass": fpr <= limit,
                               "null_pairs": int(self.null_pairs.sum())}
        if power:
            right = self.winner == 0
            out["power"] = round(float(right.mean()), 4)
            out["wrong_winner"] = round(float(((self.winner > 0)).mean()), 4)
            out["median_units_to_decision"] = (float(np.median(self.units_at_winner[right]))
                                               if right.any() else None)
            # median over all replications (undecided = beyond the horizon)
            at = np.where(right, self.units_at_winner, np.inf)
            med = float(np.median(at))
            out["median_units_all"] = med if math.isfinite(med) else None
        return out


def _draft(cfg: CellConfig, rng: np.random.Generator, wins: npt.NDArray[np.float64],
           rows: int, rounds: int, rep_of_row: npt.NDArray[np.int64], eps: float
           ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_],
                      npt.NDArray[np.float64] | None]:
    """Each request's draft order (rows, rounds, rankers in it), which pairs it compares and,
    when the dueling bandit chooses the rankers, P(pair compared) per row (else None)."""
    r = cfg.rankers
    if not cfg.select:
        order = draw_orders(rng, rows, rounds, r)
        return order, np.ones((rows, len(pair_indices(r))), dtype=bool), None
    m = cfg.select
    iu, ju = np.triu_indices(r, 1)
    sets = thompson_sets(wins, m, cfg.n_draws, rng)
    prob = pair_probabilities(sets, r, eps)  # (reps, P)
    chosen = sample_sets(sets, eps, r, rows, rng, rows=rep_of_row)  # (rows, m)
    perm = draw_orders(rng, rows, rounds, m)
    order = np.take_along_axis(np.broadcast_to(chosen[:, None, :], perm.shape), perm, axis=2)
    member = (chosen[:, :, None] == np.arange(r)[None, None, :]).any(axis=1)
    return order, member[:, iu] & member[:, ju], prob[rep_of_row]


def _record_wins(wins: npt.NDArray[np.float64], d: npt.NDArray[np.float64],
                 compared: npt.NDArray[np.bool_], pairs: list[tuple[int, int]],
                 rep_of_row: npt.NDArray[np.int64]) -> None:
    """Add each compared request's winner to the dueling bandit's win counts (in place)."""
    won = (d > 0) & compared
    lost = (d < 0) & compared
    for col, (i, j) in enumerate(pairs):
        np.add.at(wins[:, i, j], rep_of_row, won[:, col])
        np.add.at(wins[:, j, i], rep_of_row, lost[:, col])


def run_cell(cfg: CellConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Simulate one cell (module doc); returns JSON-ready figures."""
    t0 = time.perf_counter()
    rng = _seed(cfg)
    reps, r, k = cfg.reps, cfg.rankers, cfg.k
    pairs = pair_indices(r)
    n_pairs = len(pairs)
    power = cfg.scenario == "better"
    null_pairs = np.asarray([not (power and 0 in pr) for pr in pairs])
    per_unit = cfg.requests_per_user if cfg.unit == "user" else 1
    main = _Analysis(cfg, cfg.units, cfg.min_units, null_pairs)
    per_request = (_Analysis(cfg, cfg.units * per_unit, cfg.min_units * per_unit, null_pairs)
                   if cfg.unit == "user" else None)
    wins = np.zeros((reps, r, r))
    m = cfg.select or r
    eps = exploration_epsilon(r, m, cfg.floor) if cfg.select else 0.0
    requests = cfg.look_every * per_unit  # per replication per look
    # Draft rounds: every ranker's list has k items except in ``identical`` (short lists), so
    # until the list is full no ranker runs dry and each round drafts m items.
    rounds = k if cfg.scenario == "identical" else -(-k // m)
    rows = reps * requests
    rep_of_row = np.repeat(np.arange(reps), requests)
    for look in range(cfg.units // cfg.look_every):
        # click propensity: per user (shared by its requests) or per request
        c_unit = rng.beta(1.0, 1.0, size=(reps, cfg.look_every))
        c = np.repeat(c_unit.reshape(-1), per_unit)
        lists, rel, c = _world(cfg, rng, rows, c)
        order, compared, pi = _draft(cfg, rng, wins, rows, rounds, rep_of_row, eps)
        shown, team, _, _ = team_draft_kernel(lists, order, k, n_items=cfg.candidates)
        clicks = _clicks(cfg, rng, shown, rel, c)
        d = pair_differences(team_credit_kernel(team, clicks, r), r)
        if pi is not None:
            z = np.where(compared, d / pi, 0.0)  # IPW: every request is a unit term
            counted = np.ones_like(z, dtype=bool)
        else:
            z, counted = d, compared
        z3 = np.where(counted, z, np.nan).reshape(reps, cfg.look_every, per_unit, n_pairs)
        if cfg.unit == "user":
            x = np.nanmean(z3, axis=2) if pi is None else z3.mean(axis=2)
            main.add(x)
            assert per_request is not None
            per_request.add(z3.reshape(reps, requests, n_pairs))
        else:
            main.add(z3[:, :, 0, :])
        units = (look + 1) * cfg.look_every
        main.look(units)
        if per_request is not None:
            per_request.look(units * per_unit)
        if cfg.select:
            _record_wins(wins, d, compared, pairs, rep_of_row)
    out: dict[str, Any] = {"cell": {**asdict(cfg), "label": cfg.label},
                           "analysis": main.summary(reps, cfg.alpha, power)}
    if per_request is not None:
        out["per_request_baseline"] = per_request.summary(reps, cfg.alpha, power)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    if progress is not None:
        a = out["analysis"]
        progress(f"{cfg.label}: fpr {a['fpr']:.3f} ± {a['fpr_se']:.3f} "
                 f"({'PASS' if a['pass'] else 'FAIL'}) in {out['seconds']} s")
    return out
