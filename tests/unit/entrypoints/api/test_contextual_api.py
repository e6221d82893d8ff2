"""A contextual experiment through the API on SQLite (TestClient): registration refuses a
contextual policy without features, with a bad feature, segment_thompson with continuous
rewards and a contextual policy with design interleaving (422s naming the field); once the
allocator has learned, /assign (the ASGI fast path and the FastAPI route alike) and /recommend
serve each segment its own arm with the propensity P(arm | context) of the snapshot, and a
context of the wrong type is a 422."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from armlab.adapters.db.allocation_store import SqlAllocationStore
from armlab.adapters.db.engine import make_engine, make_session_factory
from armlab.entrypoints.api.app import create_app
from armlab.services.allocator import run_allocation
from armlab.settings import Settings
from tests.contextual_data import T0, add_impressions, contextual_body, matured, segment_rows
from tests.unit.entrypoints.api.test_experiments_api import ADMIN, PRODUCER, TOKENS
from tests.unit.entrypoints.api.test_ui import sign_in

CANDIDATES = [{"id": f"m{n}", "title": f"movie {n}", "popularity": n} for n in range(10)]


def _client(sqlite_url: str, fast_path: bool) -> TestClient:
    return TestClient(create_app(Settings(database_url=sqlite_url, auth_tokens=TOKENS,
                                          transport="memory", assign_fast_path=fast_path,
                                          ui_secret="unit-test-secret")))


@pytest.fixture(params=[True, False], ids=["fast-path", "route"])
def client(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[TestClient]:
    with _client(sqlite_url, request.param) as c:
        yield c


def _errors(r: Any) -> dict[str, str]:
    assert r.status_code == 422, r.text
    return {e["field"]: e["message"] for e in r.json()["errors"]}


@pytest.mark.parametrize(("body", "field", "words"), [
    (contextual_body(features=None), "policy.params", "features"),
    (contextual_body(features=[{"name": "device", "kind": "categorical"}]), "policy.params",
     "needs a non-empty 'levels'"),
    (contextual_body(features=[{"name": "age", "kind": "numeric"}]), "policy.params",
     "numeric features not allowed"),
    (contextual_body(policy="linear_thompson",
                     features=[{"name": "x", "kind": "bogus"}]), "policy.params", "features"),
    ({**contextual_body(), "reward": {"kind": "continuous"}}, "policy", "reward.kind binary"),
    ({**contextual_body(), "design": "interleaving"}, "policy", "design: ab"),
    ({**contextual_body(policy="linear_thompson"), "design": "interleaving"}, "policy",
     "interleaving"),
    (contextual_body(policy="linear_thompson", context_prior=1.0), "policy.params",
     "context_prior"),
    (contextual_body(policy="linear_thompson", pooling="hierarchical"), "policy.params",
     "pooling"),
    (contextual_body(policy="linear_thompson", effect_scale=0), "policy.params",
     "effect_scale"),
    (contextual_body(pooling="model_average"), "policy.params", "pooling"),
])
def test_registration_refuses_bad_contextual_specs(sqlite_url: str, body: dict[str, Any],
                                                   field: str, words: str) -> None:
    if body["policy"]["params"].get("features") is None:
        body["policy"]["params"].pop("features")
    with _client(sqlite_url, True) as c:
        errors = _errors(c.post("/v1/experiments", json=body, headers=ADMIN))
    assert field in errors and words in errors[field], errors


def test_linear_thompson_takes_continuous_rewards(sqlite_url: str) -> None:
    body = {**contextual_body(policy="linear_thompson"), "reward": {"kind": "continuous"}}
    with _client(sqlite_url, True) as c:
        r = c.post("/v1/experiments", json=body, headers=ADMIN)
    assert r.status_code == 201, r.text
    assert r.json()["policy"]["name"] == "linear_thompson"


def _learn(client: TestClient, sqlite_url: str) -> None:
    r = client.post("/v1/experiments", json=contextual_body(min_segment_n=200), headers=ADMIN)
    assert r.status_code == 201, r.text
    assert client.post("/v1/experiments/ctx/start", headers=ADMIN).status_code == 200
    engine = make_engine(sqlite_url)
    sf = make_session_factory(engine)
    add_impressions(sf, 1, segment_rows(300, np.random.default_rng(9)), served_at=matured())
    run_allocation(SqlAllocationStore(sf), now=T0)
    engine.dispose()
    client.app.state.services.assigner.refresh()  # type: ignore[attr-defined]


def _served(client: TestClient, path: str, device: str, n: int, **extra: Any
            ) -> dict[str, float]:
    out: dict[str, float] = {}
    for i in range(n):
        r = client.post(f"/v1/experiments/ctx/{path}", headers=PRODUCER,
                        json={"unit_id": f"{device}-{i}", "context": {"device": device},
                              **extra})
        assert r.status_code == 200, r.text
        body = r.json()
        assert out.setdefault(body["arm"], body["propensity"]) == body["propensity"]
    return out


def test_assign_serves_each_segment_its_arm_with_its_propensity(
        client: TestClient, sqlite_url: str) -> None:
    _learn(client, sqlite_url)
    mobile = _served(client, "assign", "mobile", 60)
    desktop = _served(client, "assign", "desktop", 60)
    assert max(mobile, key=mobile.__getitem__) == "t1" and mobile["t1"] > 0.95
    assert max(desktop, key=desktop.__getitem__) == "control" and desktop["control"] > 0.95
    r = client.post("/v1/experiments/ctx/assign", headers=PRODUCER,
                    json={"unit_id": "u", "context": {"device": {"os": "ios"}}})
    assert r.status_code == 422 and "device" in r.json()["detail"]


def test_recommend_serves_the_context_too(client: TestClient, sqlite_url: str) -> None:
    _learn(client, sqlite_url)
    extra = {"candidates": CANDIDATES, "k": 3, "user": {"text": "space opera"}}
    mobile = _served(client, "recommend", "mobile", 30, **extra)
    desktop = _served(client, "recommend", "desktop", 30, **extra)
    assert mobile.get("t1", 0) > 0.95 and desktop.get("control", 0) > 0.95


def test_results_report_and_dashboard_read_a_contextual_snapshot(sqlite_url: str) -> None:
    with _client(sqlite_url, True) as c:
        _learn(c, sqlite_url)
        r = c.get("/v1/experiments/ctx/results", headers=ADMIN)
        assert r.status_code == 200, r.text
        snap = r.json()["snapshot"]
        assert snap["policy_name"] == "segment_thompson"
        assert snap["stats"]["contextual"]["policy"] == "segment_thompson"
        assert c.get("/v1/experiments/ctx/report", headers=ADMIN).status_code == 200
        sign_in(c, "admin-secret")
        assert c.get("/ui/experiments/ctx").status_code == 200
