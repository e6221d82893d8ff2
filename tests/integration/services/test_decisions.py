"""Sequential decisions on PostgreSQL: Decision rows, running state, auto_stop evidence."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from armlab.adapters.db.engine import make_engine, make_session_factory
from armlab.adapters.db.models import ArmStats, AuditLog, Decision, Impression
from armlab.adapters.db.uow import UnitOfWork
from armlab.core.evidence import ArmSums
from armlab.core.specs import ExperimentSpec
from armlab.errors import Conflict
from armlab.services import registry
from armlab.services.allocator import run_decisions
from armlab.services.decisions import analysis_sums, evaluate_experiment, ship_guard
from tests.builders import experiment_spec


def _spec(**seq: Any) -> ExperimentSpec:
    return experiment_spec("seq", exploration_floor=0.1, policy={"name": "thompson"},
                           sequential={"min_samples": 100, **seq})


def _add_stats(session: Any, exp_id: int, arm: str, n: int, clicks: int, p: float,
               partitions: int = 2) -> None:
    # Split over partitions: the evaluation must SUM the shards.
    for part in range(partitions):
        k, x = n // partitions, clicks // partitions
        session.add(ArmStats(experiment_id=exp_id, arm_key=arm, partition=part, n=k,
                             reward_sum=x, reward_sumsq=x, ipw_n=k / p, ipw_sum=x / p,
                             ipw_sumsq=x / p**2, ipw_n_sq=k / p**2))


@pytest.fixture()
def sf(pg_url: str) -> Any:
    engine = make_engine(pg_url)
    yield make_session_factory(engine)
    engine.dispose()


def _create(sf: Any, **seq: Any) -> int:
    with UnitOfWork(sf) as uow:
        exp = registry.create_experiment(uow, spec=_spec(**seq), actor="ops")
        registry.start_experiment(uow, key="seq", actor="ops")
        uow.commit()
        return exp.id


def test_auto_stop_stops_with_evidence_in_the_audit_log(sf: Any) -> None:
    exp_id = _create(sf, auto_stop=True)
    with UnitOfWork(sf) as uow:
        _add_stats(uow.session, exp_id, "control", 20_000, 1000, 0.5)
        _add_stats(uow.session, exp_id, "t1", 20_000, 1400, 0.5)
        uow.commit()
    with UnitOfWork(sf) as uow:
        ev = run_decisions(uow, registry.get_experiment(uow, key="seq"))
        uow.commit()
    assert ev["method"] == "ipw" and ev["stopped"]
    assert ev["arms"][0]["decision"] == "treatment_better"
    with UnitOfWork(sf) as uow:
        s = uow.session
        exp = registry.get_experiment(uow, key="seq")
        assert exp.status == "stopped"
        audit = s.scalars(select(AuditLog).where(AuditLog.action == "stop")).one()
        assert audit.actor == "allocator" and "treatment_better" in audit.reason
        arm = audit.evidence["arms"][0]
        assert arm["arm"] == "t1" and arm["p_value"] < 0.05 and arm["ci_low"] > 0
        rows = s.scalars(select(Decision)).all()
        assert len(rows) == 1 and rows[0].decision == "treatment_better"
        assert rows[0].n_control == 20_000 and rows[0].evidence["tau2"] > 0


def test_running_p_value_and_interval_carry_across_evaluations(sf: Any) -> None:
    exp_id = _create(sf)
    with UnitOfWork(sf) as uow:
        _add_stats(uow.session, exp_id, "control", 4000, 200, 0.5)
        _add_stats(uow.session, exp_id, "t1", 4000, 260, 0.5)
        uow.commit()
    with UnitOfWork(sf) as uow:
        first = run_decisions(uow, registry.get_experiment(uow, key="seq"))["arms"][0]
        uow.commit()
    with UnitOfWork(sf) as uow:  # later data look less favourable
        for row in uow.session.scalars(select(ArmStats).where(ArmStats.arm_key == "t1")):
            row.n, row.reward_sum = row.n + 2000, row.reward_sum + 70
            row.reward_sumsq = row.reward_sum
            row.ipw_n, row.ipw_sum = row.n / 0.5, row.reward_sum / 0.5
            row.ipw_sumsq, row.ipw_n_sq = row.reward_sum / 0.25, row.n / 0.25
        for row in uow.session.scalars(select(ArmStats).where(ArmStats.arm_key == "control")):
            row.n, row.reward_sum = row.n + 2000, row.reward_sum + 130
            row.reward_sumsq = row.reward_sum
            row.ipw_n, row.ipw_sum = row.n / 0.5, row.reward_sum / 0.5
            row.ipw_sumsq, row.ipw_n_sq = row.reward_sum / 0.25, row.n / 0.25
        uow.commit()
    with UnitOfWork(sf) as uow:
        exp = registry.get_experiment(uow, key="seq")
        second = run_decisions(uow, exp)["arms"][0]
        assert second["p_value"] <= first["p_value"] and second["p_now"] > first["p_value"]
        assert second["ci_low"] >= first["ci_low"] and second["ci_high"] <= first["ci_high"]
        assert second["looks"] == 2
        uow.commit()
    with UnitOfWork(sf) as uow:
        s = uow.session
        assert len(s.scalars(select(Decision)).all()) == 2
        assert registry.get_experiment(uow, key="seq").status == "running"  # auto_stop is off


def test_ship_guard_refuses_a_worse_arm_unless_forced(sf: Any) -> None:
    exp_id = _create(sf)
    with UnitOfWork(sf) as uow:
        _add_stats(uow.session, exp_id, "control", 20_000, 1400, 0.5)
        _add_stats(uow.session, exp_id, "t1", 20_000, 1000, 0.5)
        uow.commit()
    with UnitOfWork(sf) as uow:
        exp = registry.get_experiment(uow, key="seq")
        assert evaluate_experiment(uow.evidence, exp)["arms"][0]["decision"] == "treatment_worse"
        with pytest.raises(Conflict, match="--force"):
            ship_guard(uow.evidence, exp, "t1", force=False)
        assert "overridden" in ship_guard(uow.evidence, exp, "t1", force=True)
        ship_guard(uow.evidence, exp, "control", force=False)  # shipping the better arm is fine


NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def _log(session: Any, exp_id: int, rows: list[tuple[str, str, float, float, int]]) -> None:
    """Impressions (arm, unit, propensity, reward, seconds before NOW) and the arm_stats
    shards ingestion would have written for them."""
    sums: dict[str, ArmSums] = {}
    for i, (arm, unit, p, r, ago) in enumerate(rows):
        session.add(Impression(impression_id=f"i{i}", event_id=f"e{i}", experiment_id=exp_id,
                               arm_key=arm, unit_id=unit, propensity=p, reward=r,
                               feedback_count=int(r > 0),
                               served_at=NOW - timedelta(seconds=ago)))
        s = sums.setdefault(arm, ArmSums())
        s.add_impression(p)
        s.add_reward_change(0.0, r, p)
        if r > 0:
            s.add_feedback()
    for arm, s in sums.items():
        session.add(ArmStats(experiment_id=exp_id, arm_key=arm, partition=0,
                             **{k: (int(v) if k in ("n", "feedback_n") else v)
                                for k, v in s.as_dict().items()}))


def test_the_test_reads_matured_in_design_impressions_only(sf: Any) -> None:
    """Regression (delayed feedback; data after a stop): impressions inside their attribution
    window (600 s) and impressions served after the stop no longer enter the test."""
    exp_id = _create(sf)  # attribution window 3600 s by default
    rows = [("control", f"u{i}", 0.5, float(i % 10 == 0), 7200) for i in range(300)]
    rows += [("t1", f"v{i}", 0.5, float(i % 8 == 0), 7200) for i in range(300)]
    rows += [("control", f"w{i}", 0.5, 0.0, 60) for i in range(50)]  # still immature
    with UnitOfWork(sf) as uow:
        _log(uow.session, exp_id, rows)
        uow.commit()
    with UnitOfWork(sf) as uow:
        exp = registry.get_experiment(uow, key="seq")
        sums = analysis_sums(uow.evidence, exp, now=NOW)
        assert sums["control"].n == 300 and sums["t1"].n == 300
        assert sums["control"].reward_sum == 30 and sums["control"].ipw_n == pytest.approx(600)
        assert evaluate_experiment(uow.evidence, exp, now=NOW)["impressions"] == 600
        registry.stop_experiment(uow, key="seq", actor="ops", reason="r")
        exp.ended_at = NOW - timedelta(seconds=1800)  # before the 50 young control rows
        uow.flush()
        late = analysis_sums(uow.evidence, exp, now=NOW + timedelta(days=1))
        assert late["control"].n == 300 and late["t1"].n == 300  # matured, yet after the stop
        exp.ended_at = NOW - timedelta(seconds=9000)  # before everything
        assert all(v.n == 0 for v in analysis_sums(uow.evidence, exp, now=NOW).values())
        exp.ended_at = NOW
        late = analysis_sums(uow.evidence, exp, now=NOW + timedelta(days=1))
        assert late["control"].n == 350  # matured by then, all served before the stop


def test_user_unit_sums_one_term_per_user(sf: Any) -> None:
    with UnitOfWork(sf) as uow:
        spec = _spec().model_copy(update={"unit": "user"})
        exp = registry.create_experiment(uow, spec=spec, actor="ops")
        registry.start_experiment(uow, key="seq", actor="ops")
        uow.commit()
        exp_id = exp.id
    # 40 users x 5 impressions per arm; a user's propensity is sticky
    rows = [(arm, f"{arm}-{u}", p, float((u + j) % 4 == 0), 7200)
            for arm, p in (("control", 0.8), ("t1", 0.2)) for u in range(40) for j in range(5)]
    with UnitOfWork(sf) as uow:
        _log(uow.session, exp_id, rows)
        uow.commit()
    with UnitOfWork(sf) as uow:
        exp = registry.get_experiment(uow, key="seq")
        sums = analysis_sums(uow.evidence, exp, now=NOW)
    c = sums["control"]
    ys = [sum(float((u + j) % 4 == 0) for j in range(5)) for u in range(40)]
    assert c.n == 40 and c.reward_sum == sum(ys)
    assert c.reward_sumsq == sum(y * y for y in ys)
    assert c.ipw_n == pytest.approx(40 / 0.8) and c.ipw_n_sq == pytest.approx(40 / 0.64)
    assert c.ipw_sumsq == pytest.approx(sum(y * y for y in ys) / 0.64)
    assert sums["t1"].ipw_sum == pytest.approx(sum(ys) / 0.2)
