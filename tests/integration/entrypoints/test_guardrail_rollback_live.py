"""End to end on real Kafka + PostgreSQL: `armlab serve`, `armlab consume` and `armlab allocate`
as subprocesses; traffic through the HTTP API (assign, then impression and feedback events).
A treatment that raises the skip rate (10% -> 45%) while its clicks are as good as the
control's is rolled back by the allocator: an audit row ``rollback`` with the guardrail's
evidence, weight 0 in the newest snapshot, and ``/assign`` stops serving it."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.entrypoints.live_stack import live_stack

pytestmark = pytest.mark.integration

SKIP_RATE = {"control": 0.10, "fine": 0.10, "harm": 0.45}
CLICK_RATE = 0.20


@pytest.fixture()
def stack(pg_url: str, kafka_bootstrap: str, kafka_topic_factory: Callable[..., str],
          tmp_path: Path) -> Iterator[str]:
    """serve + consume + allocate on PostgreSQL and Kafka; yields the API's URL."""
    with live_stack(pg_url, kafka_bootstrap, kafka_topic_factory, tmp_path) as url:
        yield url


def _round(c: httpx.Client, rng: random.Random, n: int) -> dict[str, int]:
    """n assignments with their impression and feedback events; returns arms served."""
    events: list[dict[str, Any]] = []
    served: dict[str, int] = {}
    for _ in range(n):
        a = c.post("/v1/experiments/guarded/assign",
                   json={"unit_id": f"r{rng.getrandbits(48)}",
                         "context": {"serving": {"latency_ms": 20}}}).json()
        assert "arm" in a, a
        arm = a["arm"]
        served[arm] = served.get(arm, 0) + 1
        at = datetime.fromisoformat(a["served_at"])
        events.append({"schema": "impression.v1", "event_id": f"ie-{a['impression_id']}",
                       "impression_id": a["impression_id"], "experiment_key": "guarded",
                       "arm_key": arm, "unit_id": "u", "propensity": a["propensity"],
                       "served_at": a["served_at"], "context": {}})
        for kind, rate in (("click", CLICK_RATE), ("skip", SKIP_RATE[arm])):
            if rng.random() < rate:
                events.append({"schema": "feedback.v1",
                               "event_id": f"{kind}-{a['impression_id']}",
                               "impression_id": a["impression_id"],
                               "experiment_key": "guarded", "kind": kind, "value": 1.0,
                               "occurred_at": (at + timedelta(milliseconds=200)).isoformat()})
    for i in range(0, len(events), 1000):
        r = c.post("/v1/events", json=events[i:i + 1000])
        assert r.status_code == 202, r.text
    return served


def test_a_harmful_arm_is_rolled_back_end_to_end(stack: str) -> None:
    spec = {
        "key": "guarded", "policy": {"name": "thompson"}, "exploration_floor": 0.1,
        "attribution_window_s": 1,
        "sequential": {"min_samples": 50, "min_events": 20},
        "arms": [{"key": k, "control": k == "control", "variant": {"kind": "popularity"}}
                 for k in ("control", "fine", "harm")],
        "guardrails": [{"key": "skips", "source": {"feedback": "skip"}, "harm": "increase",
                        "margin": {"absolute": 0.02}, "alpha": 0.05}],
    }
    rng = random.Random(12)
    with httpx.Client(base_url=stack, timeout=30) as c:
        assert c.post("/v1/experiments", json=spec).status_code == 201
        assert c.post("/v1/experiments/guarded/start", json={"reason": "go"}).status_code == 200
        deadline = time.monotonic() + 60
        rolled: dict[str, Any] = {}
        while not rolled:
            assert time.monotonic() < deadline, c.get("/v1/experiments/guarded/results").text
            _round(c, rng, 300)
            time.sleep(1.5)  # the attribution window closes; the allocator passes
            rolled = c.get("/v1/experiments/guarded").json()["rolled_back"]
        assert set(rolled) == {"harm"}
        audit = c.get("/v1/experiments/guarded/audit").json()["entries"]
        rows = [e for e in audit if e["action"] == "rollback"]
        assert len(rows) == 1 and rows[0]["actor"] == "allocator"
        g = rows[0]["evidence"]["guardrail"]
        assert (g["metric"], g["arm"]) == ("skips", "harm")
        assert g["p_value"] <= g["alpha"] == pytest.approx(0.025)
        assert g["treatment_mean"] > g["control_mean"] and g["excess_low"] is not None
        results = c.get("/v1/experiments/guarded/results").json()
        assert next(a for a in results["arms"] if a["key"] == "harm")["weight"] == 0.0
        assert results["snapshot"]["weights"]["harm"] == 0.0
        assert results["recommendation"]["arm"] != "harm"
        time.sleep(0.5)  # the API's assigner refreshes its view (0.2 s)
        after = _round(c, rng, 200)
        assert "harm" not in after and sum(after.values()) == 200
