"""The MovieLens-100k replay shared by ``armlab demo`` and ``armlab bench recommend``: the
time split, what popularity knew before it, the replayed requests with their real rewards, the
catalogue payload, and the demo's arms.

Ratings are split in time: the first half only feeds item popularity (what the control
knows); requests replay the second half in time order. A request is a user at the moment of
one of their ratings; its reward is a click when the recommended top-k contains a movie the
user actually rated >= 4 within the window after the request time. Its guardrail metric: the
list contains a movie the user rated 1-2 within the same window (``DemoRequest.disliked``; the
demo sends it as ``rating`` feedback with the low rating as its value).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CATALOG = "movielens-100k-demo"


@dataclass(frozen=True)
class DemoRequest:
    """One replayed request: user ``user`` at MovieLens time ``t``."""

    t: int
    user: str
    history: tuple[str, ...]  # recent liked movies, oldest first (most recent last)
    seen: frozenset[str]
    positives: frozenset[str]
    # movie -> rating (1 or 2) for the movies rated 1-2 within the window (the guardrail)
    disliked: dict[str, int] = field(default_factory=dict)


def split_time(ml: Any, quantile: float) -> int:
    """The MovieLens timestamp splitting warm-up ratings from replayed ones."""
    return int(np.quantile(ml.rating_time, quantile))


def popularity_before(ml: Any, t0: int) -> dict[str, float]:
    """Rating counts per movie before ``t0``: what a popularity ranker knew at the start."""
    mask = ml.rating_time < t0
    ids, counts = np.unique(ml.rating_item[mask], return_counts=True)
    return {str(i): float(c) for i, c in zip(ids, counts, strict=True)}


def build_requests(
    ml: Any, *, t0: int, every: int, window_s: int, history_len: int, min_history: int
) -> list[DemoRequest]:
    """Request points at every ``every``-th rating of each user after ``t0``, in time order.

    History: the user's most recent ``history_len`` movies rated >= 4 strictly before the
    request time (all rated movies if none was liked). Positives: movies the user rated >= 4 at
    or after the request time and within ``window_s``. Requests with an empty positive set
    stay in the stream: they are real requests whose click rate is simply 0 for every arm.
    """
    out: list[DemoRequest] = []
    for u in ml.users:
        hist = ml.user_history(u)
        times = [h[2] for h in hist]
        for j in range(every, len(hist), every):
            t = hist[j][2]
            if t < t0:
                continue
            before = hist[: bisect.bisect_left(times, t)]  # strictly earlier ratings
            if len(before) < min_history:
                continue
            liked = [h[0] for h in before if h[1] >= 4] or [h[0] for h in before]
            end = bisect.bisect_right(times, t + window_s)
            pos = frozenset(h[0] for h in hist[len(before):end] if h[1] >= 4)
            bad = {h[0]: int(h[1]) for h in hist[len(before):end] if h[1] <= 2}
            out.append(DemoRequest(t=t, user=u, history=tuple(liked[-history_len:]),
                                   seen=frozenset(h[0] for h in before), positives=pos,
                                   disliked=bad))
    out.sort(key=lambda r: (r.t, int(r.user)))
    return out


def catalog_payload(items: list[dict[str, Any]], pop: dict[str, float]) -> list[dict[str, Any]]:
    """Every movie as the candidate dict the recommend route takes, most popular first."""
    out = [{"id": it["id"], "title": it["title"], "year": it["year"], "genres": it["genres"],
            "popularity": pop.get(it["id"], 0.0)} for it in items]
    out.sort(key=lambda it: (-it["popularity"], int(it["id"])))
    return out


ITEM_TEMPLATE_GENRES = "{title} ({year}). Genres: {genres}"


def arm_specs(*, include_lm: bool, tiny_models: dict[str, str] | None = None,
              prior_weight: float = 0.2) -> list[dict[str, Any]]:
    """The arms: popularity control + language-model variants (real or tiny models).

    The default arms serve at CPU speed: their user vector is the mean of the history movies'
    cached vectors, so no text goes through the encoder per request. ``include_lm`` adds a
    text-tower bi-encoder and a SmolLM2 reranker (each request encodes text: too slow for a
    decision within the budget on 2 cores).
    """
    enc = (tiny_models or {}).get("encoder")
    lm = (tiny_models or {}).get("causal_lm")
    history: dict[str, Any] = {"kind": "bi_encoder", "item_template": ITEM_TEMPLATE_GENRES,
                               "user_template": "Recently liked: {history_items}",
                               "max_length": 64, "user_tower": "history_mean"}
    if enc:
        history["model"] = enc
    with_prior = {**history, "prior": {"variant": {"kind": "popularity"},
                                       "weight": prior_weight}}
    arms: list[dict[str, Any]] = [
        {"key": "popularity", "control": True, "variant": {"kind": "popularity"}},
        {"key": "minilm-history-pop", "variant": with_prior},
        {"key": "minilm-history", "variant": history},
    ]
    if include_lm:
        genres: dict[str, Any] = {**history, "user_tower": "text", "max_length": 128}
        rerank: dict[str, Any] = {
            "kind": "lm_yes_no", "candidates_from": with_prior, "rerank_top": 10,
            "item_template": "{title}", "user_template": "{history}",
            "max_length": 128, "batch_size": 10,
        }
        if lm:
            rerank["model"] = lm
        arms.append({"key": "minilm-genres", "variant": genres})
        arms.append({"key": "smollm2-rerank", "variant": rerank})
    return arms
