"""Serving an interleaving experiment: the ranker-set draw, the merged list and its log."""

from __future__ import annotations

import math
from collections import Counter
from concurrent.futures import Future
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from armlab.core.events import make_impression
from armlab.errors import ScoringError
from armlab.services.assignment_views import build_view
from armlab.services.catalog import CatalogCache
from armlab.services.interleave import (
    InterleavedAssignment,
    RankerSets,
    draw_interleaved,
    ranker_sets,
)
from armlab.services.recommend import recommend

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ITEMS = [{"id": f"i{n}", "title": f"item {n}"} for n in range(12)]


class FakeScoring:
    """Each variant names its ranking (``order``); scores fall with the rank. Results are
    only read after every ranker of the request was submitted (the batcher sees them all)."""

    timeout_s = 5.0

    def __init__(self) -> None:
        self.submitted: list[dict[str, Any]] = []
        self.awaited_after: list[int] = []

    def submit(self, variant: dict[str, Any], user: Any, *, k: int, items: Any = None,
               catalog: Any = None, exclude: set[str] | None = None) -> Future[Any]:
        self.submitted.append(variant)
        fut: Future[Any] = Future()
        if variant.get("fail"):
            fut.set_exception(ScoringError("model not found: nope"))
            return fut
        full = variant["order"]
        order = [i for i in full if i not in (exclude or set())][:k]
        fut.set_result([{"item_id": i, "score": float(100 - full.index(i)) + variant["bias"]}
                        for i in order])
        return fut


class FakeAssigner:
    def __init__(self, sets: RankerSets, variants: dict[str, dict[str, Any]], seed: int = 0):
        self.sets, self.variants = sets, variants
        self.rng = np.random.default_rng(seed)
        self.n = 0

    def serve(self, key: str, unit_id: str, context: Any = None) -> InterleavedAssignment:
        self.n += 1
        return draw_interleaved(
            self.sets, self.variants, experiment_key=key, impression_id=f"imp{self.n}",
            served_at=NOW, snapshot_id=None,
            rng=np.random.default_rng(int(self.rng.integers(2**63))))


def variants(n: int) -> dict[str, dict[str, Any]]:
    ids = [it["id"] for it in ITEMS]
    rng = np.random.default_rng(7)
    return {f"r{j}": {"order": [str(i) for i in rng.permutation(ids)], "bias": j / 10}
            for j in range(n)}


def run(assigner: FakeAssigner, scoring: FakeScoring | None = None, k: int = 5,
        **kw: Any) -> dict[str, Any]:
    return recommend(assigner=assigner, scoring=scoring or FakeScoring(),  # type: ignore[arg-type]
                     catalogs=CatalogCache(lambda: None), key="exp", unit_id="u1",  # type: ignore[arg-type]
                     user_text="hi", history=[], candidates=ITEMS, catalog=None, k=k, **kw)


def check_answer(out: dict[str, Any], var: dict[str, dict[str, Any]], k: int) -> None:
    il = out["interleaving"]
    ids = [it["item_id"] for it in out["items"]]
    assert len(ids) == k == len(set(ids)) == len(il["teams"])
    assert set(il["teams"]) <= set(il["rankers"]) and out["arm"] == il["teams"][0]
    for it, team in zip(out["items"], il["teams"], strict=True):  # the source ranker's score
        order = var[team]["order"]
        assert it["score"] == pytest.approx(100 - order.index(it["item_id"]) + var[team]["bias"])
    ev = make_impression(experiment_key="exp", arm_key=out["arm"], unit_id="u1",
                         propensity=out["propensity"], impression_id=out["impression_id"],
                         items=ids, interleaving=il)
    assert ev.interleaving is not None and ev.interleaving.teams == il["teams"]


def test_two_rankers_every_request_merges_both_and_the_draft_varies() -> None:
    var = variants(2)
    assigner = FakeAssigner(ranker_sets(["r0", "r1"], {}, None), var)
    firsts = Counter()
    for _ in range(60):
        out = run(assigner, k=6)
        check_answer(out, var, 6)
        il = out["interleaving"]
        assert il["rankers"] == ["r0", "r1"] and out["propensity"] == 1.0
        assert il["pairs"] == [{"a": "r0", "b": "r1", "propensity": 1.0}]
        assert all(sorted(rnd) == ["r0", "r1"] for rnd in il["draft"])
        firsts[tuple(il["draft"][0])] += 1
    assert set(firsts) == {("r0", "r1"), ("r1", "r0")}  # drawn per request


def test_rankers_are_submitted_together_and_history_is_excluded() -> None:
    var = variants(3)
    scoring = FakeScoring()
    assigner = FakeAssigner(ranker_sets(list(var), None, None), var)
    out = run(assigner, scoring, k=4, exclude=[var["r0"]["order"][0]])
    assert len(scoring.submitted) == 3 and len(out["interleaving"]["rankers"]) == 3
    assert var["r0"]["order"][0] not in [it["item_id"] for it in out["items"]]
    check_answer(out, var, 4)


def snapshot_stats(sets: list[tuple[list[str], float]], pairs: dict[tuple[str, str], float]
                   ) -> dict[str, Any]:
    return {"status": "running", "design": "interleaving", "m": 2,
            "sets": [{"rankers": r, "probability": p} for r, p in sets],
            "pairs": [{"a": a, "b": b, "propensity": p} for (a, b), p in pairs.items()],
            "epsilon": 0.1, "seed": 1, "wins": {}}


def test_m_of_k_draws_follow_the_snapshot_and_log_its_propensities() -> None:
    var = variants(3)
    probs = {("r0", "r1"): 0.5, ("r0", "r2"): 0.3, ("r1", "r2"): 0.2}
    stats = snapshot_stats([(list(s), p) for s, p in probs.items()], probs)
    sets = ranker_sets(list(var), {"rankers_per_request": 2}, stats)
    assigner = FakeAssigner(sets, var, seed=3)
    for _ in range(30):
        out = run(assigner, k=5)
        check_answer(out, var, 5)
        chosen = tuple(out["interleaving"]["rankers"])
        assert out["propensity"] == pytest.approx(probs[chosen])
        assert out["interleaving"]["pairs"] == [
            {"a": chosen[0], "b": chosen[1], "propensity": probs[chosen]}]
    rng = np.random.default_rng(11)
    n = 20_000
    counts = Counter(sets.draw(rng)[0] for _ in range(n))
    for s, p in probs.items():
        assert abs(counts[s] / n - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_uniform_subsets_before_the_first_snapshot() -> None:
    keys = ["a", "b", "c", "d"]
    sets = ranker_sets(keys, {"rankers_per_request": 2}, None)
    rng = np.random.default_rng(5)
    n = 12_000
    counts: Counter[tuple[str, ...]] = Counter()
    for _ in range(n):
        chosen, p = sets.draw(rng)
        assert len(chosen) == 2 and list(chosen) == sorted(chosen) and p == pytest.approx(1 / 6)
        counts[chosen] += 1
    assert len(counts) == 6 and all(abs(c / n - 1 / 6) < 0.02 for c in counts.values())
    assert sets.compared(("a", "c")) == [("a", "c", pytest.approx(2 / 12))]
    # a non-interleaving (or unusable) snapshot keeps the uniform default
    for stats in ({"design": "ab"}, {"design": "interleaving", "sets": [{"rankers": ["a"]}]}):
        assert ranker_sets(keys, {"rankers_per_request": 2}, stats).sampler is None


def test_three_of_four_with_multileaving() -> None:
    var = variants(4)
    assigner = FakeAssigner(ranker_sets(list(var), {"rankers_per_request": 3}, None), var)
    seen = set()
    for _ in range(40):
        out = run(assigner, k=7)
        check_answer(out, var, 7)
        il = out["interleaving"]
        assert len(il["rankers"]) == 3 and out["propensity"] == pytest.approx(1 / 4)
        r = il["rankers"]
        assert [(p["a"], p["b"]) for p in il["pairs"]] == [(r[0], r[1]), (r[0], r[2]),
                                                            (r[1], r[2])]
        assert all(p["propensity"] == pytest.approx(0.5) for p in il["pairs"])  # 3*2/(4*3)
        seen.add(tuple(il["rankers"]))
    assert len(seen) == 4


def test_a_failing_ranker_raises_the_scoring_error() -> None:
    var = variants(2)
    var["r1"] = {"fail": True}
    with pytest.raises(ScoringError):
        run(FakeAssigner(ranker_sets(list(var), None, None), var))


def test_build_view_reads_the_design_and_the_snapshot_sets() -> None:
    arms = [SimpleNamespace(key=k, variant={"kind": "popularity"}) for k in ("a", "b", "c")]
    exp = SimpleNamespace(
        id=1, key="e", status="running", unit="request", salt="s", version=1, arms=arms,
        control_arm_key="a", shipped_arm_key=None, rolled_back=None, design="interleaving",
        interleaving={"rankers_per_request": 2})
    snap = SimpleNamespace(id=9, policy_name="dueling", weights={"a": 0.5, "b": 0.5, "c": 0.0},
                           stats=snapshot_stats([(["b", "a"], 1.0)], {("a", "b"): 1.0}))
    view = build_view(exp, snap)  # type: ignore[arg-type]
    assert view.design == "interleaving" and view.ranker_sets is not None
    assert view.ranker_sets.sets == (("a", "b"),)
    assert view.ranker_sets.draw(np.random.default_rng(0)) == (("a", "b"), 1.0)
    ab = build_view(SimpleNamespace(**{**vars(exp), "design": "ab", "interleaving": None}),  # type: ignore[arg-type]
                    snap)
    assert ab.design == "ab" and ab.ranker_sets is None
