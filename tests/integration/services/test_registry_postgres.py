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
from armlab.errors import ArmlabError, ExperimentExists, IllegalTransition
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
    """N writers race to stop/ship one running experiment; exactly one terminal change and
    audit row.

    The barrier sits in the service just before the locked read of the experiment, so every
    round really races for the row lock. The winner changes the status; each loser waits for
    the lock, then reads the winner's terminal status and gets IllegalTransition (409). (The
    version check behind ConcurrentModification still guards an object read earlier in the
    same session: tests/unit/services/test_registry_sqlite.py.)
    """
    writers, rounds = 4, 12
    barrier = threading.Barrier(writers, timeout=30)
    real_get = registry.get_experiment

    def rendezvous(uow: Any, *, key: str, for_update: bool = False) -> Experiment:
        if for_update:  # only the racing stop/ship calls
            barrier.wait()
        return real_get(uow, key=key, for_update=for_update)

    monkeypatch.setattr(registry, "get_experiment", rendezvous)
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
        assert all(isinstance(o, IllegalTransition) for o in losers), (rnd, outcomes)

        with UnitOfWork(sf) as uow:
            s = uow.session
            exp = registry.get_experiment(uow, key=key)
            rows = list(s.scalars(select(AuditLog).where(AuditLog.experiment_id == exp.id)
                                  .order_by(AuditLog.id)))
        terminal = [r for r in rows if r.action in ("stop", "ship")]
        actions = [r.action for r in terminal]
        # The lock serialises the writers: one terminal change, or (ship-stop) a stop that a
        # ship then legally follows (stopped -> shipped); never two changes from one state.
        assert actions in (["stop"], ["ship"], ["stop", "ship"]), (rnd, outcomes, actions)
        assert mix == "ship-stop" or len(terminal) == 1, (rnd, outcomes)
        assert len(winners) == len(terminal), (rnd, outcomes, actions)
        for i, row in enumerate(terminal):
            assert (row.before["version"], row.after["version"]) == (2 + i, 3 + i)
            assert row.before["status"] == ("running" if i == 0 else "stopped")
        row = terminal[-1]
        assert exp.version == 2 + len(terminal)
        assert exp.status == row.after["status"]
        assert exp.shipped_arm_key == row.after["shipped_arm"]
        actors = {f"ship-{arms[i]}" if i % 2 == 0 or mix == "ship-ship" else f"stop-{i}"
                  for i in winners} if mix != "stop-stop" else {f"stop-{i}" for i in winners}
        assert {r.actor for r in terminal} == actors, (rnd, outcomes, actions)
        if exp.status == "shipped":
            assert row.actor == f"ship-{exp.shipped_arm_key}"


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
