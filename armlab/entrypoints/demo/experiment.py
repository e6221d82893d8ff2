"""The demo's A/B experiment (stage 2): its registration body, its guardrail and, with
``--contextual``, its per-segment policy on the user's history length."""

from __future__ import annotations

from typing import Any

#: Stage 2's attribution window (s): the replay knows each click at request time.
ATTRIBUTION_WINDOW_S = 1


def experiment_spec(key: str, cfg: Any, arms: list[dict[str, Any]],
                    n_users: int, *, cuped: bool = False) -> dict[str, Any]:
    """The A/B experiment (stage 2); ``n_users``: the horizon, in users (the unit);
    ``cuped``: stage 1 ran, so its users' impressions are stage 2's pre-period."""
    sequential: dict[str, Any] = {"alpha": 0.05, "auto_stop": True, "min_samples": 50,
                                  "max_n": n_users, "correction": "holm", "boundary": "horizon"}
    if cuped:
        sequential["cuped"] = DEMO_CUPED
    return {
        "key": key,
        "name": "MovieLens-100k stage 2: the preferred ranker vs popularity (A/B, per user)",
        "description": (
            "armlab demo: users replayed in time order; a click is a top-"
            f"{cfg.k} list containing a movie the user rated >= 4 within "
            f"{cfg.window_s // 3600} h after the request."
        ),
        # One user's requests share their history and tastes: the user is the unit of
        # analysis (sticky arm per user, the test counts users), never the request.
        "unit": "user",
        "reward": {"kind": "binary", "metric": "click"},
        "policy": CONTEXTUAL_POLICY if cfg.contextual else {"name": "thompson", "params": {}},
        # the floor below 1/K (the A/B of every arm with ``--stages ab`` has five)
        "exploration_floor": min(cfg.exploration_floor, 0.5 / len(arms)),
        "burn_in": max(20, cfg.cadence // 2),
        # Rewards are known at request time here, so feedback lands within milliseconds;
        # a 1 s window keeps the allocator's "matured" view almost current.
        "attribution_window_s": ATTRIBUTION_WINDOW_S,
        # The demo knows its budget, so it registers the horizon boundary (most of alpha on a
        # flat boundary up to the planned information at max_n; still valid beyond it).
        "sequential": sequential,
        "arms": arms,
        # The guardrail: the share of recommended lists holding a movie the user later rated
        # 1-2 must not rise by more than 2 points over the control's.
        "guardrails": [DEMO_GUARDRAIL],
    }


#: Stage 2's CUPED after stage 1: X = the user's stage-1 requests (the impressions served in
#: the day before stage 2 started; interleaved impressions carry no reward, so not their
#: clicks). On MovieLens this explains little (docs/statistics.md, "CUPED"): most stage-2
#: users were not in stage 1, and those who were rate less afterwards; the summary prints it.
DEMO_CUPED: dict[str, Any] = {"pre_period_days": 1, "covariate": "impressions"}

#: ``--contextual``: stage 2 allocates per segment of the user's history length (the movies
#: they had rated before the request), pooled until a segment has 200 matured impressions.
HISTORY_LEVELS = ("new", "regular", "heavy")
CONTEXTUAL_POLICY: dict[str, Any] = {
    "name": "segment_thompson",
    "params": {"features": [{"name": "history", "kind": "categorical",
                             "levels": list(HISTORY_LEVELS), "default": "regular"}],
               "min_segment_n": 200}}


def history_level(seen: int) -> str:
    """The user's history-length segment: new (< 20 movies rated before), regular, heavy
    (>= 100)."""
    return "new" if seen < 20 else "heavy" if seen >= 100 else "regular"


#: The replay sends a ``rating`` feedback (its value: the rating, 1 or 2) only when the list
#: holds a movie the user later rated 1-2, so "any rating feedback" is "a low-rated movie".
DEMO_GUARDRAIL: dict[str, Any] = {
    "key": "low_rated", "source": {"feedback": "rating"}, "aggregate": "any",
    "harm": "increase", "margin": {"absolute": 0.02}, "alpha": 0.05, "on_breach": "rollback"}


