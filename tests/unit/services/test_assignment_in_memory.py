"""The assignment cache (:class:`armlab.services.assignment.Assigner`) on the in-memory stores
of ``tests/fakes_stores.py``, after an allocation pass on the same in-memory state: the draws'
frequencies equal the snapshot's weights (propensity = weight), sticky units are written once
and kept (first writer wins, across processes), a stopped experiment serves the control with
propensity 1, and a unit stuck to a rolled-back arm gets the control. Each scenario also runs
on a migrated SQLite file through the database adapters; with the same seeds both storages
must serve the same arms."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from armlab.adapters.db.engine import make_engine, make_session_factory
from armlab.core.clock import utcnow
from armlab.core.evidence import ArmSums
from armlab.services import registry
from armlab.services.allocator import run_allocation
from armlab.services.assignment import Assigner
from armlab.services.ports_assignment import AssignmentStore
from tests.fakes_stores import MemoryAssignmentStore
from tests.store_backends import T0, Backend, MemoryBackend, SqliteBackend

Scenario = Callable[[Backend], dict[str, Any]]
N = 20_000


@pytest.fixture()
def sqlite(sqlite_url: str) -> Iterator[SqliteBackend]:
    engine = make_engine(sqlite_url)
    yield SqliteBackend(make_session_factory(engine))
    engine.dispose()


def both(sqlite: SqliteBackend, scenario: Scenario) -> dict[str, Any]:
    got = scenario(MemoryBackend())
    assert got == scenario(sqlite)
    return got


def body(key: str, unit: str = "request", arms: tuple[str, ...] = ("control", "t1", "t2")
         ) -> dict[str, Any]:
    return {"key": key, "salt": f"salt-{key}", "unit": unit, "exploration_floor": 0.1,
            "arms": [{"key": a, "control": i == 0, "variant": {"kind": "popularity"}}
                     for i, a in enumerate(arms)]}


def binary(n: float, clicks: float) -> ArmSums:
    return ArmSums(n=n, reward_sum=clicks, reward_sumsq=clicks, ipw_n=n, ipw_sum=clicks,
                   ipw_sumsq=clicks, ipw_n_sq=n, feedback_n=clicks)


def allocated(b: Backend, key: str, unit: str = "request") -> int:
    """A running experiment with an allocation snapshot of unequal weights."""
    exp_id = b.create(body(key, unit))
    b.add_sums(exp_id, {"control": binary(200, 20), "t1": binary(200, 26),
                        "t2": binary(200, 24)})
    run_allocation(b.allocation_store(), now=T0)
    return exp_id


def request_draws(b: Backend) -> dict[str, Any]:
    exp_id = allocated(b, "req")
    (snap,) = b.snapshots(exp_id)
    assigner = Assigner(b.assignment_store(), seed=11).start(background=False)
    got = [assigner.assign("req", f"r{i}") for i in range(N)]
    assert {a.snapshot_id for a in got} == {snap.id}
    return {"weights": dict(snap.weights), "arms": [a.arm_key for a in got],
            "propensities": {a.arm_key: a.propensity for a in got}}


def test_draw_frequencies_equal_the_snapshot_weights(sqlite: SqliteBackend) -> None:
    got = both(sqlite, request_draws)
    weights = got["weights"]
    assert len(set(weights.values())) == 3 and min(weights.values()) >= 0.1 - 1e-12
    assert got["propensities"] == weights  # propensity = the drawn arm's weight
    counts = Counter(got["arms"])
    for arm, w in weights.items():
        sd = np.sqrt(N * w * (1 - w))
        assert abs(counts[arm] - N * w) < 4.5 * sd, (arm, counts[arm], N * w)


def sticky_units(b: Backend) -> dict[str, Any]:
    exp_id = allocated(b, "usr", unit="user")
    store = b.assignment_store()
    # another process stored this unit first: its arm wins
    store.store_sticky([{"experiment_id": exp_id, "unit_id": "u0", "arm_key": "t2",
                         "propensity": 0.25, "assigned_at": utcnow()}])
    first = Assigner(store, seed=3).start(background=False)
    served = {f"u{i}": {(a.arm_key, a.propensity) for a in
                        (first.assign("usr", f"u{i}") for _ in range(3))}
              for i in range(300)}
    first.flush()
    first.flush()  # nothing queued twice
    stored = b.sticky(exp_id)
    # a second process, after a new snapshot, serves the stored arms
    b.add_sums(exp_id, {"t2": binary(2000, 600)})
    run_allocation(b.allocation_store(), now=T0.replace(hour=13))
    second = Assigner(b.assignment_store(), seed=4).start(background=False)
    again = {u: (a.arm_key, a.propensity) for u in served
             for a in [second.assign("usr", u)]}
    return {"served": served, "stored": stored, "again": again}


def test_sticky_units_are_written_once_and_kept(sqlite: SqliteBackend) -> None:
    mem = MemoryBackend()
    got = sticky_units(mem)
    assert got == sticky_units(sqlite)
    assert all(len(arms) == 1 for arms in got["served"].values())  # the same arm every time
    served = {u: next(iter(arms)) for u, arms in got["served"].items()}
    assert served["u0"] == ("t2", 0.25)  # the stored arm, not a new draw
    assert got["stored"] == served and len(got["stored"]) == 300
    assert mem.assign.writes == 300  # u0 (stored first) + 299 new units, one write each
    assert got["again"] == served
    assert len({arm for arm, _ in served.values()}) == 3


def converge(b: Backend) -> dict[str, Any]:
    """Two processes load different snapshots, draw different arms for the same units and
    write behind: the first write wins and the other process serves it after a refresh."""
    exp_id = allocated(b, "cv", unit="user")
    early = Assigner(b.assignment_store()).start(background=False)
    b.add_sums(exp_id, {"control": binary(5000, 2000)})  # the control now wins by far
    run_allocation(b.allocation_store(), now=T0.replace(hour=13))
    late = Assigner(b.assignment_store()).start(background=False)
    units = [f"u{i}" for i in range(200)]
    first = {u: early.assign("cv", u).arm_key for u in units}
    second = {u: late.assign("cv", u).arm_key for u in units}
    early.flush()
    late.flush()
    late.refresh()
    return {"differ": sum(first[u] != second[u] for u in units),
            "stored": {u: a for u, (a, _) in b.sticky(exp_id).items()} == first,
            "late": {u: late.assign("cv", u).arm_key for u in units} == first}


def test_the_first_stored_sticky_arm_wins_across_processes(sqlite: SqliteBackend) -> None:
    got = both(sqlite, converge)
    assert got["differ"] > 0  # the processes did draw differently
    assert got["stored"] and got["late"]


def stopped(b: Backend) -> dict[str, Any]:
    allocated(b, "stp")
    allocated(b, "rb", unit="user")
    assigner = Assigner(b.assignment_store(), seed=5).start(background=False)
    before = {u: assigner.assign("rb", u).arm_key for u in map(str, range(60))}
    b.act(lambda uow: registry.stop_experiment(uow, key="stp", actor="ops", reason="done"))

    def roll(uow: Any) -> None:
        uow.experiments.get("rb").rolled_back = {"t1": {"summary": "breach"}}
    b.act(roll)
    run_allocation(b.allocation_store(), now=T0.replace(hour=13))
    assigner.refresh()
    stop = {(a.arm_key, a.propensity) for a in (assigner.assign("stp", f"s{i}")
                                                 for i in range(200))}
    after = {u: (a.arm_key, a.propensity) for u in before
             for a in [assigner.assign("rb", u)]}
    view = assigner.view("rb")
    assert view is not None
    return {"stop": stop, "before": before, "after": after, "rb_weights": view.weights}


def test_stopped_serves_the_control_and_rolled_back_units_get_it(
        sqlite: SqliteBackend) -> None:
    got = both(sqlite, stopped)
    assert got["stop"] == {("control", 1.0)}
    stuck = [u for u, arm in got["before"].items() if arm == "t1"]
    assert stuck, got["before"]
    assert all(got["after"][u] == ("control", 1.0) for u in stuck)
    assert all(got["after"][u][0] == arm for u, arm in got["before"].items() if arm != "t1")
    assert got["rb_weights"][1] == 0.0  # no new unit gets the rolled-back arm


def test_the_memory_store_is_the_port() -> None:
    store = MemoryBackend().assignment_store()
    assert isinstance(store, AssignmentStore) and isinstance(store, MemoryAssignmentStore)
