"""The allocator (:func:`armlab.services.allocator.run_allocation`) on the in-memory stores of
``tests/fakes_stores.py``: an A/B Thompson snapshot on matured sums, a rolled-back arm at
weight 0, a guardrail breach rolled back by the pass (unit request and user), terminal
snapshots written once, the auto-stop with its audit row, an interleaving snapshot and look
(with its auto-stop), a contextual snapshot, a failed experiment rolled back. Each scenario
also runs on a migrated SQLite file through the database adapter, and both storages must
have written the same snapshots, audit rows and states (same salt, same pass time: same
seed), so the fake cannot drift from the adapter unnoticed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import numpy as np
import pytest

from armlab.adapters.db.engine import make_engine, make_session_factory
from armlab.adapters.db.models import Experiment
from armlab.core.evidence import ArmSums
from armlab.core.records import NewSnapshot
from armlab.services import registry
from armlab.services.allocator import run_allocation
from armlab.services.interleaving_evaluation import ROW_KEY
from armlab.services.ports_allocation import AllocationStore, AllocationUnit
from tests.fakes_stores import LoggedImpression, MemoryAllocationStore
from tests.interleaving_data import preferring
from tests.store_backends import (
    T0,
    Backend,
    MemoryBackend,
    SqliteBackend,
    plain,
    rounded,
    snapshot_summary,
)

Scenario = Callable[[Backend], dict[str, Any]]


@pytest.fixture()
def sqlite(sqlite_url: str) -> Iterator[SqliteBackend]:
    engine = make_engine(sqlite_url)
    yield SqliteBackend(make_session_factory(engine))
    engine.dispose()


def both(sqlite: SqliteBackend, scenario: Scenario) -> dict[str, Any]:
    """The scenario's outcome in memory, asserted equal to the same run on SQLite."""
    got = scenario(MemoryBackend())
    assert rounded(got) == rounded(scenario(sqlite))
    return got


def ab(key: str = "ab", arms: tuple[str, ...] = ("control", "t1"), **fields: Any
       ) -> dict[str, Any]:
    return {"key": key, "salt": f"salt-{key}", "attribution_window_s": 3600,
            "arms": [{"key": a, "control": i == 0, "variant": {"kind": "popularity"}}
                     for i, a in enumerate(arms)], **fields}


def binary(n: float, clicks: float) -> ArmSums:
    return ArmSums(n=n, reward_sum=clicks, reward_sumsq=clicks, ipw_n=2 * n,
                   ipw_sum=2 * clicks, ipw_sumsq=4 * clicks, ipw_n_sq=4 * n,
                   feedback_n=clicks)


def young(exp_id: int, arm: str, n: int, clicks: int) -> list[LoggedImpression]:
    """Impressions inside the attribution window at T0 (the allocator must leave them out)."""
    at = T0 - timedelta(minutes=5)
    return [LoggedImpression(exp_id, arm, at, float(i < clicks), 0.5) for i in range(n)]


def outcome(b: Backend, exp_id: int, key: str) -> dict[str, Any]:
    return {"snapshots": snapshot_summary(b.snapshots(exp_id)),
            "audit": b.audit_actions(exp_id), "status": b.status(key)}


def thompson_ab(b: Backend) -> dict[str, Any]:
    exp_id = b.create(ab())
    b.add_sums(exp_id, {"control": binary(400, 40), "t1": binary(400, 80)})
    b.serve(young(exp_id, "control", 50, 40))  # recent clicks: still immature at T0
    written = run_allocation(b.allocation_store(), now=T0)
    return {"written": len(written), **outcome(b, exp_id, "ab")}


def test_thompson_snapshot_on_matured_sums(sqlite: SqliteBackend) -> None:
    got = both(sqlite, thompson_ab)
    assert got["written"] == 1
    (snap,) = got["snapshots"]
    assert snap["policy"] == "thompson"
    arms = snap["stats"]["arms"]
    assert arms["control"]["n"] == 450 and arms["control"]["immature_n"] == 50
    assert arms["control"]["matured_n"] == 400 and arms["control"]["matured_reward_sum"] == 40
    assert arms["t1"]["immature_n"] == 0
    assert sum(snap["weights"].values()) == pytest.approx(1.0)
    assert snap["weights"]["t1"] > 0.99  # 20 % against 10 % on 400 matured each


def rolled_back(b: Backend) -> dict[str, Any]:
    exp_id = b.create(ab(arms=("control", "t1", "t2"), exploration_floor=0.1))
    b.add_sums(exp_id, {"control": binary(300, 30), "t1": binary(300, 30),
                        "t2": binary(300, 90)})

    def roll(uow: Any) -> None:
        exp = uow.experiments.get("ab")
        exp.rolled_back = {"t2": {"summary": "latency breached"}}
    b.act(roll)
    run_allocation(b.allocation_store(), now=T0)
    return outcome(b, exp_id, "ab")


def test_a_rolled_back_arm_gets_weight_zero(sqlite: SqliteBackend) -> None:
    got = both(sqlite, rolled_back)
    (snap,) = got["snapshots"]
    assert snap["weights"]["t2"] == 0.0  # the best arm, but out of the allocation
    assert snap["weights"]["control"] + snap["weights"]["t1"] == pytest.approx(1.0)
    assert min(snap["weights"]["control"], snap["weights"]["t1"]) >= 0.1 - 1e-12
    assert snap["stats"]["rolled_back"] == ["t2"]
    assert got["status"][2] == {"t2": {"summary": "latency breached"}}


def rates(n: float, rate: float) -> ArmSums:
    """n impressions at propensity 1/3 with a 0/1 value at ``rate``."""
    k = round(rate * n)
    return ArmSums(n=n, reward_sum=k, reward_sumsq=k, ipw_n=3 * n, ipw_sum=3 * k,
                   ipw_sumsq=9 * k, ipw_n_sq=9 * n, feedback_n=k)


def skip_users(exp_id: int, arm: str, rate: float) -> list[LoggedImpression]:
    """100 sticky users of ``arm`` with 10 matured impressions each and about ``rate`` of
    them skipped (the per-user guardrail analysis reads these)."""
    at = T0 - timedelta(hours=1)
    return [LoggedImpression(exp_id, arm, at, 0.0, 1 / 3, {}, f"{arm}-{u}", 0,
                             {"skips": [float(j < skips), int(j < skips)]})
            for u in range(100) for skips in [round(rate * 10) + u % 3 - 1]
            for j in range(10)]


def guardrail_breach(b: Backend, unit: str) -> dict[str, Any]:
    exp_id = b.create(ab(arms=("control", "harm", "fine"), unit=unit, exploration_floor=0.05,
                         attribution_window_s=60, guardrails=[{
                             "key": "skips", "source": {"feedback": "skip"},
                             "harm": "increase", "margin": {"absolute": 0.01}}]))
    skips = {"control": 0.1, "harm": 0.3, "fine": 0.1}
    b.add_sums(exp_id, {a: rates(4000, 0.05) for a in skips})
    b.add_guardrail_sums(exp_id, "skips", {a: rates(4000, r) for a, r in skips.items()})
    if unit == "user":
        b.serve([i for a, r in skips.items() for i in skip_users(exp_id, a, r)])
    run_allocation(b.allocation_store(), now=T0)
    return outcome(b, exp_id, "ab")


@pytest.mark.parametrize("unit", ["request", "user"])
def test_guardrail_breach_rolls_the_arm_back(sqlite: SqliteBackend, unit: str) -> None:
    got = both(sqlite, lambda b: guardrail_breach(b, unit))
    assert got["audit"][-1] == ("rollback", "allocator")
    status, version, rolled = got["status"]
    assert status == "running" and list(rolled) == ["harm"] and version == 3
    first, second = got["snapshots"]
    assert first["weights"]["harm"] > 0 and second["weights"]["harm"] == 0.0
    assert second["stats"]["rolled_back"] == ["harm"]


def terminal(b: Backend) -> dict[str, Any]:
    stop_id, ship_id = b.create(ab("stop")), b.create(ab("ship", ("control", "t1", "t2")))
    store = b.allocation_store()
    passes = [len(run_allocation(store, now=T0))]  # two running snapshots
    # the transitions write their terminal snapshots themselves (registry)
    b.act(lambda uow: registry.stop_experiment(uow, key="stop", actor="ops", reason="done"))
    b.act(lambda uow: registry.ship_experiment(uow, key="ship", arm="t2", actor="ops",
                                               reason="win", force=True))
    passes.append(len(run_allocation(store, now=T0 + timedelta(minutes=1))))
    # a running snapshot newer than the stop (written before transitions wrote their own):
    # the allocator writes the terminal one again, once
    b.act(lambda uow: uow.evidence.add_snapshot(NewSnapshot(
        experiment_id=stop_id, created_at=T0, policy_name="thompson", policy_version="1",
        weights={"control": 0.5, "t1": 0.5}, stats={})))
    passes += [len(run_allocation(store, now=T0 + timedelta(minutes=i))) for i in (2, 3)]
    return {"passes": passes, "stop": outcome(b, stop_id, "stop"),
            "ship": outcome(b, ship_id, "ship")}


def test_terminal_snapshots_are_written_once(sqlite: SqliteBackend) -> None:
    got = both(sqlite, terminal)
    assert got["passes"] == [2, 0, 1, 0]
    policies = [s["policy"] for s in got["stop"]["snapshots"]]
    assert policies == ["thompson", "stopped", "thompson", "stopped"]
    assert got["stop"]["snapshots"][-1]["weights"] == {"control": 1.0, "t1": 0.0}
    assert got["stop"]["snapshots"][-1]["stats"] == {"status": "stopped", "arm": "control"}
    ship = got["ship"]["snapshots"]
    assert [s["policy"] for s in ship] == ["thompson", "shipped"]
    assert ship[-1]["weights"] == {"control": 0.0, "t1": 0.0, "t2": 1.0}


def auto_stop(b: Backend) -> dict[str, Any]:
    exp_id = b.create(ab(sequential={"min_samples": 100, "auto_stop": True}))
    b.add_sums(exp_id, {"control": binary(4000, 200), "t1": binary(4000, 400)})
    written = run_allocation(b.allocation_store(), now=T0)
    return {"written": len(written), **outcome(b, exp_id, "ab")}


def test_auto_stop_on_decided_evidence(sqlite: SqliteBackend) -> None:
    got = both(sqlite, auto_stop)
    # the running snapshot, then (same transaction) the stop and its control-only snapshot
    assert [s["policy"] for s in got["snapshots"]] == ["thompson", "stopped"]
    assert got["snapshots"][1]["weights"] == {"control": 1.0, "t1": 0.0}
    assert got["audit"] == [("create", "t"), ("start", "t"), ("stop", "allocator")]
    assert got["status"][0] == "stopped"
    assert got["status"][1] == 3  # created 1, started 2, stopped 3


def interleaving(b: Backend) -> dict[str, Any]:
    exp_id = b.create({
        "key": "il", "salt": "salt-il", "design": "interleaving",
        "arms": [{"key": a, "control": i == 0, "variant": {"kind": "popularity"}}
                 for i, a in enumerate("abcd")],
        "interleaving": {"rankers_per_request": 2, "min_units": 30, "planned_units": 500},
        "sequential": {"alpha": 0.05, "auto_stop": True},
    })
    b.add_tallies(exp_id, {("a", "b"): (50, 30, 5, 40, 8), ("a", "c"): (50, 30, 5, 40, 8)})
    run_allocation(b.allocation_store(), now=T0)
    return outcome(b, exp_id, "il")


def test_interleaving_snapshot(sqlite: SqliteBackend) -> None:
    got = both(sqlite, interleaving)
    (snap,) = got["snapshots"]
    st = snap["stats"]
    assert snap["policy"] == "dueling" and st["design"] == "interleaving" and st["m"] == 2
    assert st["wins"]["a|b"] == [30, 5] and st["wins"]["c|d"] == [0, 0]
    assert len(st["sets"]) == 6
    assert sum(s["probability"] for s in st["sets"]) == pytest.approx(1.0, abs=1e-12)
    assert sum(snap["weights"].values()) == pytest.approx(1.0)
    assert got["status"][0] == "running"  # no units yet: the look continues


def interleaving_look(b: Backend) -> dict[str, Any]:
    exp_id = b.create({
        "key": "il", "salt": "salt-il", "design": "interleaving",
        "arms": [{"key": a, "control": i == 0, "variant": {"kind": "popularity"}}
                 for i, a in enumerate("abc")],
        "interleaving": {"min_units": 30, "planned_units": 500, "aggregate": "mean"},
        "sequential": {"alpha": 0.05, "auto_stop": True},
    })
    rng = np.random.default_rng(5)
    units = preferring("b", "abc", 150, rng)
    units.update({f"z{i}": (2, {}) for i in range(10)})  # units without credits count too
    b.add_units(exp_id, {u: (n * 2, c) for u, (n, c) in units.items()})  # mean: / 2
    run_allocation(b.allocation_store(), now=T0)
    look = b.read(lambda uow: uow.evidence.latest_look(exp_id, ROW_KEY))
    return {"look": plain({"decision": look.decision, "evidence": look.evidence}),
            **outcome(b, exp_id, "il")}


def test_interleaving_look_and_auto_stop(sqlite: SqliteBackend) -> None:
    got = both(sqlite, interleaving_look)
    assert got["status"][0] == "stopped"
    assert [s["policy"] for s in got["snapshots"]] == ["interleaving", "stopped"]
    assert got["audit"][-1] == ("stop", "allocator")
    assert got["look"]["decision"] == "condorcet_winner"
    assert got["look"]["evidence"]["interleaving"]["condorcet_winner"] == "b"
    assert got["look"]["evidence"]["interleaving"]["units"] == 160


def contextual(b: Backend) -> dict[str, Any]:
    device = {"name": "device", "kind": "categorical", "levels": ["mobile", "desktop"]}
    exp_id = b.create(ab("ctx", policy={"name": "segment_thompson", "params": {
        "features": [device], "min_segment_n": 100}}))
    rng = np.random.default_rng(3)
    rates = {("mobile", "control"): 0.1, ("mobile", "t1"): 0.4,
             ("desktop", "control"): 0.4, ("desktop", "t1"): 0.1}
    old = T0 - timedelta(hours=2)
    b.serve([LoggedImpression(exp_id, arm, old, float(rng.random() < p), 0.5,
                              {"device": dev})
             for (dev, arm), p in rates.items() for _ in range(150)])
    # immature: t1 never clicked on mobile yet; must not count
    b.serve([LoggedImpression(exp_id, "t1", T0 - timedelta(minutes=5), 0.0, 0.5,
                              {"device": "mobile"})] * 300)
    run_allocation(b.allocation_store(), now=T0)
    return outcome(b, exp_id, "ctx")


def test_contextual_snapshot(sqlite: SqliteBackend) -> None:
    got = both(sqlite, contextual)
    (snap,) = got["snapshots"]
    assert snap["policy"] == "segment_thompson"
    assert snap["stats"]["contextual_rows"] == 600  # matured only
    seg = {r["segment"]["device"]: r for r in snap["stats"]["contextual"]["segments"]}
    assert seg["mobile"]["source"] == seg["desktop"]["source"] == "segment"
    assert seg["mobile"]["weights"][1] > 0.9 and seg["desktop"]["weights"][0] > 0.9


def failing_hook(b: Backend) -> dict[str, Any]:
    exp_id = b.create(ab())
    b.add_sums(exp_id, {"control": binary(100, 10), "t1": binary(100, 12)})

    def boom(uow: AllocationUnit, exp: Experiment, now: Any) -> None:
        exp.status = "stopped"  # written, then the transaction fails
        raise RuntimeError("the look failed")
    written = run_allocation(b.allocation_store(), now=T0, after_snapshot=boom)
    return {"written": len(written), **outcome(b, exp_id, "ab")}


def test_a_failed_experiment_is_rolled_back(sqlite: SqliteBackend) -> None:
    got = both(sqlite, failing_hook)
    assert got["written"] == 0 and got["snapshots"] == []
    assert got["status"][:2] == ("running", 2)


def test_the_memory_store_is_the_port() -> None:
    store = MemoryBackend().allocation_store()
    assert isinstance(store, AllocationStore) and isinstance(store, MemoryAllocationStore)
