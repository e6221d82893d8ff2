"""Assignment on PostgreSQL: cached weights, propensities, sticky users, states, the endpoint."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select

from armlab.adapters.db.models import AllocationSnapshot, UnitAssignment
from armlab.adapters.db.uow import UnitOfWork
from armlab.bootstrap import Services, bootstrap
from armlab.core.specs import ExperimentSpec
from armlab.errors import Conflict, ExperimentNotFound
from armlab.services import registry
from armlab.services.assignment import Assigner, unit_hash
from armlab.settings import Settings
from tests.builders import experiment_spec

WEIGHTS = {"control": 0.2, "a": 0.5, "b": 0.3}


def spec(key: str, unit: str = "request") -> ExperimentSpec:
    return experiment_spec(key, unit=unit,
                           treatments=[("a", {"kind": "popularity", "batch_size": 8}), "b"])


@pytest.fixture()
def services(pg_url: str) -> Any:
    svc = bootstrap(
        Settings(
            database_url=pg_url,
            snapshot_refresh_s=0.05,
            auth_tokens=SecretStr("app:producer:p-secret,bi:reader:r-secret"),
        )
    )
    yield svc
    svc.close()


def setup(
    svc: Services,
    key: str,
    *,
    unit: str = "request",
    start: bool = True,
    weights: dict[str, float] | None = WEIGHTS,
) -> int:
    with UnitOfWork(svc.session_factory) as uow:
        exp = registry.create_experiment(uow, spec=spec(key, unit), actor="t")
        if start:
            registry.start_experiment(uow, key=key, actor="t")
        uow.flush()
        if weights is not None:
            uow.session.add(
                AllocationSnapshot(
                    experiment_id=exp.id,
                    policy_name="thompson",
                    policy_version="1",
                    weights=weights,
                    stats={},
                )
            )
        uow.commit()
        return exp.id


def add_snapshot(svc: Services, exp_id: int, weights: dict[str, float]) -> None:
    with UnitOfWork(svc.session_factory) as uow:
        uow.session.add(
            AllocationSnapshot(
                experiment_id=exp_id,
                policy_name="thompson",
                policy_version="1",
                weights=weights,
                stats={},
            )
        )
        uow.commit()


def test_request_unit_draw_frequencies_match_weights(services: Services) -> None:
    setup(services, "req")
    asg = Assigner(services.assignment_store, seed=1).start(background=False)
    out = [asg.assign("req", f"r{i}") for i in range(20_000)]
    freq = Counter(a.arm_key for a in out)
    for arm, w in WEIGHTS.items():
        assert freq[arm] / 20_000 == pytest.approx(w, abs=0.015)
    assert all(a.propensity == pytest.approx(WEIGHTS[a.arm_key]) for a in out)
    assert all(a.variant["kind"] == "popularity" for a in out[:10])
    assert len({a.impression_id for a in out}) == 20_000
    # deterministic given a seed
    again = Assigner(services.assignment_store, seed=1).start(background=False)
    assert [again.assign("req", f"r{i}").arm_key for i in range(50)] == [
        a.arm_key for a in out[:50]
    ]
    x = Assigner(services.assignment_store, seed=9).start(background=False)
    y = Assigner(services.assignment_store, seed=9).start(background=False)
    assert [x.assign("req", "u").impression_id for _ in range(3)] == [
        y.assign("req", "u").impression_id for _ in range(3)
    ]


def test_user_unit_is_sticky_with_its_original_propensity(services: Services) -> None:
    exp_id = setup(services, "usr", unit="user")
    asg = Assigner(services.assignment_store, seed=2, refresh_s=0.05).start(background=False)
    first = {u: asg.assign("usr", u) for u in (f"user{i}" for i in range(300))}
    view = asg.view("usr")
    assert view is not None
    for u, a in first.items():  # arm = CDF of the weights at the hashed position
        assert (a.arm_key, a.propensity) == pytest.approx(view.pick(unit_hash(view.salt, u)))
    freq = Counter(a.arm_key for a in first.values())
    assert freq["a"] > freq["control"]
    # weights move: the same users keep arm and original propensity; new users follow new weights
    add_snapshot(services, exp_id, {"control": 0.0, "a": 0.0, "b": 1.0})
    asg.refresh()
    for u, a in first.items():
        b = asg.assign("usr", u)
        assert (b.arm_key, b.propensity) == (a.arm_key, a.propensity)
    assert asg.assign("usr", "newcomer").arm_key == "b"
    # written behind to unit_assignments, and a fresh process (new Assigner) keeps them
    asg.flush()
    with services.session_factory() as s:
        stored = {
            r.unit_id: (r.arm_key, r.propensity)
            for r in s.scalars(select(UnitAssignment).where(UnitAssignment.experiment_id == exp_id))
        }
    assert stored["user7"] == (first["user7"].arm_key, first["user7"].propensity)
    assert len(stored) == 301
    other = Assigner(services.assignment_store, seed=3).start(background=False)
    for u, a in list(first.items())[:50]:
        c = other.assign("usr", u)
        assert (c.arm_key, c.propensity) == (a.arm_key, a.propensity)


def test_background_writer_and_refresh_threads(services: Services) -> None:
    exp_id = setup(services, "bg", unit="user")
    asg = Assigner(services.assignment_store, seed=4, refresh_s=0.05).start()
    try:
        asg.assign("bg", "u1")
        add_snapshot(services, exp_id, {"control": 1.0, "a": 0.0, "b": 0.0})
        import time

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            view = asg.view("bg")
            if view is not None and view.weights[0] == 1.0:
                break
            time.sleep(0.02)
        assert asg.view("bg").weights == (1.0, 0.0, 0.0)  # type: ignore[union-attr]
        assert asg.assign("bg", "u2").arm_key == "control"
    finally:
        asg.close()
    with services.session_factory() as s:
        assert s.scalar(select(UnitAssignment).where(UnitAssignment.unit_id == "u2")) is not None


def test_states_stopped_shipped_draft_unknown(services: Services) -> None:
    setup(services, "s-stop")
    setup(services, "s-ship")
    setup(services, "s-draft", start=False)
    setup(services, "s-nosnap", weights=None)
    asg = Assigner(services.assignment_store, seed=5).start(background=False)
    with UnitOfWork(services.session_factory) as uow:
        registry.stop_experiment(uow, key="s-stop", actor="t", reason="r")
        registry.ship_experiment(uow, key="s-ship", arm="a", actor="t", reason="r", force=True)
        uow.commit()
    asg.refresh()
    for _ in range(20):
        stop = asg.assign("s-stop", "x")
        ship = asg.assign("s-ship", "x")
        assert (stop.arm_key, stop.propensity) == ("control", 1.0)
        assert (ship.arm_key, ship.propensity) == ("a", 1.0)
    # the transition wrote the terminal snapshot: its id, never the running snapshot's
    with services.session_factory() as s:
        names = {sid: s.get(AllocationSnapshot, sid).policy_name  # type: ignore[union-attr]
                 for sid in (stop.snapshot_id, ship.snapshot_id)}
    assert names == {stop.snapshot_id: "stopped", ship.snapshot_id: "shipped"}
    with pytest.raises(Conflict, match="draft"):
        asg.assign("s-draft", "x")
    with pytest.raises(ExperimentNotFound):
        asg.assign("nope", "x")
    with pytest.raises(ExperimentNotFound):  # negative cache answers without the database
        asg.try_assign("nope", "x")
    nosnap = [asg.assign("s-nosnap", str(i)) for i in range(300)]
    assert all(a.propensity == pytest.approx(1 / 3) for a in nosnap)
    assert {a.snapshot_id for a in nosnap} == {None}


def test_a_draft_started_elsewhere_is_served_before_the_next_refresh(services: Services) -> None:
    """A cached draft is re-read, not refused, once it has been started (by this process or
    another): the first /assign after /start must not be a 409."""
    setup(services, "d-start", start=False)
    asg = Assigner(services.assignment_store, seed=7, refresh_s=3600).start(background=False)
    with pytest.raises(Conflict, match="draft"):
        asg.assign("d-start", "x")
    assert asg.view("d-start").status == "draft"  # type: ignore[union-attr]
    assert asg.try_assign("d-start", "x") is None  # the fast path defers a draft to assign()
    with UnitOfWork(services.session_factory) as uow:  # started by "another process"
        registry.start_experiment(uow, key="d-start", actor="t", reason="r")
        uow.commit()
    assert asg.assign("d-start", "x").arm_key in WEIGHTS  # no refresh in between
    # invalidate(): the API calls it after stop/ship, so it never serves the old state
    with UnitOfWork(services.session_factory) as uow:
        registry.stop_experiment(uow, key="d-start", actor="t", reason="r")
        uow.commit()
    asg.invalidate("d-start")
    got = asg.assign("d-start", "x")
    assert (got.arm_key, got.propensity) == ("control", 1.0)


def test_new_experiment_is_loaded_on_first_request(services: Services) -> None:
    asg = Assigner(services.assignment_store, seed=6).start(background=False)
    setup(services, "late")
    assert asg.try_assign("late", "u") is None  # not cached: the route then calls assign()
    assert asg.assign("late", "u").arm_key in WEIGHTS
    assert asg.try_assign("late", "u") is not None


def test_assign_endpoint(services: Services) -> None:
    from armlab.entrypoints.api.app import create_app

    setup(services, "api")
    setup(services, "api-draft", start=False)
    app = create_app(services=services)
    with TestClient(app) as client:
        url = "/v1/experiments/api/assign"
        ok = client.post(
            url,
            json={"unit_id": "u1", "context": {"page": "home"}},
            headers={"Authorization": "Bearer p-secret"},
        )
        assert ok.status_code == 200, ok.text
        body = ok.json()
        assert set(body) >= {
            "impression_id",
            "experiment_key",
            "arm",
            "variant",
            "propensity",
            "served_at",
        }
        assert body["experiment_key"] == "api"
        assert body["propensity"] == pytest.approx(WEIGHTS[body["arm"]])
        assert client.post(url, json={"unit_id": "u"}).status_code == 401
        assert (
            client.post(
                url, json={"unit_id": "u"}, headers={"Authorization": "Bearer r-secret"}
            ).status_code
            == 403
        )
        bad = client.post(url, json={"context": {}}, headers={"Authorization": "Bearer p-secret"})
        assert bad.status_code == 422 and "unit_id" in bad.text
        nf = client.post(
            "/v1/experiments/ghost/assign",
            json={"unit_id": "u"},
            headers={"Authorization": "Bearer p-secret"},
        )
        assert nf.status_code == 404 and nf.json()["type"] == "ExperimentNotFound"
        draft = client.post(
            "/v1/experiments/api-draft/assign",
            json={"unit_id": "u"},
            headers={"Authorization": "Bearer p-secret"},
        )
        assert draft.status_code == 409


def test_one_bad_sticky_row_does_not_lose_the_others(services: Services) -> None:
    """Write-behind batch with one row PostgreSQL refuses (a NUL in unit_id; the API rejects
    it at the edge, the service still must not lose its neighbours): the batch is split until
    the bad row is alone; every other row is stored."""
    exp_id = setup(services, "wb", unit="user")
    asg = Assigner(services.assignment_store, seed=5, refresh_s=0.05).start(background=False)
    for i in range(300):
        asg.assign("wb", f"user{i}" if i != 150 else "bad\x00user")
    asg.flush()
    with services.session_factory() as s:
        stored = set(s.scalars(select(UnitAssignment.unit_id)
                               .where(UnitAssignment.experiment_id == exp_id)))
    assert len(stored) == 299 and "bad\x00user" not in stored
    assert asg.write_errors == 1


def test_assign_and_recommend_share_the_event_unit_id_rule(services: Services) -> None:
    setup(services, "rule")
    from armlab.entrypoints.api.app import create_app

    with TestClient(create_app(services.settings, services)) as client:
        h = {"Authorization": "Bearer p-secret"}
        url = "/v1/experiments/rule/assign"
        assert client.post(url, json={"unit_id": "u1"}, headers=h).status_code == 200
        for bad in ("has space", "new\nline", "nul\x00", "x" * 129, ""):
            r = client.post(url, json={"unit_id": bad}, headers=h)
            assert r.status_code == 422, (bad, r.text)
            assert "unit_id" in r.json()["detail"]
        for ctx in ({"n": 2**63}, {"n": 2**64}, {"n": [-(10**30)]}, {"s": "\x00"},
                    {"d": [[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]}):
            r = client.post(url, json={"unit_id": "u2", "context": ctx}, headers=h)
            assert r.status_code == 422 and "context" in r.json()["detail"], r.text
        # NaN cannot be sent as JSON by the client library; send the raw token
        r = client.post(url, content=b'{"unit_id":"u3","context":{"x":NaN}}',
                        headers={**h, "Content-Type": "application/json"})
        assert r.status_code == 422, r.text
        # the fast path defers a non-JSON content type to the route, which answers 422
        r = client.post(url, content=b'{"unit_id":"u4"}',
                        headers={**h, "Content-Type": "text/plain"})
        assert r.status_code == 422, r.text
        rec = client.post("/v1/experiments/rule/recommend", headers=h, json={
            "unit_id": "x" * 200, "user": {"text": "hi"}, "candidates": [{"id": "m1"}]})
        assert rec.status_code == 422 and "unit_id" in rec.json()["detail"], rec.text
        rec = client.post("/v1/experiments/rule/recommend", headers=h, json={
            "unit_id": "a b", "user": {"text": "hi"}, "candidates": [{"id": "m1"}]})
        assert rec.status_code == 422 and "unit_id" in rec.json()["detail"], rec.text
