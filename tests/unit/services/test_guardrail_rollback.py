"""Guardrail rollback on a migrated SQLite file: a treatment that harms a guardrail metric is
taken out of the allocation by the allocator (audit row with the evidence, weight 0 in a
snapshot of the same transaction), sticky users of it get the control, ship refuses it unless
forced, and the recommendation never names it. A harmless arm is left alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from armlab.adapters.db.allocation_store import SqlAllocationStore
from armlab.adapters.db.assignment_store import SqlAssignmentStore
from armlab.adapters.db.engine import make_engine, make_session_factory
from armlab.adapters.db.models import AllocationSnapshot, ArmStats, GuardrailStats, Impression
from armlab.adapters.db.uow import UnitOfWork
from armlab.core.evidence import FIELDS, ArmSums
from armlab.core.specs import ExperimentSpec
from armlab.entrypoints.report import build_report
from armlab.errors import Conflict
from armlab.services import registry
from armlab.services.allocator import run_allocation
from armlab.services.assignment import Assigner
from armlab.services.decisions import shown_evaluation
from armlab.services.report import collect_by_key

ARMS = ("control", "harm", "fine")
N = 4000


def _sums(rate: float, n: int = N, p: float = 1 / 3) -> ArmSums:
    """Sums of n impressions at propensity p with a 0/1 metric at ``rate``."""
    k = round(rate * n)
    return ArmSums(n=n, reward_sum=k, reward_sumsq=k, ipw_n=n / p, ipw_sum=k / p,
                   ipw_sumsq=k / p**2, ipw_n_sq=n / p**2, feedback_n=k)


@pytest.fixture()
def sf(sqlite_url: str) -> Any:
    engine = make_engine(sqlite_url)
    yield make_session_factory(engine)
    engine.dispose()


def _setup(sf: Any, *, on_breach: str = "rollback", unit: str = "request",
           skip_rates: tuple[float, float, float] = (0.10, 0.30, 0.10)) -> int:
    spec = ExperimentSpec.model_validate({
        "key": "exp", "unit": unit, "exploration_floor": 0.05,
        "attribution_window_s": 60,
        "arms": [{"key": a, "control": i == 0, "variant": {"kind": "popularity"}}
                 for i, a in enumerate(ARMS)],
        "guardrails": [{"key": "skips", "source": {"feedback": "skip"}, "harm": "increase",
                        "margin": {"absolute": 0.01}, "alpha": 0.05,
                        "on_breach": on_breach}],
    })
    with UnitOfWork(sf) as uow:
        exp = registry.create_experiment(uow, spec=spec, actor="t")
        registry.start_experiment(uow, key="exp", actor="t")
        uow.commit()
        exp_id = exp.id
    with sf() as s, s.begin():
        for arm, rate in zip(ARMS, skip_rates, strict=True):
            clicks = _sums(0.05)  # the primary reward: no difference
            s.add(ArmStats(experiment_id=exp_id, arm_key=arm, partition=0,
                           **{f: getattr(clicks, f) for f in FIELDS}))
            s.add(GuardrailStats(experiment_id=exp_id, arm_key=arm, metric="skips",
                                 partition=0, **{f: getattr(_sums(rate), f) for f in FIELDS}))
            if unit == "user":  # the per-user guardrail analysis reads the impressions
                s.add_all(_user_impressions(exp_id, arm, rate))
    return exp_id


def _user_impressions(exp_id: int, arm: str, rate: float, users: int = 200, per: int = 10
                      ) -> list[Impression]:
    """``users`` sticky users of ``arm`` with ``per`` impressions each, the user's skips
    round(rate x per) - 1, + 0 or + 1 (the arm's skip rate, varying between users)."""
    served = datetime.now(UTC) - timedelta(hours=1)
    out = []
    for u in range(users):
        skips = round(rate * per) + (u % 3 - 1)
        out += [Impression(impression_id=f"{arm}-{u}-{j}", event_id=f"{arm}-{u}-{j}",
                           experiment_id=exp_id, arm_key=arm, unit_id=f"{arm}-{u}",
                           propensity=1 / 3, served_at=served,
                           guardrail_values={"skips": [float(j < skips), int(j < skips)]})
                for j in range(per)]
    return out


def test_harmful_arm_is_rolled_back_with_evidence(sf: Any) -> None:
    exp_id = _setup(sf)
    run_allocation(SqlAllocationStore(sf))
    with UnitOfWork(sf) as uow:
        exp = registry.get_experiment(uow, key="exp")
        assert set(exp.rolled_back) == {"harm"} and exp.status == "running"
        audit = [r for r in registry.list_audit(uow, key="exp") if r.action == "rollback"]
        assert len(audit) == 1
        g = audit[0].evidence["guardrail"]
        assert g["metric"] == "skips" and g["arm"] == "harm" and g["p_value"] <= g["alpha"]
        assert g["alpha"] == pytest.approx(0.05 / 2)  # Bonferroni over the two treatments
        assert g["excess"] > 0 and g["excess_low"] is not None
        assert "skips" in audit[0].reason and "harm" in audit[0].reason
        ev = shown_evaluation(uow.evidence, exp)
        states = {(e["metric"], e["arm"]): e["state"] for e in ev["guardrails"]}
        assert states[("skips", "harm")] == "breached"
        assert states[("skips", "fine")] != "breached"
        assert ev["recommendation"]["arm"] != "harm"
        assert any("harm: breached" in r for r in ev["recommendation"]["reasons"])
    with sf() as s:
        snaps = s.scalars(select(AllocationSnapshot).where(
            AllocationSnapshot.experiment_id == exp_id).order_by(AllocationSnapshot.id)).all()
    last = snaps[-1]
    assert last.weights["harm"] == 0.0
    assert last.weights["control"] >= 0.05 and last.weights["fine"] >= 0.05
    assert sum(last.weights.values()) == pytest.approx(1.0)
    assert last.stats["rolled_back"] == ["harm"]
    # a second pass keeps it out and writes no second rollback
    run_allocation(SqlAllocationStore(sf))
    with UnitOfWork(sf) as uow:
        assert [r.action for r in registry.list_audit(uow, key="exp")].count("rollback") == 1
    with sf() as s:
        newest = s.scalars(select(AllocationSnapshot).where(
            AllocationSnapshot.experiment_id == exp_id).order_by(
            AllocationSnapshot.id.desc()).limit(1)).one()
    assert newest.weights["harm"] == 0.0
    # ship refuses the breached arm unless forced, naming the guardrail
    with pytest.raises(Conflict, match="guardrail 'skips' breached by arm 'harm'"), \
            UnitOfWork(sf) as uow:
        registry.ship_experiment(uow, key="exp", arm="harm", actor="t", reason="r")
    with UnitOfWork(sf) as uow:
        registry.ship_experiment(uow, key="exp", arm="harm", actor="t", reason="r", force=True)
        uow.commit()
    with UnitOfWork(sf) as uow:
        ship = registry.list_audit(uow, key="exp")[-1]
        assert ship.action == "ship" and "skips" in ship.evidence["overridden"]


def test_no_harm_no_rollback(sf: Any) -> None:
    _setup(sf, skip_rates=(0.10, 0.10, 0.10))
    run_allocation(SqlAllocationStore(sf))
    run_allocation(SqlAllocationStore(sf))
    with UnitOfWork(sf) as uow:
        exp = registry.get_experiment(uow, key="exp")
        assert exp.rolled_back == {}
        assert "rollback" not in [r.action for r in registry.list_audit(uow, key="exp")]
        states = {e["state"] for e in shown_evaluation(uow.evidence, exp)["guardrails"]}
        assert "breached" not in states


def test_on_breach_stop_stops_the_experiment(sf: Any) -> None:
    _setup(sf, on_breach="stop")
    run_allocation(SqlAllocationStore(sf))
    with UnitOfWork(sf) as uow:
        exp = registry.get_experiment(uow, key="exp")
        assert exp.status == "stopped" and exp.rolled_back == {}
        stop = registry.list_audit(uow, key="exp")[-1]
        assert stop.action == "stop" and "guardrail breached" in stop.reason
        assert stop.evidence["guardrails"][0]["arm"] == "harm"
        snap = uow.evidence.latest_snapshot(exp.id)
        assert snap is not None and snap.weights["control"] == 1.0


def test_sticky_users_of_a_rolled_back_arm_get_the_control(sf: Any) -> None:
    _setup(sf, unit="user")
    a = Assigner(SqlAssignmentStore(sf), seed=1, refresh_s=3600)
    before = {u: a.assign("exp", u) for u in (f"u{i}" for i in range(60))}
    stuck = [u for u, x in before.items() if x.arm_key == "harm"]
    assert stuck
    run_allocation(SqlAllocationStore(sf))
    a.refresh()
    for u in stuck:
        x = a.assign("exp", u)
        assert (x.arm_key, x.propensity) == ("control", 1.0)
    fresh = [a.assign("exp", f"new{i}").arm_key for i in range(200)]
    assert "harm" not in fresh
    a.close()


def test_report_shows_the_guardrails_and_their_confidence_sequence(sf: Any) -> None:
    _setup(sf)
    run_allocation(SqlAllocationStore(sf))
    with UnitOfWork(sf) as uow:
        page = build_report(collect_by_key(uow, "exp"))
    assert "Recommendation and guardrails" in page and "<svg" in page
    assert "skips: harm vs control" in page and "skips: fine vs control" in page
    assert "breached" in page and "Guardrails: excess harm" in page
