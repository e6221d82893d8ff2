"""``armlab quality``: offline ranking quality of variants on MovieLens-100k.

Protocols. For every user with at least 20 ratings, the last (by timestamp) movie rated >= 4 is
held out. *Sampled*: it is ranked among 99 movies the user never rated, drawn with a fixed seed
(leave-one-out with sampled negatives, He et al. 2017, "Neural Collaborative Filtering",
sec. 4.1). *Full*: it is ranked among every movie the user never rated (no sampling; Krichene &
Rendle 2020, "On Sampled Metrics for Item Recommendation", show sampled metrics can reorder
models). HR@10 is the share of users whose held-out movie is in the top 10; NDCG@10 adds
1/log2(rank + 2) for a hit at 0-based rank. Ties are broken at random (same seed), so a
constant scorer gets HR@10 = 0.10 under the sampled protocol in expectation.

Honest tuning. Users are split at random (fixed seed) into a validation share and the
evaluation users. A variant's free weight (the ``prior`` weight of a blended variant) is chosen
on the validation users only, by NDCG@10 under the sampled protocol, from a fixed grid; every
reported figure is on the evaluation users.

The user's context is their last 10 movies rated >= 4 before the held-out one (time order);
popularity counts every rating except the held-out ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from armlab.adapters.data.movielens import load_movielens
from armlab.adapters.scoring.scorers import UserContext, build_scorer, catalog_score_matrix
from armlab.core.catalog import CatalogView
from armlab.core.variants import parse_variant
from armlab.errors import ValidationFailed

BI_TITLES = {"kind": "bi_encoder", "model": "all-MiniLM-L6-v2", "item_template": "{title}",
             "user_template": "{history}"}
BI_RICH = {"kind": "bi_encoder", "model": "all-MiniLM-L6-v2",
           "item_template": "{title} ({year}): {genres}",
           "user_template": "Movies I enjoyed: {history_items}"}
# The cheap user tower: the mean of the history items' cached vectors (no user text encoded).
BI_MEAN = {**BI_RICH, "user_tower": "history_mean"}
LM_PROMPT = (
    "<|im_start|>system\nYou are a movie recommender. Answer only yes or no.<|im_end|>\n"
    "<|im_start|>user\nI enjoyed these movies: {user}.\n"
    "Would I enjoy the movie {item}? Answer yes or no.<|im_end|>\n<|im_start|>assistant\n"
)
LM_RERANK = {"kind": "lm_yes_no", "model": "SmolLM2-135M-Instruct",
             "item_template": "{title} ({year})", "user_template": "{history}",
             "prompt_template": LM_PROMPT, "max_length": 256, "batch_size": 20,
             "candidates_from": BI_RICH, "rerank_top": 20}
TUNE = "tune"  # a prior weight chosen on the validation users
WEIGHT_GRID = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
POP_PRIOR: dict[str, Any] = {"variant": {"kind": "popularity"}, "weight": TUNE}
PRESETS: dict[str, dict[str, Any]] = {
    "popularity": {"kind": "popularity"},
    "bi_titles": BI_TITLES,
    "bi_rich": BI_RICH,
    "bi_mean": BI_MEAN,
    "bi_rich_pop": {**BI_RICH, "prior": POP_PRIOR},
    "bi_mean_pop": {**BI_MEAN, "prior": POP_PRIOR},
    "lm_rerank": LM_RERANK,
    "lm_rerank_pop": {**LM_RERANK, "candidates_from": {**BI_RICH, "prior": POP_PRIOR},
                      "prior": POP_PRIOR},
}
DEFAULT_PRESETS = ("popularity", "bi_titles", "bi_rich", "bi_mean", "bi_rich_pop",
                   "bi_mean_pop", "lm_rerank", "lm_rerank_pop")


@dataclass
class Case:
    user: str
    history: list[dict[str, Any]]
    candidates: list[str]  # held-out first, then 99 negatives
    unseen: list[str]  # every movie the user never rated (the full protocol's negatives)


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
                          [target, *(pool[j] for j in negs)], pool))
        held.add((u, target))
    counts: dict[str, float] = {}
    for u, i in zip(ml.rating_user, ml.rating_item, strict=True):
        if (str(u), str(i)) not in held:
            counts[str(i)] = counts.get(str(i), 0.0) + 1.0
    return cases, counts


def split_users(n: int, val_share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(validation, evaluation) case indices: a seeded random split, both sorted."""
    if not 0.0 < val_share < 1.0:
        raise ValidationFailed("val_share must be in (0, 1)", field="val_share")
    perm = np.random.default_rng(seed + 7).permutation(n)
    n_val = max(1, int(round(n * val_share)))
    return np.sort(perm[:n_val]), np.sort(perm[n_val:])


def _rank_of_first(scores: np.ndarray, rng: np.random.Generator) -> int:
    """0-based rank of scores[0] among all, ties broken uniformly at random."""
    s0 = scores[0]
    greater = int(np.sum(scores[1:] > s0))
    ties = int(np.sum(scores[1:] == s0))
    return greater + (int(rng.integers(0, ties + 1)) if ties else 0)


def _metrics(ranks: list[int] | np.ndarray) -> dict[str, float]:
    r = np.asarray(ranks)
    return {"users": len(r), "hr@10": float(np.mean(r < 10)),
            "ndcg@10": float(np.mean(np.where(r < 10, 1.0 / np.log2(r + 2), 0.0)))}


class _Scores:
    """Per case, the scores of its candidates under both protocols: ``sampled[n]`` over the
    100 sampled candidates and ``full[n]`` over the held-out movie plus every unseen movie
    (the held-out movie first in both)."""

    def __init__(self, sampled: list[np.ndarray], full: list[np.ndarray]) -> None:
        self.sampled, self.full = sampled, full

    def blend(self, prior: _Scores, weight: float) -> _Scores:
        """own + weight * prior (the ``prior`` of a variant, as BlendScorer computes it)."""
        return _Scores([a + weight * b for a, b in zip(self.sampled, prior.sampled, strict=True)],
                       [a + weight * b for a, b in zip(self.full, prior.full, strict=True)])


@dataclass
class _Data:
    cases: list[Case]
    counts: dict[str, float]
    movies: dict[str, dict[str, Any]]
    ids: list[str]
    index: dict[str, int]
    val: np.ndarray
    eval: np.ndarray

    def full_candidates(self, c: Case) -> list[str]:
        return [c.candidates[0], *c.unseen]

    def from_matrix(self, mat: np.ndarray) -> _Scores:
        """Per-case scores from a (cases, movies) matrix."""
        idx = self.index
        sampled = [mat[n, [idx[m] for m in c.candidates]] for n, c in enumerate(self.cases)]
        full = [mat[n, [idx[m] for m in self.full_candidates(c)]]
                for n, c in enumerate(self.cases)]
        return _Scores(sampled, full)


def _ranks(scores: list[np.ndarray], rows: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    return np.asarray([_rank_of_first(scores[n], rng) for n in rows])


def _popularity(d: _Data) -> _Scores:
    vec = np.log1p(np.asarray([d.counts.get(m, 0.0) for m in d.ids]))
    return d.from_matrix(np.broadcast_to(vec, (len(d.cases), len(vec))))


def _bi(variant: dict[str, Any], d: _Data, device: str) -> _Scores:
    """The bi-encoder's own (content) scores: every movie encoded once, each user once."""
    sc = build_scorer({k: v for k, v in variant.items() if k != "prior"}, device=device)
    cat = CatalogView("movielens-quality", 1, [d.movies[m] for m in d.ids])
    users = [UserContext(history=c.history) for c in d.cases]
    rows = [catalog_score_matrix(sc, users[i:i + 256], cat).float().cpu().numpy()
            for i in range(0, len(users), 256)]
    return d.from_matrix(np.concatenate(rows).astype(np.float64))


def _tune(own: _Scores, prior: _Scores, d: _Data, seed: int
          ) -> tuple[float, list[dict[str, float]]]:
    """The grid weight with the best validation NDCG@10 (sampled protocol)."""
    grid = []
    for w in WEIGHT_GRID:
        blended = [a + w * b for a, b in zip(own.sampled, prior.sampled, strict=True)]
        grid.append({"weight": w, **_metrics(_ranks(blended, d.val, seed))})
    best = max(grid, key=lambda g: (g["ndcg@10"], -g["weight"]))
    return float(best["weight"]), grid


def _report(variant: dict[str, Any], scores: _Scores, d: _Data, seed: int,
            tuned: dict[str, Any] | None = None) -> dict[str, Any]:
    sampled = _metrics(_ranks(scores.sampled, d.eval, seed))
    full = _metrics(_ranks(scores.full, d.eval, seed))
    out = {**sampled, "full": full, "variant": variant}
    if tuned is not None:
        out["tuned"] = tuned
    return out


def _with_weight(variant: dict[str, Any], w: float) -> dict[str, Any]:
    out = dict(variant)
    if isinstance(out.get("prior"), dict) and out["prior"].get("weight") == TUNE:
        out["prior"] = {**out["prior"], "weight": w}
    if isinstance(out.get("candidates_from"), dict):
        out["candidates_from"] = _with_weight(out["candidates_from"], w)
    return out


def _load(seed: int, max_users: int, val_share: float) -> _Data:
    """MovieLens-100k as cases (at most ``max_users``; 0: all) split into validation and
    evaluation users."""
    ml = load_movielens()
    cases, counts = build_cases(ml, seed=seed)
    if max_users:
        cases = cases[:max_users]
    ids = sorted(ml.movies, key=int)
    val, ev = split_users(len(cases), val_share, seed)
    return _Data(cases, counts, {m: ml.movies[m].as_item() for m in ids}, ids,
                 {m: n for n, m in enumerate(ids)}, val, ev)


_Tuned = tuple[_Scores, dict[str, Any] | None, dict[str, Any]]


class _PresetScores:
    """The scores of the non-LM presets, each computed once: the bi-encoders' content scores
    by model (their ``prior`` aside) and every preset's tuned blend."""

    def __init__(self, d: _Data, pop: _Scores, seed: int, device: str) -> None:
        self.d, self.pop, self.seed, self.device = d, pop, seed, device
        self.content: dict[str, _Scores] = {}
        self.tuned: dict[str, _Tuned] = {}

    def content_of(self, v: dict[str, Any]) -> _Scores:
        key = parse_variant({k: x for k, x in v.items() if k != "prior"}).cache_key()
        if key not in self.content:
            self.content[key] = _bi(v, self.d, self.device)
        return self.content[key]

    def scores_of(self, v: dict[str, Any]) -> _Tuned:
        """(scores, tuning record, the variant with its weight filled in) of a non-LM preset."""
        key = repr(sorted(v.items(), key=lambda kv: kv[0]))
        if key in self.tuned:
            return self.tuned[key]
        if v["kind"] == "popularity":
            out: _Tuned = (self.pop, None, v)
        else:
            own = self.content_of(v)
            if v.get("prior") is None:
                out = (own, None, v)
            else:
                w, grid = _tune(own, self.pop, self.d, self.seed)
                out = (own.blend(self.pop, w), {"weight": w, "on": "validation users",
                                                "validation_users": len(self.d.val),
                                                "grid": grid},
                       _with_weight(v, w))
        self.tuned[key] = out
        return out


def run_quality(names: list[str], *, lm_users: int = 100, max_users: int = 0, seed: int = 0,
                device: str = "auto", val_share: float = 0.3,
                progress: Any = None) -> dict[str, Any]:
    """HR@10 / NDCG@10 per preset on the evaluation users, both protocols; prior weights
    tuned on the validation users. The LM rerankers run on a fixed random subsample of
    ``lm_users`` evaluation users (and as many validation users, pro rata, for tuning)."""
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        raise ValidationFailed(f"unknown quality preset(s) {unknown}; use {sorted(PRESETS)}",
                               field="variants")
    say = progress or (lambda msg: None)
    d = _load(seed, max_users, val_share)
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    pop = _popularity(d)
    presets = _PresetScores(d, pop, seed, device)
    for name in names:
        t0 = time.perf_counter()
        v = PRESETS[name]
        say(f"quality: {name}")
        if v["kind"] in ("popularity", "bi_encoder"):
            scores, tuned, filled = presets.scores_of(v)
            results[name] = _report(filled, scores, d, seed, tuned)
        else:
            inner, inner_tuned, inner_filled = presets.scores_of(v["candidates_from"])
            results[name] = _lm_rerank(v, inner, inner_filled, d, pop, lm_users, seed, device)
            if inner_tuned is not None:
                results[name]["inner_tuned"] = inner_tuned
        timings[name] = round(time.perf_counter() - t0, 1)
    return {"dataset": "MovieLens-100k (recbole wheel)", "users": len(d.cases),
            "evaluation_users": len(d.eval), "validation_users": len(d.val), "negatives": 99,
            "seed": seed,
            "protocol": "leave last >=4 rating out; sampled: 1 held-out vs 99 unseen; full: "
                        "1 held-out vs every unseen movie; weights tuned on validation users",
            "results": results, "seconds": timings}


def _subsample(rows: np.ndarray, n: int, seed: int) -> np.ndarray:
    if not n or n >= len(rows):
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, n, replace=False))


#: Per case: (top positions, LM scores, prior scores, inner rank of the target).
_Part = dict[int, tuple[Any, Any, Any, int]]


@dataclass
class _Reranker:
    """The LM reranking the inner scorer's top ``top_n`` (with the popularity prior)."""

    lm: Any
    top_n: int
    inner: _Scores
    pop: _Scores
    d: _Data
    seed: int

    def part(self, rows: np.ndarray, protocol: str) -> _Part:
        """Per case: (top positions, LM scores, prior scores, inner rank of the target); the
        scores are None when the target is outside the reranked top (its rank is then
        ``rerank_top + inner rank`` whatever the LM says)."""
        d, top_n = self.d, self.top_n
        out: _Part = {}
        for n in rows:
            c = d.cases[n]
            s = (self.inner.sampled if protocol == "sampled" else self.inner.full)[n]
            cands = c.candidates if protocol == "sampled" else d.full_candidates(c)
            order = np.argsort(-s, kind="stable")
            top = order[:top_n]
            inner_rank = int(np.where(order == 0)[0][0])
            if inner_rank >= top_n:  # the target is not reranked: its rank needs no LM score
                out[int(n)] = (top, None, None, inner_rank)
                continue
            lm_s = np.asarray(self.lm.score(UserContext(history=c.history),
                                            [d.movies[cands[j]] for j in top]))
            pr = (self.pop.sampled if protocol == "sampled" else self.pop.full)[n][top]
            out[int(n)] = (top, lm_s, pr, inner_rank)
        return out

    def ranks(self, part: _Part, w: float, rows: np.ndarray) -> np.ndarray:
        """The target's rank per case with the LM score + ``w`` x the prior."""
        rng = np.random.default_rng(self.seed + 1)
        out = []
        for n in rows:
            top, lm_s, pr, inner_rank = part[int(n)]
            if 0 not in top:  # outside the reranked set: below every reranked item
                out.append(self.top_n + inner_rank)
                continue
            s = lm_s + w * pr
            pos = int(np.where(top == 0)[0][0])
            out.append(_rank_of_first(np.concatenate([[s[pos]], np.delete(s, pos)]), rng))
        return np.asarray(out)

    def tune(self, va: np.ndarray) -> tuple[float, dict[str, Any]]:
        """The prior weight with the best validation NDCG@10 (sampled protocol)."""
        vpart = self.part(va, "sampled")
        grid = [{"weight": g, **_metrics(self.ranks(vpart, g, va))} for g in WEIGHT_GRID]
        best = max(grid, key=lambda g: (g["ndcg@10"], -g["weight"]))
        w = float(best["weight"])
        return w, {"weight": w, "on": "validation users", "validation_users": len(va),
                   "grid": grid}


def _lm_rerank(v: dict[str, Any], inner: _Scores, inner_filled: dict[str, Any], d: _Data,
               pop: _Scores, lm_users: int, seed: int, device: str) -> dict[str, Any]:
    """Rerank the inner top ``rerank_top`` with the LM (both protocols). A ``prior`` on the LM
    score has its weight tuned on validation users, whose LM scores are computed too."""
    cfg = parse_variant(_with_weight(v, 1.0))
    lm = build_scorer(cfg.model_copy(update={"candidates_from": None, "prior": None}),
                      device=device)
    rr = _Reranker(lm, cfg.rerank_top, inner, pop, d, seed)
    ev = _subsample(d.eval, lm_users, seed + 2)
    n_val = max(1, round(len(ev) * len(d.val) / max(len(d.eval), 1)))
    va = _subsample(d.val, n_val, seed + 3) if v.get("prior") is not None else np.array([], int)
    w, tuned = rr.tune(va) if v.get("prior") is not None else (0.0, None)
    out: dict[str, Any] = {"variant": {**_with_weight(v, w), "candidates_from": inner_filled},
                           "subsample_users": len(ev)}
    for protocol in ("sampled", "full"):
        part = rr.part(ev, protocol)
        m = _metrics(rr.ranks(part, w, ev))
        base = _metrics(np.asarray([part[int(n)][3] for n in ev]))
        if protocol == "sampled":
            out.update(m)
            out["inner_on_subsample"] = base
        else:
            out["full"] = {**m, "inner_on_subsample": base}
    if tuned is not None:
        out["tuned"] = tuned
    return out
