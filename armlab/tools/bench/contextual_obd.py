"""``armlab bench contextual --obd``: the contextual policies and the peers on the Open Bandit
Dataset sample's user features, offline, side by side in one run.

Data: the sample's uniform-random log (``random``; every item equally likely at each position,
so the logged propensity is 1 / items exactly) of one campaign, 10,000 rows in time order; a
row is one decision over the campaign's items (the position is ignored, as in
:mod:`armlab.adapters.data.obd`), its context the four hashed user features
(``user_feature_0..3``, 3 to 9 levels each; their vocabulary is read from the log).

Protocol (progressive off-policy evaluation). The rows are cut into batches of ``batch_every``.
Before a batch every policy is fixed (learned from all earlier rows); for every row t of the
batch it gives the probability pi_t(a_t | x_t) of the item the log shows. Then every policy
learns the batch's logged (context, item, click) rows (off-policy: the logged actions, with
their propensity where the learner takes one). The IPW terms

    d_t = pi_t(a_t | x_t) r_t / p_t

have conditional mean V(pi_t), the click rate of the policy as it stood at row t, given the
past (pi_t depends on earlier rows only and the log is uniform); their average estimates the
learning policy's average value over the log, and its asymptotic confidence sequence
(:func:`armlab.core.stats.ope_estimate.cs_radius`, Waudby-Smith et al. 2024, as ``armlab ope``,
tuned at the log's length, alpha 0.05) covers it at every t. A contextual policy's gain over
non-contextual Thompson sampling gets the same sequence on the paired differences of the two
policies' terms (same rows). The logging policy's value is the log's click rate. Only click
rows have a non-zero term, so the probabilities are computed there only.

Policies: armlab ``thompson``, ``segment_thompson`` on user_feature_0 and user_feature_1
(4 x 6 = 24 segments with ``other``; its allocation's row, :func:`~armlab.core.policies.
contextual.segment_weights` restricted to the segments needed) and ``linear_thompson`` on all
four one-hot features (its ``propensities``), with their default parameters and no
exploration floor (34 to 80 items); Vowpal Wabbit ``cb_explore_adf`` (epsilon 0.05 and
SquareCB; user x item interactions; its pmf; it learns the logged cost with its propensity);
MABWiser LinTS (alpha 0.15 and 1; one-hot user features; its P(item | x) estimated by the share
of 2,000 of its draws, which adds a little Monte Carlo noise). Honest caveat: the sample has
38 to 46 clicks per campaign, fewer than one per item, so the intervals are wide; the result
says whether they overlap.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from armlab.adapters.data.obd import USER_FEATURES, load_log, load_user_contexts
from armlab.core.policies import PolicyStats, ThompsonSampling, ThompsonSettings
from armlab.core.policies.contextual import (
    BURN_IN,
    SegmentStats,
    SegmentThompson,
    SegmentThompsonSettings,
    segment_posteriors,
)
from armlab.core.policies.linear_thompson import (
    LinearStats,
    LinearThompson,
    LinearThompsonSettings,
)
from armlab.core.policies.thompson import prob_best_beta_quadrature
from armlab.core.stats.ope_estimate import cs_radius
from armlab.tools.bench.contextual import _installed

#: features of the segment policy (the two with fewest levels: 4 x 6 = 24 segments)
SEGMENT_FEATURES = USER_FEATURES[:2]


@dataclass(frozen=True)
class OBDData:
    """One campaign's uniform log: item index, click, logged propensity, contexts."""

    campaign: str
    items: np.ndarray
    clicks: np.ndarray
    propensity: np.ndarray
    contexts: list[dict[str, str]]
    n_items: int
    levels: dict[str, list[str]]

    @property
    def n(self) -> int:
        return int(self.items.shape[0])


def load_obd(campaign: str, *, base: str | Path | None = None,
             limit: int | None = None) -> OBDData:
    log = load_log("random", campaign, base=base, limit=limit)
    ctx = load_user_contexts("random", campaign, base=base, limit=limit)
    levels = {f: sorted({c[f] for c in ctx}) for f in USER_FEATURES}
    return OBDData(campaign, log.item_id.copy(), log.click.astype(np.float64),
                   log.propensity.copy(), ctx, log.n_items, levels)


def _features(data: OBDData, names: Sequence[str]) -> list[dict[str, Any]]:
    return [{"name": f, "kind": "categorical", "levels": data.levels[f]} for f in names]


def _onehot(data: OBDData) -> np.ndarray:
    """(N, sum of levels) one-hot user features (MABWiser's and VW's view)."""
    cols = []
    for f in USER_FEATURES:
        lev = {v: i for i, v in enumerate(data.levels[f])}
        m = np.zeros((data.n, len(lev)))
        m[np.arange(data.n), [lev[c[f]] for c in data.contexts]] = 1.0
        cols.append(m)
    return np.hstack(cols)


#: A policy run: (data, batch_every, seed) -> (N,) IPW terms.
Run = Callable[[OBDData, int, int], np.ndarray]


def _batches(n: int, every: int) -> list[tuple[int, int]]:
    return [(i, min(i + every, n)) for i in range(0, n, every)]


def _click_batches(data: OBDData, every: int) -> list[tuple[int, int, np.ndarray]]:
    """The batches, each with its click rows (absolute indices): only they have a non-zero
    term, so a policy's probabilities are computed there only."""
    return [(lo, hi, lo + np.flatnonzero(data.clicks[lo:hi])) for lo, hi in _batches(data.n, every)]


def _thompson(data: OBDData, every: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ts = ThompsonSampling(ThompsonSettings())
    k = data.n_items
    n, s = np.zeros(k), np.zeros(k)
    terms = np.zeros(data.n)
    for lo, hi, clicks in _click_batches(data, every):
        if clicks.size:
            w = ts.weights(PolicyStats.from_lists(n, s), rng).weights
            terms[clicks] = w[data.items[clicks]] / data.propensity[clicks]
        a, r = data.items[lo:hi], data.clicks[lo:hi]
        np.add.at(n, a, 1.0)
        np.add.at(s, a, r)
    return terms


def _segment(data: OBDData, every: int, seed: int) -> np.ndarray:
    st = SegmentThompsonSettings(features=_features(data, SEGMENT_FEATURES), floor=0.0)
    pol = SegmentThompson(st)
    k = data.n_items
    stats = SegmentStats.empty(pol.spec.n_segments, k)
    terms = np.zeros(data.n)
    for lo, hi, clicks in _click_batches(data, every):
        if clicks.size:  # the allocation's rows of the click rows' segments (segment_weights)
            a, b, source = segment_posteriors(stats.n, stats.reward_sum, st)
            for t in clicks.tolist():
                g = pol.spec.segment_index(data.contexts[t])
                w = (np.full(k, 1.0 / k) if source[g] == BURN_IN
                     else prob_best_beta_quadrature(a[g], b[g], st.grid)[0])
                terms[t] = w[data.items[t]] / data.propensity[t]
        stats = pol.update(stats, data.contexts[lo:hi], data.items[lo:hi], data.clicks[lo:hi])
    return terms


def _linear(data: OBDData, every: int, seed: int) -> np.ndarray:
    pol = LinearThompson(LinearThompsonSettings(features=_features(data, USER_FEATURES),
                                                floor=0.0))
    stats = LinearStats.empty(data.n_items, pol.spec.dim)
    terms = np.zeros(data.n)
    for lo, hi, clicks in _click_batches(data, every):
        if clicks.size:
            p = pol.allocate(stats).propensities([data.contexts[t] for t in clicks.tolist()])
            terms[clicks] = p[np.arange(clicks.size), data.items[clicks]] / data.propensity[
                clicks]
        stats = pol.update(stats, data.contexts[lo:hi], data.items[lo:hi], data.clicks[lo:hi])
    return terms


def _vw(explore: str) -> Run:
    def run(data: OBDData, every: int, seed: int) -> np.ndarray:
        import vowpalwabbit

        vw = vowpalwabbit.Workspace(
            f"--cb_explore_adf -q ua --quiet {explore} --random_seed {seed}")
        actions = [f"|a item={i}" for i in range(data.n_items)]
        shared = ["shared |u " + " ".join(f"{f[-1]}={c[f]}" for f in USER_FEATURES)
                  for c in data.contexts]
        terms = np.zeros(data.n)
        for lo, hi, clicks in _click_batches(data, every):
            for t in clicks.tolist():  # fixed for the batch: its pmf on the click rows
                pmf = np.asarray(vw.predict([shared[t], *actions]), dtype=np.float64)
                terms[t] = pmf[data.items[t]] / pmf.sum() / data.propensity[t]
            for t in range(lo, hi):
                a = int(data.items[t])
                cost = -1.0 if data.clicks[t] else 0.0
                lines = [f"0:{cost}:{data.propensity[t]} {x}" if j == a else x
                         for j, x in enumerate(actions)]
                vw.learn([shared[t], *lines])
        vw.finish()
        return terms

    return run


#: MABWiser's draws per click row to estimate its P(item | context)
MABWISER_DRAWS = 2000


def _mabwiser(alpha: float) -> Run:
    def run(data: OBDData, every: int, seed: int) -> np.ndarray:
        from mabwiser.mab import MAB, LearningPolicy

        x = _onehot(data)
        k = data.n_items
        mab = MAB(list(range(k)), LearningPolicy.LinTS(alpha=alpha, l2_lambda=1.0), seed=seed)
        terms = np.zeros(data.n)
        fitted = False
        for lo, hi, clicks in _click_batches(data, every):
            for t in clicks.tolist():  # its P(item | x): the share of its draws (uniform
                if fitted:             # before its first fit, as in the regret bench)
                    draws = np.asarray(mab.predict(np.repeat(x[t:t + 1], MABWISER_DRAWS, 0)))
                    terms[t] = float(np.mean(draws == data.items[t])) / data.propensity[t]
                else:
                    terms[t] = 1.0 / k / data.propensity[t]
            xb, a, r = x[lo:hi], data.items[lo:hi], data.clicks[lo:hi]
            (mab.partial_fit if fitted else mab.fit)(list(a), list(r), xb)
            fitted = True
        return terms

    return run


#: name -> (module it needs, or None for armlab, the run, what the term uses)
POLICIES: dict[str, tuple[str | None, Run, str]] = {
    "armlab_thompson": (None, _thompson, "exact P(item)"),
    "armlab_segment_thompson": (None, _segment, "exact P(item | segment)"),
    "armlab_linear_thompson": (None, _linear, "exact P(item | x)"),
    "vw_cb_explore_adf_epsilon0.05": ("vowpalwabbit", _vw("--epsilon 0.05"), "its pmf"),
    "vw_cb_explore_adf_squarecb": ("vowpalwabbit", _vw("--squarecb"), "its pmf"),
    "mabwiser_lints_alpha0.15": ("mabwiser", _mabwiser(0.15), "share of 2,000 of its draws"),
    "mabwiser_lints_alpha1": ("mabwiser", _mabwiser(1.0), "share of 2,000 of its draws"),
}


def _cs(terms: np.ndarray, alpha: float) -> dict[str, float]:
    n = terms.shape[0]
    mean = float(terms.mean())
    r = cs_radius(float(terms.std(ddof=1)), n, alpha, t_opt=n)
    return {"value": mean, "cs_low": mean - r, "cs_high": mean + r}


def _overlap(rows: dict[str, dict[str, Any]]) -> bool:
    ran = [r for r in rows.values() if "cs_low" in r]
    return bool(ran) and max(r["cs_low"] for r in ran) <= min(r["cs_high"] for r in ran)


def evaluate_campaign(data: OBDData, *, batch_every: int = 100, seed: int = 2026,
                      alpha: float = 0.05, policies: Sequence[str] | None = None
                      ) -> dict[str, Any]:
    """Every policy's progressive IPW value with its confidence sequence on one campaign."""
    rows: dict[str, dict[str, Any]] = {}
    terms: dict[str, np.ndarray] = {}
    for name in policies or POLICIES:
        module, run, term = POLICIES[name]
        version = _installed(module) if module else "armlab"
        if version is None:
            rows[name] = {"installed": False, "note": f"{module} is not installed "
                          "(pip install armlab[bench]); not run"}
            continue
        t0 = time.perf_counter()
        terms[name] = run(data, batch_every, seed)
        rows[name] = {"version": version, "term": term, **_cs(terms[name], alpha),
                      "clicks_credited": int(np.count_nonzero(terms[name])),
                      "elapsed_s": round(time.perf_counter() - t0, 2)}
    base = terms.get("armlab_thompson")
    if base is not None:
        for name in ("armlab_segment_thompson", "armlab_linear_thompson"):
            if name in terms:
                rows[name]["gain_over_thompson"] = _cs(terms[name] - base, alpha)
    logging = _cs(data.clicks / 1.0, alpha)
    return {"rows": data.n, "items": data.n_items, "clicks": int(data.clicks.sum()),
            "logging_policy_uniform": logging, "policies": rows,
            "intervals_overlap": _overlap(rows)}


def run_obd_bench(*, campaigns: Sequence[str] = ("all", "men", "women"),
                  base: str | Path | None = None, limit: int | None = None,
                  batch_every: int = 100, seed: int = 2026, alpha: float = 0.05,
                  policies: Sequence[str] | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    out: dict[str, Any] = {
        "bench": "contextual --obd",
        "data": "Open Bandit Dataset sample, uniform-random log (obp sdist), user_feature_0..3",
        "protocol": "progressive IPW: policy fixed per batch, learns the batch's logged rows",
        "sizes": {"batch_every": batch_every, "seed": seed, "alpha": alpha, "limit": limit},
        "segment_features": list(SEGMENT_FEATURES),
        "campaigns": {c: evaluate_campaign(load_obd(c, base=base, limit=limit),
                                           batch_every=batch_every, seed=seed, alpha=alpha,
                                           policies=policies)
                      for c in campaigns},
    }
    out["elapsed_s"] = round(time.perf_counter() - t0, 1)
    return out


__all__ = ["POLICIES", "evaluate_campaign", "load_obd", "run_obd_bench"]
