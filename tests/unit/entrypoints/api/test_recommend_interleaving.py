"""/recommend on an interleaving experiment answers a merged list with its interleaving log;
/assign refuses the design; stopped, it serves the fixed arm's own list."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from armlab.adapters.db import migrate
from armlab.adapters.db.models import AllocationSnapshot
from armlab.adapters.db.uow import UnitOfWork
from armlab.bootstrap import bootstrap
from armlab.core.events import make_impression
from armlab.core.specs import ExperimentSpec
from armlab.entrypoints.api.app import create_app
from armlab.services import registry
from armlab.settings import Settings

TOKEN = "prod-secret"
H = {"Authorization": f"Bearer {TOKEN}"}
CANDIDATES = [{"id": f"m{n}", "title": f"movie {n}", "popularity": (n * 7) % 13}
              for n in range(20)]


def _create(url: str, key: str, m: int | None, sets: list[dict[str, Any]] | None) -> None:
    migrate.upgrade(url)
    svc = bootstrap(Settings(database_url=url))
    try:
        spec = ExperimentSpec.model_validate({
            "key": key, "design": "interleaving",
            "interleaving": {"rankers_per_request": m} if m else None,
            "arms": [{"key": k, "control": k == "pop", "variant": {"kind": "popularity"}}
                     for k in ("pop", "pop2", "pop3")]})
        with UnitOfWork(svc.session_factory) as uow:
            exp = registry.create_experiment(uow, spec=spec, actor="test")
            registry.start_experiment(uow, key=key, actor="test")
            uow.flush()
            if sets is not None:
                uow.session.add(AllocationSnapshot(
                    experiment_id=exp.id, policy_name="dueling", policy_version="1",
                    weights={"pop": 0.5, "pop2": 0.5, "pop3": 0.0},
                    stats={"status": "running", "design": "interleaving", "m": 2, "sets": sets,
                           "pairs": [{"a": "pop", "b": "pop2", "propensity": 1.0},
                                     {"a": "pop", "b": "pop3", "propensity": 0.0},
                                     {"a": "pop2", "b": "pop3", "propensity": 0.0}],
                           "epsilon": 0.0, "seed": 1, "wins": {}}))
            uow.commit()
    finally:
        svc.close()


@pytest.fixture()
def app_url(tmp_path) -> Iterator[tuple[TestClient, str]]:
    url = f"sqlite:///{tmp_path / 'il.db'}"
    migrate.upgrade(url)
    settings = Settings(database_url=url, transport="memory",
                        auth_tokens=f"app:producer:{TOKEN},ops:admin:admin-secret")
    _create(url, "il-all", None, None)
    _create(url, "il-snap", 2, [{"rankers": ["pop", "pop2"], "probability": 1.0}])
    with TestClient(create_app(settings)) as client:
        yield client, url


def _recommend(client: TestClient, key: str, k: int = 5) -> dict[str, Any]:
    r = client.post(f"/v1/experiments/{key}/recommend", headers=H, json={
        "unit_id": "req-1", "user": {"text": "space opera"}, "candidates": CANDIDATES, "k": k})
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_recommend_answers_the_merged_list_with_its_log(app_url) -> None:
    client, _ = app_url
    out = _recommend(client, "il-all", k=6)
    il = out["interleaving"]
    ids = [it["item_id"] for it in out["items"]]
    assert len(ids) == 6 == len(set(ids)) == len(il["teams"])
    assert il["rankers"] == ["pop", "pop2", "pop3"] and out["propensity"] == 1.0
    assert out["arm"] == il["teams"][0] and set(il["teams"]) <= set(il["rankers"])
    assert {(p["a"], p["b"], p["propensity"]) for p in il["pairs"]} == {
        ("pop", "pop2", 1.0), ("pop", "pop3", 1.0), ("pop2", "pop3", 1.0)}
    assert all(isinstance(it["score"], float) for it in out["items"])
    make_impression(experiment_key="il-all", arm_key=out["arm"], unit_id="req-1",
                    propensity=out["propensity"], impression_id=out["impression_id"],
                    items=ids, interleaving=il)


def test_snapshot_sets_are_served(app_url) -> None:
    client, _ = app_url
    for _ in range(5):
        out = _recommend(client, "il-snap")
        assert out["interleaving"]["rankers"] == ["pop", "pop2"] and out["propensity"] == 1.0
        assert out["interleaving"]["pairs"] == [{"a": "pop", "b": "pop2", "propensity": 1.0}]


def test_assign_is_refused_and_a_stopped_experiment_serves_its_arm(app_url) -> None:
    client, url = app_url
    r = client.post("/v1/experiments/il-all/assign", headers=H, json={"unit_id": "u1"})
    assert r.status_code == 409 and r.json()["type"] == "Conflict"
    assert "design 'interleaving'" in r.json()["detail"]
    svc = bootstrap(Settings(database_url=url))
    try:
        with UnitOfWork(svc.session_factory) as uow:
            registry.stop_experiment(uow, key="il-all", actor="test", reason="done")
            uow.commit()
    finally:
        svc.close()
    client.app.state.services.assigner.invalidate("il-all")
    out = _recommend(client, "il-all")
    assert "interleaving" not in out and out["arm"] == "pop" and out["propensity"] == 1.0
    assert len(out["items"]) == 5


def test_openapi_documents_the_interleaving_object(app_url) -> None:
    client, _ = app_url
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert set(schemas["InterleavingOut"]["properties"]) == {"rankers", "teams", "draft", "pairs"}
    assert "interleaving" in schemas["RecommendOut"]["properties"]


def test_a_ranker_that_fails_gets_the_scoring_error_not_a_500(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'bad.db'}"
    migrate.upgrade(url)
    svc = bootstrap(Settings(database_url=url))
    try:
        spec = ExperimentSpec.model_validate({
            "key": "il-bad", "design": "interleaving",
            "arms": [{"key": "pop", "control": True, "variant": {"kind": "popularity"}},
                     {"key": "bad", "variant": {"kind": "bi_encoder",
                                                "model": str(tmp_path / "no-such-model")}}]})
        with UnitOfWork(svc.session_factory) as uow:
            registry.create_experiment(uow, spec=spec, actor="test")
            registry.start_experiment(uow, key="il-bad", actor="test")
            uow.commit()
    finally:
        svc.close()
    settings = Settings(database_url=url, transport="memory", auth_tokens=f"app:producer:{TOKEN}")
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/experiments/il-bad/recommend", headers=H, json={
            "unit_id": "req-1", "user": {"text": "x"}, "candidates": CANDIDATES, "k": 3})
    assert r.status_code in (422, 503), r.text
    assert r.json()["type"] in ("ScoringError", "ModelNotAvailable")
