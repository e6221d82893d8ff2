"""``armlab bench interleaving``: the designs on a small synthetic replay (the same code path
as the MovieLens run), an A/A replay, and the one-off scoring of the real replay with a tiny
random encoder (the cache and the liked-movie matrix). The full run on MiniLM is
``armlab bench interleaving`` (figures in the report of issue 21)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from armlab.adapters.scoring.tiny import make_tiny_model
from armlab.tools.bench.interleaving import (
    RANKERS,
    build_replay,
    run_interleaving_bench,
    run_orders,
    synthetic_replay,
)


def test_interleaving_needs_fewer_users_than_ab_on_the_same_orders() -> None:
    replay = synthetic_replay(np.random.default_rng(0), users=300, requests=10, lift=0.01)
    out = run_orders(replay, orders=10, seed=1)
    d = out["designs"]
    assert set(d) == {"interleaving", "ab_fixed_50_50", "ab_thompson"}
    inter, fixed, ts = d["interleaving"], d["ab_fixed_50_50"], d["ab_thompson"]
    assert inter["orders"] == fixed["orders"] == ts["orders"] == 10
    assert inter["decided_share"] == 1.0 and inter["winners"] == {RANKERS[1]: 10}
    assert fixed["decided_share"] < 1.0 and ts["decided_share"] < 1.0
    assert inter["median_users_to_decision"] < (fixed["median_users_decided_orders"] or 1e9)
    assert set(fixed["winners"]) <= {RANKERS[1]}
    assert out["truth"]["users"] == 300 and out["truth"]["requests"] == 3000
    assert out["target"]["interleaving_decides_in_95pct"]


def test_identical_rankers_are_rarely_told_apart() -> None:
    replay = synthetic_replay(np.random.default_rng(3), users=200, requests=10)
    same = replace(replay, lists=np.repeat(replay.lists[:, :1], 2, axis=1),
                   liked=np.repeat(replay.liked[:, :1], 2, axis=1))
    out = run_orders(same, orders=10, seed=2)
    for design in out["designs"].values():
        assert design["decided_share"] <= 0.2
    assert out["truth"]["interleaving_mean_preference_minilm_over_popularity"] == \
        pytest.approx(0.0, abs=0.05)


@pytest.mark.timeout(300)
def test_movielens_replay_scored_once_and_cached(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARMLAB_HOME", str(tmp_path / "home"))
    enc = str(make_tiny_model(tmp_path / "encoder", "encoder"))
    tiny = {"encoder": enc}
    replay = build_replay(tmp_path, max_requests=120, tiny_models=tiny)
    n = replay.user.size
    assert n == 120 and replay.lists.shape == (n, 2, 10) and replay.liked.shape == (n, 2, 10)
    assert (replay.lists >= 0).all()  # the catalogue is far larger than k
    assert replay.liked.any()  # some listed movies were liked within the window
    for row in replay.lists.reshape(-1, 10):  # a ranked list holds no movie twice
        assert len(set(row.tolist())) == 10
    cached = list((tmp_path / "bench-interleaving").glob("replay-*.npz"))
    assert len(cached) == 1
    again = build_replay(tmp_path, max_requests=120, tiny_models=tiny)
    assert (again.lists == replay.lists).all() and (again.liked == replay.liked).all()
    out = run_interleaving_bench(tmp_path, orders=2, max_requests=120, tiny_models=tiny)
    assert out["benchmark"] == "interleaving" and "tiny random" in out["data"]
    assert out["designs"]["interleaving"]["orders"] == 2
