"""Registry on real PostgreSQL: the API life cycle and the concurrent ship/stop race."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from armlab.adapters.db.engine import make_engine, make_session_factory
from armlab.adapters.db.models import AuditLog, Experiment
from armlab.adapters.db.uow import UnitOfWork
from armlab.core.specs import ExperimentSpec
from armlab.entrypoints.api.app import create_app
from armlab.errors import ArmlabError, ConcurrentModification, ExperimentExists
from armlab.services import registry
from armlab.settings import Settings

pytestmark = pytest.mark.integration

TOKENS = "ops:admin:admin-secret,ro:reader:reader-secret"
ADMIN = {"Authorization": "Bearer admin-secret"}
READER = {"Authorization": "Bearer reader-secret"}
ARMS = [
    {"key": "control", "control": True, "variant": {"kind": "popularity"}},
    {"key": "a", "variant": {"kind": "bi_encoder", "model": "all-MiniLM-L6-v2"}},
    {"key": "b", "variant": {"kind": "popularity"}},
]


def body(key: str) -> dict[str, Any]:
    return {"key": key, "name": key, "exploration_floor": 0.05, "arms": ARMS,
            "sequential": {"alpha": 0.05, "tau2": 0.01}}


@pytest.fixture()
def sf(pg_url: str) -> Iterator[Any]:
    engine = make_engine(pg_url, pool_size=8)
    yield make_session_factory(engine)
    engine.dispose()


def test_api_lifecycle_on_postgres(pg_url: str) -> None:
    settings = Settings(database_url=pg_url, auth_tokens=TOKENS, auth_disabled=False,
                        transport="memory")
    with TestClient(create_app(settings)) as c:
        assert c.get("/readyz").json()["checks"] == {"database": "ok"}
        r = c.post("/v1/experiments", json=body("home-recs"), headers=ADMIN)
        assert r.status_code == 201, r.text
        assert r.json()["created_at"].endswith("Z")
        assert c.post("/v1/experiments", json=body("home-recs"), headers=ADMIN).status_code == 409
        bad = body("x") | {"exploration_floor": 0.4}
        r = c.post("/v1/experiments", json=bad, headers=ADMIN)
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "exploration_floor"
        assert c.post("/v1/experiments/home-recs/stop", json={"reason": "x"},
                      headers=ADMIN).status_code == 409
        assert c.post("/v1/experiments/home-recs/start", headers=READER).status_code == 403
        assert c.post("/v1/experiments/home-recs/start", headers=ADMIN).json()["version"] == 2
        assert c.post("/v1/experiments/home-recs/start", headers=ADMIN).status_code == 409
        r = c.post("/v1/experiments/home-recs/ship", json={"arm": "zz", "reason": "x"},
                   headers=ADMIN)
        assert r.status_code == 404
        r = c.post("/v1/experiments/home-recs/ship", json={"arm": "a", "reason": "win"},
                   headers=ADMIN)
        assert r.status_code == 200 and r.json()["shipped_arm"] == "a"
        res = c.get("/v1/experiments/home-recs/results", headers=READER).json()
        assert {a["key"]: a["weight"] for a in res["arms"]} == {"control": 0, "a": 1, "b": 0}
        shown = c.get("/v1/experiments/home-recs", headers=READER).json()
        assert shown["sequential"]["tau2"] == 0.01 and shown["status"] == "shipped"
        rows = c.get("/v1/experiments/home-recs/audit", headers=READER).json()["entries"]
        assert [(r["action"], r["actor"]) for r in rows] == [
            ("create", "ops"), ("start", "ops"), ("ship", "ops")
        ]
        assert rows[2]["before"]["version"] == 2 and rows[2]["after"]["version"] == 3


def _race(
    sf: Any, calls: list[Callable[[UnitOfWork], Any]], barrier: threading.Barrier
) -> list[object]:
    """Run each call in its own thread and transaction; return each outcome (result or error)."""
    outcomes: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            with UnitOfWork(sf) as uow:
                calls[i](uow)
                uow.commit()
            outcomes[i] = "ok"
        except ArmlabError as exc:
            outcomes[i] = exc
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            outcomes[i] = exc
            barrier.abort()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return outcomes


@pytest.mark.parametrize("mix", ["ship-ship", "stop-stop", "ship-stop"])
def test_concurrent_terminal_transitions_leave_exactly_one(
    sf: Any, monkeypatch: pytest.MonkeyPatch, mix: str
) -> None:
    """N writers that all read ``running`` race; exactly one terminal change and audit row.

    The barrier sits in the service after the status check and before the UPDATE, so every
    round really interleaves: all writers have read version 2 before any writes. Without the
    version check every writer would succeed and each would leave an audit row.
    """
    writers, rounds = 4, 12
    barrier = threading.Barrier(writers, timeout=30)
    real_assert = registry._assert_variants_frozen

    def rendezvous(exp: Experiment) -> None:
        if exp.status == "running":  # only the racing stop/ship calls, not the set-up start
            barrier.wait()
        real_assert(exp)

    monkeypatch.setattr(registry, "_assert_variants_frozen", rendezvous)
    for rnd in range(rounds):
        key = f"race-{mix}-{rnd}"
        with UnitOfWork(sf) as uow:
            registry.create_experiment(uow, spec=ExperimentSpec.model_validate(body(key)),
                                      actor="ops")
            registry.start_experiment(uow, key=key, actor="ops")
            uow.commit()
        barrier.reset()

        def ship(arm: str, key: str = key) -> Callable[[UnitOfWork], Any]:
            return lambda uow: registry.ship_experiment(uow, key=key, arm=arm,
                                                       actor=f"ship-{arm}", reason="race")

        def stop(i: int, key: str = key) -> Callable[[UnitOfWork], Any]:
            return lambda uow: registry.stop_experiment(uow, key=key, actor=f"stop-{i}",
                                                       reason="race")

        arms = ["a", "b", "control", "a"]
        calls = {
            "ship-ship": [ship(arms[i]) for i in range(writers)],
            "stop-stop": [stop(i) for i in range(writers)],
            "ship-stop": [ship(arms[i]) if i % 2 == 0 else stop(i) for i in range(writers)],
        }[mix]
        outcomes = _race(sf, calls, barrier)
        winners = [i for i, o in enumerate(outcomes) if o == "ok"]
        losers = [o for o in outcomes if o != "ok"]
        assert len(winners) == 1, (rnd, outcomes)
        assert all(isinstance(o, ConcurrentModification) for o in losers), (rnd, outcomes)

        with UnitOfWork(sf) as uow:
            s = uow.session
            exp = registry.get_experiment(uow, key=key)
            rows = list(s.scalars(select(AuditLog).where(AuditLog.experiment_id == exp.id)
                                  .order_by(AuditLog.id)))
        terminal = [r for r in rows if r.action in ("stop", "ship")]
        assert len(terminal) == 1, (rnd, [(r.action, r.actor) for r in rows])
        row = terminal[0]
        assert exp.version == 3 and row.after["version"] == 3 and row.before["version"] == 2
        assert exp.status == row.after["status"]
        assert exp.shipped_arm_key == row.after["shipped_arm"]
        w = winners[0]
        if exp.status == "shipped":
            assert row.actor == f"ship-{exp.shipped_arm_key}"
            assert exp.shipped_arm_key == arms[w]
        else:
            assert exp.status == "stopped" and row.actor == f"stop-{w}"


def test_concurrent_creates_of_one_key_register_it_once(sf: Any) -> None:
    writers = 4
    barrier = threading.Barrier(writers, timeout=30)
    spec = ExperimentSpec.model_validate(body("dup"))

    def create(uow: UnitOfWork) -> None:
        barrier.wait()
        registry.create_experiment(uow, spec=spec, actor="ops")

    outcomes = _race(sf, [create] * writers, barrier)
    assert outcomes.count("ok") == 1, outcomes
    assert all(isinstance(o, ExperimentExists) for o in outcomes if o != "ok"), outcomes
    with UnitOfWork(sf) as uow:
        s = uow.session
        assert len(registry.list_experiments(uow)) == 1
        assert len(list(s.scalars(select(AuditLog)))) == 1
