"""One running state of the sequential test: the allocator's recorded looks are what the
results endpoint and the ship guard show; matured, in-design data only (fake unit of work)."""

from __future__ import annotations

from typing import Any

import pytest

from armlab.core.evidence import ArmSums
from armlab.core.specs import ExperimentSpec
from armlab.services import registry
from armlab.services.allocator import run_decisions
from armlab.services.decisions import ship_guard, shown_evaluation
from armlab.services.results import build_results
from tests.fakes import FakeUnitOfWork


def arm(n: float, clicks: float, p: float = 0.5) -> ArmSums:
    return ArmSums(n=n, reward_sum=clicks, reward_sumsq=clicks, ipw_n=n / p,
                   ipw_sum=clicks / p, ipw_sumsq=clicks / p**2, ipw_n_sq=n / p**2)


def make(**seq: Any) -> tuple[FakeUnitOfWork, Any]:
    uow = FakeUnitOfWork()
    spec = ExperimentSpec.model_validate({
        "key": "exp", "exploration_floor": 0.1,
        "sequential": {"min_samples": 100, **seq},
        "arms": [{"key": "control", "control": True, "variant": {"kind": "popularity"}},
                 {"key": "t1", "variant": {"kind": "popularity"}}],
    })
    registry.create_experiment(uow, spec=spec, actor="ops")
    registry.start_experiment(uow, key="exp", actor="ops")
    return uow, registry.get_experiment(uow, key="exp")


GOOD = {"control": arm(4000, 200), "t1": arm(4000, 275)}   # a look here: treatment_better
LATER = {"control": arm(8000, 400), "t1": arm(8000, 450)}  # a fresh look here: continue


def test_results_never_take_a_winner_back() -> None:
    """Regression: the results endpoint ran a look of its own that nobody recorded; it showed
    treatment_better (p 0.016) and, after the allocator's next look on later data, continue
    (p 1.0). Shown p-values must never rise."""
    uow, exp = make()
    uow.evidence.sums[exp.id] = dict(GOOD)
    shown = [build_results(uow, exp)["sequential"]["arms"][0]]
    uow.evidence.sums[exp.id] = dict(LATER)
    run_decisions(uow, exp)  # the allocator's look
    shown.append(build_results(uow, exp)["sequential"]["arms"][0])
    ps = [a["p_value"] for a in shown]
    assert ps == sorted(ps, reverse=True), ps
    assert not (shown[0]["decision"] == "treatment_better"
                and shown[1]["decision"] != "treatment_better")
    assert shown[0]["reason"].startswith("no recorded look yet")


def test_results_and_ship_guard_show_the_recorded_state() -> None:
    uow, exp = make()
    uow.evidence.sums[exp.id] = dict(GOOD)
    recorded = run_decisions(uow, exp)["arms"][0]
    assert recorded["decision"] == "treatment_better"
    uow.evidence.sums[exp.id] = dict(LATER)  # newer data the allocator has not looked at
    res = build_results(uow, exp)["sequential"]
    assert res["recorded"] is True
    assert res["arms"][0]["p_value"] == recorded["p_value"]
    assert res["arms"][0]["decision"] == "treatment_better"
    # the ship guard on a running experiment takes (and records) one more look, from the
    # recorded state: the running p-value stays below alpha
    n_rows = len(uow.evidence.decisions)
    audited = ship_guard(uow.evidence, exp, "t1", force=False)
    assert audited["sequential"]["arms"][0]["p_value"] <= recorded["p_value"]
    assert len(uow.evidence.decisions) == n_rows + 1


def test_evidence_is_frozen_at_the_stop() -> None:
    """Regression: after an auto-stop the control serves with propensity 1; that traffic
    entered the test (SRM mismatch, a confidence sequence that moved). Results and the ship
    guard now show the look that stopped the experiment."""
    uow, exp = make(auto_stop=True)
    uow.evidence.sums[exp.id] = dict(GOOD)
    ev = run_decisions(uow, exp)
    assert ev["stopped"] and exp.status == "stopped"
    after = dict(GOOD)
    after["control"] = ArmSums(**{f: getattr(GOOD["control"], f) + getattr(arm(20_000, 1000,
                                                                           1.0), f)
                                  for f in ("n", "reward_sum", "reward_sumsq", "ipw_n",
                                            "ipw_sum", "ipw_sumsq", "ipw_n_sq")})
    uow.evidence.sums[exp.id] = after
    res = build_results(uow, exp)
    seq = res["sequential"]
    assert seq["impressions"] == 8000 and seq["srm"]["mismatch"] is False
    assert seq["arms"][0]["decision"] == "treatment_better"
    assert seq["arms"][0]["ci_low"] == ev["arms"][0]["ci_low"]
    assert res["arms"][0]["impressions"] == 24_000  # the raw totals still show all traffic
    assert ship_guard(uow.evidence, exp, "t1", force=False)["sequential"]["impressions"] == 8000


def test_only_matured_impressions_enter_the_test() -> None:
    """Regression (delayed feedback): impressions inside their attribution window entered n
    and the sums with reward 0, diluting the estimate."""
    uow, exp = make()
    uow.evidence.sums[exp.id] = {"control": arm(5000, 250), "t1": arm(5000, 300)}
    uow.evidence.late[exp.id] = {"control": arm(1000, 10), "t1": arm(1000, 12)}
    ev = run_decisions(uow, exp)
    a = ev["arms"][0]
    assert ev["impressions"] == 8000
    assert a["n_control"] == 4000 and a["mean_treatment"] == pytest.approx(288 / 4000)
    assert shown_evaluation(uow.evidence, exp)["impressions"] == 8000


def test_user_unit_is_evaluated_on_per_user_sums() -> None:
    uow = FakeUnitOfWork()
    spec = ExperimentSpec.model_validate({
        "key": "u", "unit": "user", "exploration_floor": 0.1,
        "sequential": {"min_samples": 100, "min_events": 0},
        "arms": [{"key": "control", "control": True, "variant": {"kind": "popularity"}},
                 {"key": "t1", "variant": {"kind": "popularity"}}],
    })
    registry.create_experiment(uow, spec=spec, actor="ops")
    exp = registry.start_experiment(uow, key="u", actor="ops")
    uow.evidence.sums[exp.id] = {"control": arm(10_000, 500), "t1": arm(10_000, 520)}
    users = {"control": ArmSums(n=1000, reward_sum=500, reward_sumsq=2000, ipw_n=2000,
                                ipw_sum=1000, ipw_sumsq=8000, ipw_n_sq=4000, feedback_n=500),
             "t1": ArmSums(n=1000, reward_sum=520, reward_sumsq=2100, ipw_n=2000,
                           ipw_sum=1040, ipw_sumsq=8400, ipw_n_sq=4000, feedback_n=520)}
    uow.evidence.units[exp.id] = users
    ev = run_decisions(uow, exp)
    assert ev["unit"] == "user" and ev["impressions"] == 2000  # users, not impressions
    assert ev["arms"][0]["n_control"] == 1000


def test_a_horizon_boundary_look_continues_the_recorded_state() -> None:
    """``boundary: horizon`` is recorded with each look, so the next look continues its
    running state (looks 1 -> 2, p never rises) instead of starting a fresh test."""
    uow, exp = make(boundary="horizon", max_n=20_000)
    uow.evidence.sums[exp.id] = dict(GOOD)
    first = run_decisions(uow, exp)
    assert first["boundary"] == "horizon" and first["horizon_plan"]["impressions"] == 20_000
    uow.evidence.sums[exp.id] = dict(LATER)
    second = run_decisions(uow, exp)["arms"][0]
    assert second["looks"] == first["arms"][0]["looks"] + 1 == 2
    assert second["p_value"] <= first["arms"][0]["p_value"]
    shown = build_results(uow, exp)["sequential"]
    assert shown["boundary"] == "horizon" and shown["arms"][0]["looks"] == 2
