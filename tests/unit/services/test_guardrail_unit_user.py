"""``unit: user``: the allocator's look analyses guardrails per user (one term per user, the
user's sticky propensity), not the per-impression ``guardrail_stats``. The MovieLens demo's
case: a treatment served to few users with many correlated requests each, whose
per-impression sums show a breach that the per-user evidence cannot support."""

from __future__ import annotations

from typing import Any

from armlab.core.evidence import ArmSums
from armlab.core.specs import ExperimentSpec
from armlab.core.stats.noninferiority_units import UnitSums
from armlab.services import registry
from armlab.services.allocator import run_decisions
from tests.fakes import FakeUnitOfWork


def _experiment(unit: str) -> tuple[FakeUnitOfWork, Any]:
    uow = FakeUnitOfWork()
    spec = ExperimentSpec.model_validate({
        "key": "ml", "unit": unit, "exploration_floor": 0.1,
        "sequential": {"min_samples": 10, "min_events": 30},
        "arms": [{"key": "control", "control": True, "variant": {"kind": "popularity"}},
                 {"key": "t1", "variant": {"kind": "popularity"}}],
        "guardrails": [{"key": "low_rated", "source": {"feedback": "rating"},
                        "harm": "increase", "margin": {"absolute": 0.02}, "alpha": 0.05}],
    })
    registry.create_experiment(uow, spec=spec, actor="t")
    return uow, registry.start_experiment(uow, key="ml", actor="t")


def _users(always: int, never: int, p: float, per: int = 40) -> tuple[UnitSums, ArmSums]:
    """``always`` users with the metric on each of their ``per`` requests, ``never`` users
    without it: per-user sums and the per-impression sums ingestion keeps."""
    u, a = UnitSums(), ArmSums()
    for k in range(always + never):
        y = float(per if k < always else 0)
        u.add_unit(per, y, y, y, p)
        for j in range(per):
            a.add_impression(p)
            if j < y:
                a.add_reward_change(0.0, 1.0, p)
                a.add_feedback()
    return u, a


def _look(unit: str) -> dict[str, Any]:
    uow, exp = _experiment(unit)
    cu, ca = _users(27, 81, 0.9)
    tu, ta = _users(6, 6, 0.1)  # 12 users of the treatment, 480 requests
    clicks = ArmSums(n=1000, reward_sum=50, reward_sumsq=50, ipw_n=2000, ipw_sum=100,
                     ipw_sumsq=200, ipw_n_sq=4000, feedback_n=50)
    uow.evidence.sums[exp.id] = {"control": clicks, "t1": clicks}
    uow.evidence.units[exp.id] = {"control": clicks, "t1": clicks}
    uow.evidence.guardrails[exp.id] = {"low_rated": {"control": ca, "t1": ta}}
    uow.evidence.guardrail_units[exp.id] = {"low_rated": {"control": cu, "t1": tu}}
    ev = run_decisions(uow, exp)
    return dict(ev["guardrails"][0])


def test_unit_user_does_not_breach_on_few_correlated_users() -> None:
    g = _look("user")
    assert g["unit"] == "user" and g["units_treatment"] == 12 and g["n_treatment"] == 480
    assert g["state"] != "breached"
    assert g["excess_low"] < 0 < g["excess_high"]


def test_the_same_impressions_analysed_per_impression_breach() -> None:
    """What the look did before for ``unit: user`` (and still does for ``unit: request``):
    a breach, which rolls the arm back."""
    g = _look("request")
    assert g["state"] == "breached" and "unit" not in g and g["excess_low"] > 0
