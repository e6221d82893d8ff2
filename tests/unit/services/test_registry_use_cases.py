"""The registry's use cases and the allocator's decision step through a fake unit of work:
the life cycle, the audit trail, the ship guard against the evidence, and auto-stop."""

from __future__ import annotations

from typing import Any

import pytest

from armlab.core.evidence import ArmSums
from armlab.core.specs import ExperimentSpec
from armlab.errors import (
    ArmNotFound,
    Conflict,
    ExperimentExists,
    ExperimentNotFound,
    IllegalTransition,
    ValidationFailed,
)
from armlab.services import registry
from armlab.services.allocator import run_decisions
from armlab.services.results import build_results
from tests.builders import experiment_spec
from tests.fakes import FakeUnitOfWork


def spec(key: str = "exp", **overrides: Any) -> ExperimentSpec:
    return experiment_spec(key, **{"exploration_floor": 0.1,
                                   "sequential": {"min_samples": 100, "auto_stop": True},
                                   **overrides})


def arm(n: float, clicks: float, p: float = 0.5) -> ArmSums:
    return ArmSums(n=n, reward_sum=clicks, reward_sumsq=clicks, ipw_n=n / p,
                   ipw_sum=clicks / p, ipw_sumsq=clicks / p**2, ipw_n_sq=n / p**2)


@pytest.fixture()
def uow() -> FakeUnitOfWork:
    u = FakeUnitOfWork()
    registry.create_experiment(u, spec=spec(), actor="ops")
    registry.start_experiment(u, key="exp", actor="ops", reason="go")
    return u


def test_life_cycle_is_audited(uow: FakeUnitOfWork) -> None:
    registry.stop_experiment(uow, key="exp", actor="ops", reason="enough")
    exp = registry.get_experiment(uow, key="exp")
    assert exp.status == "stopped" and exp.ended_at is not None
    rows = registry.list_audit(uow, key="exp")
    assert [(r.action, r.actor, r.reason) for r in rows] == [
        ("create", "ops", ""), ("start", "ops", "go"), ("stop", "ops", "enough")]
    assert rows[2].before["status"] == "running" and rows[2].after["status"] == "stopped"
    with pytest.raises(IllegalTransition, match="cannot start"):
        registry.start_experiment(uow, key="exp", actor="ops")
    with pytest.raises(ExperimentExists):
        registry.create_experiment(uow, spec=spec(), actor="ops")
    with pytest.raises(ExperimentNotFound):
        registry.get_experiment(uow, key="nope")
    with pytest.raises(ValidationFailed, match="archived"):
        registry.list_experiments(uow, status="archived")
    assert registry.unique_key(uow, "exp") == "exp-2"


def test_ship_guard_follows_the_evidence(uow: FakeUnitOfWork) -> None:
    exp = registry.get_experiment(uow, key="exp")
    uow.evidence.sums[exp.id] = {"control": arm(20_000, 1400), "t1": arm(20_000, 1000)}
    with pytest.raises(ArmNotFound, match="no arm 'zz'"):
        registry.ship_experiment(uow, key="exp", arm="zz", actor="ops", reason="r")
    with pytest.raises(Conflict, match="treatment worse"):
        registry.ship_experiment(uow, key="exp", arm="t1", actor="ops", reason="r")
    assert registry.get_experiment(uow, key="exp").status == "running"
    registry.ship_experiment(uow, key="exp", arm="t1", actor="ops", reason="r", force=True)
    last = registry.list_audit(uow, key="exp")[-1]
    assert last.action == "ship" and last.evidence["force"] is True
    assert "treatment worse" in last.evidence["overridden"]
    assert last.evidence["sequential"]["arms"][0]["decision"] == "treatment_worse"


def test_auto_stop_records_decisions_and_stops_with_evidence(uow: FakeUnitOfWork) -> None:
    exp = registry.get_experiment(uow, key="exp")
    uow.evidence.sums[exp.id] = {"control": arm(20_000, 1000), "t1": arm(20_000, 1400)}
    ev = run_decisions(uow, exp)
    assert ev["stored"] == 1 and ev["stopped"] is True
    assert [d.decision for d in uow.evidence.decisions] == ["treatment_better"]
    assert exp.status == "stopped"
    stop = registry.list_audit(uow, key="exp")[-1]
    assert stop.action == "stop" and stop.actor == "allocator"
    assert "treatment_better" in stop.reason and stop.evidence["stop"] is True
    # results serve the control now, and show the decision
    res = build_results(uow, exp)
    assert [a["weight"] for a in res["arms"]] == [1.0, 0.0]
    assert res["sequential"]["arms"][0]["decision"] == "treatment_better"


def test_no_decision_row_when_nothing_changed(uow: FakeUnitOfWork) -> None:
    exp = registry.get_experiment(uow, key="exp")
    uow.evidence.sums[exp.id] = {"control": arm(4000, 200), "t1": arm(4000, 210)}
    assert run_decisions(uow, exp)["stored"] == 1
    assert run_decisions(uow, exp)["stored"] == 0
    assert exp.status == "running"  # nothing decided: auto_stop does not fire
