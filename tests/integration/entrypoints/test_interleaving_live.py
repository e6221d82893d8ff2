"""Interleaving through the whole platform on real Kafka + PostgreSQL: `armlab serve`,
`armlab consume` and `armlab allocate` as subprocesses; `/recommend` merges the rankers'
lists, the client sends the impression with its interleaving log and one click per clicked
item (naming the item) through `POST /v1/events`, the consumer credits each click to the
ranker that placed the item, the allocator's look tests every pair, and the results show it.

The simulated users like the catalogue's most popular items (a click with probability 0.35
on each of the 8 most popular shown, 0.01 on any other), so the popularity ranker is truly
preferred to a tiny random bi-encoder, and a second, identical popularity ranker is not:

* ``pref``: popularity vs the random ranker, every ranker in every list, ``unit: user``,
  ``auto_stop``: the experiment stops with popularity the Condorcet winner, and the audit row
  of the stop carries the evaluation as its certificate.
* ``trio``: popularity, its identical copy and the random ranker, two rankers per list chosen
  by the dueling bandit (pair propensities below 1, logged and used as weights): both
  popularity rankers beat the random one and the identical pair stays undecided.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from armlab.adapters.scoring.tiny import make_tiny_model
from tests.integration.entrypoints.live_stack import live_stack

pytestmark = pytest.mark.integration

N_ITEMS = 40
LIKED_TOP = 8
P_LIKED, P_OTHER = 0.35, 0.01
_WORDS = ("amber", "basalt", "cinder", "delta", "ember", "fjord", "garnet", "harbor", "indigo",
          "juniper", "kelp", "lagoon", "meadow", "nectar", "onyx", "prairie", "quartz", "raven")
_TITLE_RNG = random.Random(5)
CANDIDATES = [{"id": f"m{i}", "title": " ".join(_TITLE_RNG.sample(_WORDS, 3)),
               "popularity": float(N_ITEMS - i)} for i in range(N_ITEMS)]
LIKED = {f"m{i}" for i in range(LIKED_TOP)}


@pytest.fixture()
def stack(pg_url: str, kafka_bootstrap: str, kafka_topic_factory: Callable[..., str],
          tmp_path: Path) -> Iterator[tuple[str, str]]:
    """serve + consume + allocate on PostgreSQL and Kafka; yields (API URL, tiny model)."""
    model = tmp_path / "tiny-encoder"
    make_tiny_model(model, "encoder")
    with live_stack(pg_url, kafka_bootstrap, kafka_topic_factory, tmp_path) as url:
        yield url, str(model)


def _spec(key: str, rankers: dict[str, dict[str, Any]], **inter: Any) -> dict[str, Any]:
    return {
        "key": key, "design": "interleaving", "unit": "user", "attribution_window_s": 1,
        "sequential": {"alpha": 0.05, "auto_stop": True},
        "interleaving": {"min_units": 20, "planned_units": 200, **inter},
        "arms": [{"key": k, "control": i == 0, "variant": v}
                 for i, (k, v) in enumerate(rankers.items())],
    }


def _traffic(c: httpx.Client, key: str, rng: random.Random, users: range,
             per_user: int) -> dict[str, int]:
    """Each user's requests through /recommend, then the impressions (with the interleaving
    log the answer carried) and the clicks (naming the item) through POST /v1/events.
    Returns the clicks per team as the simulation made them."""
    events: list[dict[str, Any]] = []
    clicks: dict[str, int] = {}
    for u in users:
        for _ in range(per_user):
            # candidates in a random order with random titles: the tiny random encoder's
            # near-equal scores must not fall back on the catalogue's (popularity) order
            cands = rng.sample(CANDIDATES, len(CANDIDATES))
            r = c.post(f"/v1/experiments/{key}/recommend", json={
                "unit_id": f"user-{u}", "user": {"text": " ".join(rng.sample(_WORDS, 3))},
                "k": 6, "candidates": cands})
            assert r.status_code == 200, r.text
            out = r.json()
            items = [x["item_id"] for x in out["items"]]
            log = out.get("interleaving")
            if log is None:  # the experiment stopped: the fixed ranker serves alone
                continue
            assert len(log["teams"]) == len(items) == len(set(items))
            at = datetime.fromisoformat(out["served_at"])
            events.append({
                "schema": "impression.v1", "event_id": f"ie-{out['impression_id']}",
                "impression_id": out["impression_id"], "experiment_key": key,
                "arm_key": out["arm"], "unit_id": f"user-{u}",
                "propensity": out["propensity"], "served_at": out["served_at"],
                "items": items, "interleaving": log})
            for item, team in zip(items, log["teams"], strict=True):
                if rng.random() < (P_LIKED if item in LIKED else P_OTHER):
                    clicks[team] = clicks.get(team, 0) + 1
                    events.append({
                        "schema": "feedback.v1", "event_id": f"c-{out['impression_id']}-{item}",
                        "impression_id": out["impression_id"], "experiment_key": key,
                        "kind": "click", "value": 1.0, "item_id": item,
                        "occurred_at": (at + timedelta(milliseconds=100)).isoformat()})
    for i in range(0, len(events), 1000):
        resp = c.post("/v1/events", json=events[i:i + 1000])
        assert resp.status_code == 202, resp.text
    return clicks


def _pair(results: dict[str, Any], a: str, b: str) -> dict[str, Any]:
    for p in results["interleaving"]["pairs"]:
        if {p["a"], p["b"]} == {a, b}:
            return dict(p)
    raise AssertionError(f"no pair {a}/{b} in {results['interleaving']}")


def test_interleaving_decides_the_preferred_ranker_end_to_end(
        stack: tuple[str, str]) -> None:
    url, model = stack
    pop = {"kind": "popularity"}
    rand = {"kind": "bi_encoder", "model": model, "item_template": "{title}",
            "max_length": 16}
    rng = random.Random(21)
    with httpx.Client(base_url=url, timeout=60) as c:
        for key, rankers, inter in (
                ("pref", {"popularity": pop, "random": rand}, {}),
                ("trio", {"popularity": pop, "pop-copy": pop, "random": rand},
                 {"rankers_per_request": 2, "pair_floor": 0.1, "stop_on": "never"})):
            r = c.post("/v1/experiments", json=_spec(key, rankers, **inter))
            assert r.status_code == 201, r.text
            assert c.post(f"/v1/experiments/{key}/start", json={"reason": "t"}).status_code == 200
        assert c.post("/v1/experiments/pref/assign", json={"unit_id": "u1"}).status_code == 409

        deadline = time.monotonic() + 150
        users = 0
        while True:
            _traffic(c, "pref", rng, range(users, users + 20), 3)
            _traffic(c, "trio", rng, range(users, users + 20), 3)
            users += 20
            time.sleep(1.5)  # the attribution window closes; the consumer and allocator pass
            pref = c.get("/v1/experiments/pref/results").json()
            trio = c.get("/v1/experiments/trio/results").json()
            trio_done = all(_pair(trio, "random", other)["winner"] == other
                            for other in ("popularity", "pop-copy"))
            if pref["status"] == "stopped" and trio_done and users >= 100:
                break
            assert time.monotonic() < deadline, (pref, trio)

        assert pref["design"] == "interleaving"
        block = pref["interleaving"]
        assert block["condorcet_winner"] == "popularity"
        p = _pair(pref, "popularity", "random")
        assert p["winner"] == "popularity" and p["p_adjusted"] <= 0.05
        assert p["n_units"] >= 20 and p["compared"] > 0
        audit = c.get("/v1/experiments/pref/audit").json()["entries"]
        stops = [e for e in audit if e["action"] == "stop"]
        assert len(stops) == 1 and stops[0]["actor"] == "allocator"
        assert "popularity" in str(stops[0]["evidence"])

        # the dueling bandit's pair propensities are below 1 and were logged with each list
        same = _pair(trio, "popularity", "pop-copy")
        assert same["winner"] is None, same  # identical rankers: no preference
        assert same["ci_low"] is not None and same["ci_low"] <= 0.0 <= same["ci_high"]
        snap = trio["snapshot"]["stats"]
        assert snap["m"] == 2 and abs(sum(s["probability"] for s in snap["sets"]) - 1) < 1e-9
        assert all(0 < x["propensity"] < 1 for x in snap["pairs"])
