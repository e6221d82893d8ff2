"""The sequential decision as a pure function of per-arm sums (no database)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from armlab.core.decisions import Design, PriorLook, evaluate, ship_problem
from armlab.core.evidence import ArmSums
from armlab.core.specs import SequentialSpec

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def sums(n: float, clicks: float, p: float) -> ArmSums:
    """An arm shown n times with propensity p and ``clicks`` binary successes."""
    return ArmSums(n=n, reward_sum=clicks, reward_sumsq=clicks, ipw_n=n / p,
                   ipw_sum=clicks / p, ipw_sumsq=clicks / p**2, ipw_n_sq=n / p**2)


def design(policy: str = "thompson", floor: float = 0.1, **seq: Any) -> Design:
    return Design(arm_keys=("control", "t1"), control="control", binary=True,
                  policy_name=policy, exploration_floor=floor,
                  sequential=SequentialSpec.model_validate({"min_samples": 100, **seq}))


def test_a_clear_winner_is_treatment_better_and_stops() -> None:
    ev = evaluate(design(), {"control": sums(20_000, 1000, 0.5), "t1": sums(20_000, 1400, 0.5)},
                  {}, now=NOW)
    arm = ev["arms"][0]
    assert ev["method"] == "ipw" and arm["decision"] == "treatment_better"
    assert arm["ci_low"] > 0 and ev["stop"] is True
    assert ship_problem(ev, arm="t1", control="control") == ""
    assert "better than the control" in ship_problem(ev, arm="control", control="control")


def test_a_clear_loser_is_treatment_worse_and_shipping_it_is_argued_against() -> None:
    ev = evaluate(design(), {"control": sums(20_000, 1400, 0.5), "t1": sums(20_000, 1000, 0.5)},
                  {}, now=NOW)
    assert ev["arms"][0]["decision"] == "treatment_worse"
    assert "treatment worse" in ship_problem(ev, arm="t1", control="control")


def test_uniform_policy_uses_plain_msprt_and_method_overrides_it() -> None:
    data = {"control": sums(5000, 250, 0.5), "t1": sums(5000, 260, 0.5)}
    assert evaluate(design(policy="uniform"), data, {}, now=NOW)["method"] == "plain"
    assert evaluate(design(policy="uniform", method="ipw"), data, {}, now=NOW)["method"] == "ipw"
    assert evaluate(design(method="plain"), data, {}, now=NOW)["method"] == "plain"


def test_min_effect_declares_futility_once_the_interval_is_inside_it() -> None:
    data = {"control": sums(200_000, 10_000, 0.5), "t1": sums(200_000, 10_010, 0.5)}
    without = evaluate(design(), data, {}, now=NOW)["arms"][0]
    assert without["decision"] == "continue"
    lo, hi = without["ci_low"], without["ci_high"]
    wide = evaluate(design(min_effect=max(-lo, hi) * 0.5), data, {}, now=NOW)["arms"][0]
    assert wide["decision"] == "continue"  # the interval is not inside ±min_effect yet
    futile = evaluate(design(min_effect=max(-lo, hi) * 1.5), data, {}, now=NOW)["arms"][0]
    assert futile["decision"] == "futile" and "inside" in futile["reason"]


def test_the_previous_look_is_carried_forward() -> None:
    data = {"control": sums(20_000, 1000, 0.5), "t1": sums(20_000, 1100, 0.5)}
    first = evaluate(design(), data, {}, now=NOW)
    a = first["arms"][0]
    prior = PriorLook(p_value=a["p_value"], ci_low=a["ci_low"], ci_high=a["ci_high"],
                      method=first["method"], tau2=first["tau2"], looks=a["looks"])
    again = evaluate(design(), data, {"t1": prior}, now=NOW)
    b = again["arms"][0]
    assert again["tau2_source"] == "frozen" and again["tau2"] == first["tau2"]
    assert b["looks"] == a["looks"] + 1 and b["p_value"] <= a["p_value"]


def test_too_little_data_gives_no_evidence() -> None:
    ev = evaluate(design(), {"control": sums(50, 2, 0.5), "t1": sums(50, 9, 0.5)}, {}, now=NOW)
    arm = ev["arms"][0]
    assert arm["decision"] == "continue" and arm["valid"] is False and ev["stop"] is False
    assert ship_problem(ev, arm="t1", control="control") == ""


def test_zero_floor_and_missing_propensities_warn() -> None:
    no_p = ArmSums(n=5000, reward_sum=250, reward_sumsq=250)
    ev = evaluate(design(floor=0.0), {"control": no_p, "t1": sums(5000, 260, 0.5)}, {}, now=NOW)
    assert ev["method"] == "plain"
    assert any("propensities not logged" in w for w in ev["warnings"])


@pytest.mark.parametrize("bad", [{"min_effect": 0}, {"min_effect": -0.1},
                                 {"method": "bayes"}, {"min_effect": float("inf")}])
def test_sequential_spec_rejects_bad_settings(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        SequentialSpec.model_validate(bad)
