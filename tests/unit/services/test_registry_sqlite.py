"""Registry service, unit of work and results on a migrated SQLite file."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from armlab.adapters.db.engine import make_engine, make_session_factory
from armlab.adapters.db.models import AllocationSnapshot, ArmStats, AuditLog, Experiment
from armlab.adapters.db.uow import UnitOfWork
from armlab.core.specs import ExperimentSpec
from armlab.errors import (
    ArmNotFound,
    ConcurrentModification,
    ExperimentExists,
    ExperimentNotFound,
    IllegalTransition,
    ValidationFailed,
)
from armlab.services import registry
from armlab.services.results import build_results
from tests.builders import MINILM, experiment_spec


def spec(key: str = "exp", **overrides: Any) -> ExperimentSpec:
    return experiment_spec(key, treatments=[("a", MINILM), "b"], **overrides)


@pytest.fixture()
def sf(sqlite_url: str) -> Any:
    engine = make_engine(sqlite_url)
    yield make_session_factory(engine)
    engine.dispose()


def register(sf: sessionmaker[Any], key: str = "exp", *, start: bool = False) -> None:
    with UnitOfWork(sf) as uow:
        registry.create_experiment(uow, spec=spec(key), actor="ops")
        if start:
            registry.start_experiment(uow, key=key, actor="ops")
        uow.commit()


def audit_rows(sf: sessionmaker[Any], key: str = "exp") -> list[AuditLog]:
    with UnitOfWork(sf) as uow:
        return registry.list_audit(uow, key=key)


def test_create_stores_spec_and_audits(sf: Any) -> None:
    with UnitOfWork(sf) as uow:
        exp = registry.create_experiment(
            uow, spec=spec(salt="s1", sequential={"alpha": 0.1, "auto_stop": True}), actor="ops"
        )
        uow.commit()
    with UnitOfWork(sf) as uow:
        got = registry.get_experiment(uow, key="exp")
        assert got.status == "draft" and got.version == 1 and got.salt == "s1"
        assert got.control_arm_key == "control"
        assert got.sequential["alpha"] == 0.1 and got.sequential["auto_stop"] is True
        assert got.sequential["min_samples"] == 100  # defaults are stored, not implied
        assert [(a.key, a.is_control, a.position) for a in got.arms] == [
            ("control", True, 0), ("a", False, 1), ("b", False, 2)
        ]
        assert got.arms[1].variant["pooling"] == "mean"  # normalised by validate_variant
    rows = audit_rows(sf)
    assert [(r.action, r.actor, r.before) for r in rows] == [("create", "ops", {})]
    assert rows[0].after["arms"] == ["control", "a", "b"]
    assert exp.name == "exp"  # name defaults to the key


def test_unit_of_work_rolls_back_without_commit(sf: Any) -> None:
    with UnitOfWork(sf) as uow:
        registry.create_experiment(uow, spec=spec(), actor="ops")
    with sf() as s:
        assert s.scalar(select(func.count()).select_from(Experiment)) == 0
        assert s.scalar(select(func.count()).select_from(AuditLog)) == 0
    uow2 = UnitOfWork(sf)
    with pytest.raises(RuntimeError, match="outside"):
        _ = uow2.session


def test_unit_of_work_rolls_back_on_error(sf: Any) -> None:
    with pytest.raises(ExperimentNotFound), UnitOfWork(sf) as uow:
        registry.create_experiment(uow, spec=spec(), actor="ops")
        registry.start_experiment(uow, key="missing", actor="ops")
        uow.commit()
    with sf() as s:
        assert s.scalar(select(func.count()).select_from(Experiment)) == 0


def test_duplicate_and_missing_keys(sf: Any) -> None:
    register(sf)
    with pytest.raises(ExperimentExists, match="'exp'"), UnitOfWork(sf) as uow:
        registry.create_experiment(uow, spec=spec(), actor="ops")
    with UnitOfWork(sf) as uow, pytest.raises(ExperimentNotFound, match="'nope'"):
        registry.get_experiment(uow, key="nope")


def test_list_filters_by_status(sf: Any) -> None:
    register(sf, "d1")
    register(sf, "r1", start=True)
    register(sf, "r2", start=True)
    with UnitOfWork(sf) as uow:
        assert [e.key for e in registry.list_experiments(uow)] == ["r2", "r1", "d1"]
        assert [e.key for e in registry.list_experiments(uow, status="running")] == ["r2", "r1"]
        assert registry.list_experiments(uow, status="shipped") == []
        with pytest.raises(ValidationFailed) as err:
            registry.list_experiments(uow, status="archived")
        assert err.value.field == "status"


def test_transitions_audit_before_after_and_timestamps(sf: Any) -> None:
    register(sf, start=True)
    with UnitOfWork(sf) as uow:
        exp = registry.stop_experiment(uow, key="exp", actor="bob", reason="guardrail",
                                      evidence={"p": 0.01})
        uow.commit()
    assert exp.status == "stopped" and exp.ended_at is not None and exp.version == 3
    with UnitOfWork(sf) as uow:
        exp = registry.ship_experiment(uow, key="exp", arm="b", actor="eve", reason="win")
        uow.commit()
    assert exp.status == "shipped" and exp.shipped_arm_key == "b" and exp.version == 4
    rows = audit_rows(sf)
    assert [(r.action, r.actor) for r in rows] == [
        ("create", "ops"), ("start", "ops"), ("stop", "bob"), ("ship", "eve")
    ]
    assert rows[2].before == {"status": "running", "shipped_arm": None, "version": 2}
    assert rows[2].after == {"status": "stopped", "shipped_arm": None, "version": 3}
    assert rows[2].evidence == {"p": 0.01} and rows[2].reason == "guardrail"
    assert rows[3].after == {"status": "shipped", "shipped_arm": "b", "version": 4}


@pytest.mark.parametrize("status", ["draft", "running", "stopped", "shipped"])
def test_illegal_transitions_raise_and_change_nothing(sf: Any, status: str) -> None:
    register(sf, start=status != "draft")
    with UnitOfWork(sf) as uow:
        if status == "stopped":
            registry.stop_experiment(uow, key="exp", actor="ops", reason="r")
        if status == "shipped":
            registry.ship_experiment(uow, key="exp", arm="a", actor="ops", reason="r")
        uow.commit()
    n_audit = len(audit_rows(sf))
    calls = {
        "start": lambda uow: registry.start_experiment(uow, key="exp", actor="x"),
        "stop": lambda uow: registry.stop_experiment(uow, key="exp", actor="x", reason="r"),
        "ship": lambda uow: registry.ship_experiment(uow, key="exp", arm="a", actor="x",
                                                    reason="r"),
    }
    legal = {"draft": {"start"}, "running": {"stop", "ship"}, "stopped": {"ship"},
             "shipped": set()}[status]
    for action, call in calls.items():
        if action in legal:
            continue
        with pytest.raises(IllegalTransition, match=f"cannot {action}.*it is {status}"):
            with UnitOfWork(sf) as uow:
                call(uow)
                uow.commit()
        with UnitOfWork(sf) as uow:
            assert registry.get_experiment(uow, key="exp").status == status
        assert len(audit_rows(sf)) == n_audit


def test_ship_unknown_arm(sf: Any) -> None:
    register(sf, start=True)
    with pytest.raises(ArmNotFound, match="no arm 'zz'; its arms are control, a, b"):
        with UnitOfWork(sf) as uow:
            registry.ship_experiment(uow, key="exp", arm="zz", actor="x", reason="r")
    with UnitOfWork(sf) as uow:
        assert registry.get_experiment(uow, key="exp").status == "running"
    assert len(audit_rows(sf)) == 2


def test_stale_version_is_concurrent_modification_and_rolls_back(sf: Any) -> None:
    """Two writers read version 2; the second UPDATE matches no row and nothing of it lands."""
    register(sf, start=True)
    with UnitOfWork(sf) as slow:
        # Hold the object: the identity map is weak, and a re-read would see the new state.
        seen = registry.get_experiment(slow, key="exp")
        assert (seen.version, seen.status) == (2, "running")
        with UnitOfWork(sf) as fast:
            registry.stop_experiment(fast, key="exp", actor="fast", reason="r")
            fast.commit()
        with pytest.raises(ConcurrentModification, match="changed by another request"):
            registry.ship_experiment(slow, key="exp", arm="a", actor="slow", reason="r")
    with UnitOfWork(sf) as uow:
        exp = registry.get_experiment(uow, key="exp")
        assert (exp.status, exp.shipped_arm_key, exp.version) == ("stopped", None, 3)
    assert [r.action for r in audit_rows(sf)] == ["create", "start", "stop"]


def test_variants_are_immutable_once_running(sf: Any) -> None:
    register(sf, start=True)
    with pytest.raises(IllegalTransition, match="immutable"), UnitOfWork(sf) as uow:
        exp = registry.get_experiment(uow, key="exp")
        exp.arms[1].variant = {"kind": "popularity"}
        registry.stop_experiment(uow, key="exp", actor="x", reason="r")
    with UnitOfWork(sf) as uow:
        exp = registry.get_experiment(uow, key="exp")
        assert exp.arms[1].variant["kind"] == "bi_encoder" and exp.status == "running"


def test_guardrails_are_immutable_once_running(sf: Any) -> None:
    g = {"key": "skips", "source": {"feedback": "skip"}, "harm": "increase"}
    with UnitOfWork(sf) as uow:
        registry.create_experiment(uow, spec=spec(guardrails=[g]), actor="t")
        registry.start_experiment(uow, key="exp", actor="t")
        uow.commit()
    with pytest.raises(IllegalTransition, match="guardrails are immutable"), UnitOfWork(sf) as uow:
        exp = registry.get_experiment(uow, key="exp")
        exp.guardrails = []
        registry.stop_experiment(uow, key="exp", actor="x", reason="r")
    with UnitOfWork(sf) as uow:
        exp = registry.get_experiment(uow, key="exp")
        assert [x["key"] for x in exp.guardrails] == ["skips"] and exp.status == "running"


def test_evidence_is_made_json_safe(sf: Any) -> None:
    register(sf, start=True)
    evidence = {"p": float("nan"), "n": np.int64(7), "lam": np.float64(2.5),
                "ci": np.array([0.1, 0.2]), "inf": float("inf"), "arms": ("a", "b")}
    with UnitOfWork(sf) as uow:
        registry.stop_experiment(uow, key="exp", actor="stats", reason="auto", evidence=evidence)
        uow.commit()
    stored = audit_rows(sf)[-1].evidence
    assert stored == {"p": None, "n": 7, "lam": 2.5, "ci": [0.1, 0.2], "inf": None,
                      "arms": ["a", "b"]}


def test_force_is_recorded_and_guard_passes_evidence_through(sf: Any) -> None:
    register(sf, start=True)
    with UnitOfWork(sf) as uow:
        registry.ship_experiment(uow, key="exp", arm="a", actor="ops", reason="r",
                                evidence={"decision": "ship"}, force=True)
        uow.commit()
    assert audit_rows(sf)[-1].evidence == {"decision": "ship", "force": True}


def test_build_results_sums_partitions_and_uses_latest_snapshot(sf: Any) -> None:
    register(sf, start=True)
    with UnitOfWork(sf) as uow:
        exp = registry.get_experiment(uow, key="exp")
        for part, (n, r, fb) in enumerate([(10, 3.0, 4), (5, 2.0, 2)]):
            uow.session.add(ArmStats(experiment_id=exp.id, arm_key="a", partition=part, n=n,
                                     reward_sum=r, feedback_n=fb))
        uow.session.add(ArmStats(experiment_id=exp.id, arm_key="control", partition=1, n=4,
                                 reward_sum=1.0))
        uow.session.add(AllocationSnapshot(experiment_id=exp.id, policy_name="thompson",
                                           weights={"control": 0.2, "a": 0.5, "b": 0.3}))
        uow.session.add(AllocationSnapshot(experiment_id=exp.id, policy_name="thompson",
                                           weights={"control": 0.1, "a": 0.8, "b": 0.1}))
        uow.commit()
    with UnitOfWork(sf) as uow:
        res = build_results(uow, registry.get_experiment(uow, key="exp"))
    arms = {a["key"]: a for a in res["arms"]}
    assert arms["a"]["impressions"] == 15 and arms["a"]["reward_sum"] == 5.0
    assert arms["a"]["feedback"] == 6 and arms["a"]["mean"] == pytest.approx(5 / 15)
    assert arms["control"]["impressions"] == 4 and arms["control"]["control"] is True
    assert arms["b"]["impressions"] == 0 and arms["b"]["mean"] is None
    assert {k: a["weight"] for k, a in arms.items()} == {"control": 0.1, "a": 0.8, "b": 0.1}
    assert res["snapshot"]["weights"] == {"control": 0.1, "a": 0.8, "b": 0.1}
    # stats area: "sequential" is filled by armlab.services.decisions (no propensities logged
    # in these rows, so it falls back to the plain mSPRT and says so).
    assert res["sequential"]["method"] == "plain" and res["status"] == "running"
    assert res["control_arm"] == "control"


def test_build_results_uniform_without_snapshot_and_serving_after_stop(sf: Any) -> None:
    register(sf, start=True)
    with UnitOfWork(sf) as uow:
        res = build_results(uow, registry.get_experiment(uow, key="exp"))
    assert [a["weight"] for a in res["arms"]] == pytest.approx([1 / 3] * 3)
    assert res["snapshot"] is None
    with UnitOfWork(sf) as uow:
        registry.stop_experiment(uow, key="exp", actor="ops", reason="r")
        uow.commit()
    with UnitOfWork(sf) as uow:
        res = build_results(uow, registry.get_experiment(uow, key="exp"))
    assert [a["weight"] for a in res["arms"]] == [1.0, 0.0, 0.0]  # the control serves
