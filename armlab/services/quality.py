"""``armlab quality``: offline ranking quality of variants on MovieLens-100k.

Protocol (leave-one-out with sampled negatives, as in He et al. 2017, "Neural Collaborative
Filtering", sec. 4.1): for every user with at least 20 ratings, the last (by timestamp)
movie rated >= 4 is held out; it is ranked among 99 movies the user never rated, drawn with a
fixed seed. HR@10 is the share of users whose held-out movie is in the top 10; NDCG@10 adds
1/log2(rank + 2) for a hit at 0-based rank. Ties are broken at random (same seed), so a
constant scorer gets HR@10 = 0.10 in expectation.

The user's context is their last 10 movies rated >= 4 before the held-out one (time order);
popularity counts every rating except the held-out ones.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from armlab.adapters.data.movielens import load_movielens
from armlab.adapters.scoring.scorers import UserContext, build_scorer, render_item, render_user
from armlab.core.variants import parse_variant
from armlab.errors import ValidationFailed

BI_TITLES = {"kind": "bi_encoder", "model": "all-MiniLM-L6-v2", "item_template": "{title}",
             "user_template": "{history}"}
BI_RICH = {"kind": "bi_encoder", "model": "all-MiniLM-L6-v2",
           "item_template": "{title} ({year}): {genres}",
           "user_template": "Movies I enjoyed: {history_items}"}
LM_PROMPT = (
    "<|im_start|>system\nYou are a movie recommender. Answer only yes or no.<|im_end|>\n"
    "<|im_start|>user\nI enjoyed these movies: {user}.\n"
    "Would I enjoy the movie {item}? Answer yes or no.<|im_end|>\n<|im_start|>assistant\n"
)
LM_RERANK = {"kind": "lm_yes_no", "model": "SmolLM2-135M-Instruct",
             "item_template": "{title} ({year})", "user_template": "{history}",
             "prompt_template": LM_PROMPT, "max_length": 256, "batch_size": 20,
             "candidates_from": BI_RICH, "rerank_top": 20}
PRESETS: dict[str, dict[str, Any]] = {
    "popularity": {"kind": "popularity"},
    "bi_titles": BI_TITLES,
    "bi_rich": BI_RICH,
    "lm_rerank": LM_RERANK,
}


@dataclass
class Case:
    user: str
    history: list[dict[str, Any]]
    candidates: list[str]  # held-out first, then 99 negatives


def build_cases(ml: Any, *, seed: int = 0, min_ratings: int = 20, negatives: int = 99,
                history_len: int = 10) -> tuple[list[Case], dict[str, float]]:
    """Leave-last-positive-out cases and training popularity counts."""
    rng = np.random.default_rng(seed)
    all_ids = sorted(ml.movies, key=int)
    movies = {m: ml.movies[m].as_item() for m in all_ids}
    cases: list[Case] = []
    held: set[tuple[str, str]] = set()
    for u in sorted(ml.users, key=int):
        hist = ml.user_history(u)
        if len(hist) < min_ratings:
            continue
        pos = [n for n, (_, r, _) in enumerate(hist) if r >= 4]
        if not pos:
            continue
        last = pos[-1]
        target = hist[last][0]
        before = [hist[n][0] for n in pos[:-1]] or [i for i, _, _ in hist[:last]]
        rated = {i for i, _, _ in hist}
        pool = [m for m in all_ids if m not in rated]
        negs = rng.choice(len(pool), size=negatives, replace=False)
        cases.append(Case(u, [movies[i] for i in before[-history_len:]],
                          [target, *(pool[j] for j in negs)]))
        held.add((u, target))
    counts: dict[str, float] = {}
    for u, i in zip(ml.rating_user, ml.rating_item, strict=True):
        if (str(u), str(i)) not in held:
            counts[str(i)] = counts.get(str(i), 0.0) + 1.0
    return cases, counts


def _rank_of_first(scores: np.ndarray, rng: np.random.Generator) -> int:
    """0-based rank of scores[0] among all, ties broken uniformly at random."""
    s0 = scores[0]
    greater = int(np.sum(scores[1:] > s0))
    ties = int(np.sum(scores[1:] == s0))
    return greater + (int(rng.integers(0, ties + 1)) if ties else 0)


def _metrics(ranks: list[int]) -> dict[str, float]:
    r = np.asarray(ranks)
    return {"users": len(ranks), "hr@10": float(np.mean(r < 10)),
            "ndcg@10": float(np.mean(np.where(r < 10, 1.0 / np.log2(r + 2), 0.0)))}


def _bi_scores(variant: dict[str, Any], cases: list[Case], movies: dict[str, dict[str, Any]],
               device: str) -> list[np.ndarray]:
    """Encode every movie once and every user once; score each case's 100 candidates."""
    sc = build_scorer(variant, device=device)
    ids = list(movies)
    index = {m: n for n, m in enumerate(ids)}
    item_emb = sc.encode([render_item(sc.variant.item_template, movies[m]) for m in ids]).float()
    user_emb = sc.encode(
        [render_user(sc.variant, UserContext(history=c.history)) for c in cases]
    ).float()
    out = []
    for n, c in enumerate(cases):
        rows = item_emb[[index[m] for m in c.candidates]]
        out.append((rows @ user_emb[n]).cpu().numpy().astype(np.float64))
    return out


def run_quality(names: list[str], *, lm_users: int = 100, max_users: int = 0, seed: int = 0,
                device: str = "auto") -> dict[str, Any]:
    """HR@10 / NDCG@10 per preset; the LM reranker runs on a fixed random subsample of users."""
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        raise ValidationFailed(f"unknown quality preset(s) {unknown}; use {sorted(PRESETS)}",
                               field="variants")
    ml = load_movielens()
    cases, counts = build_cases(ml, seed=seed)
    if max_users:
        cases = cases[:max_users]
    movies = {m: ml.movies[m].as_item() for m in ml.movies}
    rng = np.random.default_rng(seed + 1)
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    bi_cache: dict[str, list[np.ndarray]] = {}

    def bi(name: str, variant: dict[str, Any]) -> list[np.ndarray]:
        key = parse_variant(variant).cache_key()
        if key not in bi_cache:
            bi_cache[key] = _bi_scores(variant, cases, movies, device)
        return bi_cache[key]

    for name in names:
        t0 = time.perf_counter()
        v = PRESETS[name]
        if v["kind"] == "popularity":
            ranks = [_rank_of_first(np.array([math.log1p(counts.get(m, 0.0))
                                              for m in c.candidates]), rng) for c in cases]
            results[name] = {**_metrics(ranks), "variant": v}
        elif v["kind"] == "bi_encoder":
            ranks = [_rank_of_first(s, rng) for s in bi(name, v)]
            results[name] = {**_metrics(ranks), "variant": v}
        else:
            results[name] = _lm_rerank(v, cases, movies, bi(name, v["candidates_from"]),
                                       lm_users, seed, device, rng)
        timings[name] = time.perf_counter() - t0
    return {"dataset": "MovieLens-100k (recbole wheel)", "users": len(cases), "negatives": 99,
            "seed": seed, "protocol": "leave last >=4 rating out; 1 held-out vs 99 unseen",
            "results": results, "seconds": timings}


def _lm_rerank(v: dict[str, Any], cases: list[Case], movies: dict[str, dict[str, Any]],
               inner: list[np.ndarray], lm_users: int, seed: int, device: str,
               rng: np.random.Generator) -> dict[str, Any]:
    cfg = parse_variant(v)
    lm = build_scorer(cfg.model_copy(update={"candidates_from": None}), device=device)
    pick = np.arange(len(cases))
    if lm_users and lm_users < len(cases):
        pick = np.sort(np.random.default_rng(seed + 2).choice(len(cases), lm_users,
                                                              replace=False))
    top_n = cfg.rerank_top
    ranks, base_ranks = [], []
    for n in pick:
        c, s = cases[n], inner[n]
        order = np.argsort(-s, kind="stable")
        base_ranks.append(_rank_of_first(s, rng))
        top = order[:top_n]
        if 0 not in top:  # held-out outside the reranked set: not a hit at any k <= top_n
            ranks.append(top_n + int(np.where(order == 0)[0][0]))
            continue
        lm_scores = lm.score(UserContext(history=c.history), [movies[c.candidates[j]]
                                                               for j in top])
        pos = int(np.where(top == 0)[0][0])
        rolled = np.concatenate([[lm_scores[pos]], np.delete(lm_scores, pos)])
        ranks.append(_rank_of_first(rolled, rng))
    return {**_metrics(ranks), "variant": v, "subsample_users": len(pick),
            "inner_on_subsample": _metrics(base_ranks)}
