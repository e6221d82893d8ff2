"""The sequential decision as a pure function of per-arm sums (no database)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from armlab.core.decisions import (
    ArmLook,
    Decision,
    Design,
    Evaluation,
    PriorLook,
    evaluate,
    ship_problem,
)
from armlab.core.evidence import ArmSums
from armlab.core.specs import SequentialSpec
from armlab.core.stats.msprt import tau2_for_horizon

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
    arm = ev.arms[0]
    assert ev.method == "ipw" and arm.decision == "treatment_better"
    assert arm.ci_low > 0 and ev.stop is True
    assert ship_problem(ev, arm="t1", control="control") == ""
    assert "better than the control" in ship_problem(ev, arm="control", control="control")


def test_a_clear_loser_is_treatment_worse_and_shipping_it_is_argued_against() -> None:
    ev = evaluate(design(), {"control": sums(20_000, 1400, 0.5), "t1": sums(20_000, 1000, 0.5)},
                  {}, now=NOW)
    assert ev.arms[0].decision == "treatment_worse"
    assert "treatment worse" in ship_problem(ev, arm="t1", control="control")


def test_uniform_policy_uses_plain_msprt_and_method_overrides_it() -> None:
    data = {"control": sums(5000, 250, 0.5), "t1": sums(5000, 260, 0.5)}
    assert evaluate(design(policy="uniform"), data, {}, now=NOW).method == "plain"
    assert evaluate(design(policy="uniform", method="ipw"), data, {}, now=NOW).method == "ipw"
    assert evaluate(design(method="plain"), data, {}, now=NOW).method == "plain"


def test_min_effect_declares_futility_once_the_interval_is_inside_it() -> None:
    data = {"control": sums(200_000, 10_000, 0.5), "t1": sums(200_000, 10_010, 0.5)}
    without = evaluate(design(), data, {}, now=NOW).arms[0]
    assert without.decision == "continue"
    lo, hi = without.ci_low, without.ci_high
    wide = evaluate(design(min_effect=max(-lo, hi) * 0.5), data, {}, now=NOW).arms[0]
    assert wide.decision == "continue"  # the interval is not inside ±min_effect yet
    futile = evaluate(design(min_effect=max(-lo, hi) * 1.5), data, {}, now=NOW).arms[0]
    assert futile.decision == "futile" and "inside" in futile.reason


def test_the_previous_look_is_carried_forward() -> None:
    data = {"control": sums(20_000, 1000, 0.5), "t1": sums(20_000, 1100, 0.5)}
    first = evaluate(design(), data, {}, now=NOW)
    a = first.arms[0]
    prior = PriorLook(p_value=a.p_value, ci_low=a.ci_low, ci_high=a.ci_high,
                      method=first.method, tau2=first.tau2, looks=a.looks)
    again = evaluate(design(), data, {"t1": prior}, now=NOW)
    b = again.arms[0]
    assert again.tau2_source == "frozen" and again.tau2 == first.tau2
    assert b.looks == a.looks + 1 and b.p_value <= a.p_value


def test_too_little_data_gives_no_evidence() -> None:
    ev = evaluate(design(), {"control": sums(50, 2, 0.5), "t1": sums(50, 9, 0.5)}, {}, now=NOW)
    arm = ev.arms[0]
    assert arm.decision == "continue" and arm.valid is False and ev.stop is False
    assert ship_problem(ev, arm="t1", control="control") == ""


def test_zero_floor_and_missing_propensities_warn() -> None:
    no_p = ArmSums(n=5000, reward_sum=250, reward_sumsq=250)
    ev = evaluate(design(floor=0.0), {"control": no_p, "t1": sums(5000, 260, 0.5)}, {}, now=NOW)
    assert ev.method == "plain"
    assert any("propensities not logged" in w for w in ev.warnings)


@pytest.mark.parametrize("bad", [{"min_effect": 0}, {"min_effect": -0.1},
                                 {"method": "bayes"}, {"min_effect": float("inf")}])
def test_sequential_spec_rejects_bad_settings(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        SequentialSpec.model_validate(bad)


def test_holm_direction_comes_from_the_estimate_not_one_side_of_the_interval() -> None:
    """Regression: with Holm an arm can reach adjusted p <= alpha while its (Bonferroni
    alpha/m) confidence sequence still contains 0; the finite negative ci_low was read as
    'worse' for an arm whose estimate is positive."""
    d = Design(arm_keys=("control", "t1", "t2"), control="control", binary=True,
               policy_name="uniform", exploration_floor=0.0,
               sequential=SequentialSpec.model_validate({"tau2": 1e-4, "method": "plain"}))
    data = {"control": sums(20_000, 1000, 1 / 3), "t1": sums(20_000, 1400, 1 / 3),
            "t2": sums(20_000, 1140, 1 / 3)}
    arm = evaluate(d, data, {}, now=NOW).arms[1]
    assert arm.p_adjusted <= 0.05 and arm.ci_low < 0 < arm.ci_high
    assert arm.estimate > 0
    assert arm.decision == "treatment_better"


def test_a_look_needs_events_not_only_impressions() -> None:
    """Regression (low base rates): an arm held at the floor with 2 successes in 500
    impressions carried evidence once it had min_samples impressions; a look now needs
    min_events successes (the rarer outcome) in each arm."""
    data = {"control": sums(500, 2, 0.1), "t1": sums(4500, 60, 0.9)}
    arm = evaluate(design(), data, {}, now=NOW).arms[0]
    assert arm.valid is False and arm.decision == "continue"
    assert arm.p_value == 1.0
    assert evaluate(design(min_events=0), data, {}, now=NOW).arms[0].valid is True


def test_continuous_rewards_gate_on_feedback_events() -> None:
    a = ArmSums(n=400, reward_sum=40.0, reward_sumsq=200.0, ipw_n=800, ipw_sum=80.0,
                ipw_sumsq=800.0, ipw_n_sq=1600, feedback_n=10)
    b = ArmSums(n=400, reward_sum=90.0, reward_sumsq=400.0, ipw_n=800, ipw_sum=180.0,
                ipw_sumsq=1600.0, ipw_n_sq=1600, feedback_n=40)
    d = Design(("control", "t1"), "control", False, "thompson", 0.1,
               SequentialSpec.model_validate({"min_samples": 100}))
    assert evaluate(d, {"control": a, "t1": b}, {}, now=NOW).arms[0].valid is False
    a.feedback_n = 30
    assert evaluate(d, {"control": a, "t1": b}, {}, now=NOW).arms[0].valid is True


def test_tau2_is_planned_for_the_ipw_variance_the_floor_implies() -> None:
    """Regression (power): tau² was tuned for a 50/50 split, Var = 2 sigma²/n per arm; under a
    bandit with floor f the pair's inverse propensities approach 1/f + 1/(1-f)."""
    data = {"control": sums(5000, 250, 0.5), "t1": sums(5000, 260, 0.5)}
    pooled = 510 / 10_000 * (1 - 510 / 10_000)
    ev = evaluate(design(floor=0.1), data, {}, now=NOW)
    want = tau2_for_horizon(pooled * (1 / 0.1 + 1 / 0.9) / 20_000, 0.05)
    assert ev.tau2_source == "horizon" and ev.tau2 == pytest.approx(want)
    plain = evaluate(design(policy="uniform"), data, {}, now=NOW)
    assert plain.tau2 == pytest.approx(tau2_for_horizon(2 * pooled / 10_000, 0.05))


def test_one_sided_greater_tests_better_only() -> None:
    better = {"control": sums(8000, 400, 0.5), "t1": sums(8000, 470, 0.5)}
    two = evaluate(design(), better, {}, now=NOW).arms[0]
    one_ev = evaluate(design(alternative="greater"), better, {}, now=NOW)
    one = one_ev.arms[0]
    assert one_ev.alternative == "greater"
    assert one.p_value < two.p_value and one.ci_high is None
    worse = {"control": sums(20_000, 1400, 0.5), "t1": sums(20_000, 1000, 0.5)}
    arm = evaluate(design(alternative="greater"), worse, {}, now=NOW).arms[0]
    assert arm.decision == "continue" and arm.p_value == 1.0
    # a change of alternative does not carry the other test's running state
    prev = {"t1": PriorLook(p_value=0.001, ci_low=0.0, ci_high=0.1, method="ipw",
                            tau2=one_ev.tau2, looks=3)}
    again = evaluate(design(alternative="greater"), worse, prev, now=NOW).arms[0]
    assert again.p_value == 1.0 and again.looks == 1


def test_a_decided_direction_does_not_flip_when_the_estimate_wanders() -> None:
    """The running p-value stays below alpha once it got there; the direction of that
    rejection is kept, even if a later estimate has the other sign."""
    first = evaluate(design(), {"control": sums(4000, 200, 0.5), "t1": sums(4000, 290, 0.5)},
                     {}, now=NOW)
    a = first.arms[0]
    assert a.decision == "treatment_better"
    prev = {"t1": PriorLook(p_value=a.p_value, ci_low=a.ci_low, ci_high=a.ci_high,
                            method="ipw", tau2=first.tau2, looks=a.looks,
                            decision=a.decision)}
    later = {"control": sums(30_000, 1500, 0.5), "t1": sums(30_000, 1495, 0.5)}
    b = evaluate(design(), later, prev, now=NOW).arms[0]
    assert b.estimate < 0 and b.p_value == a.p_value
    assert b.decision == "treatment_better"


def test_horizon_boundary_is_registrable_and_rejects_inside_the_plan() -> None:
    """``boundary: horizon``: the flat boundary up to the planned information (from the
    frozen tau²) rejects a lift the mixture alone does not yet; its state is not carried
    into a test with the other boundary. The data: 18,000 of the planned 20,000 impressions,
    the control held at the floor (the bandit found the winner): 5% -> 6.5%."""
    data = {"control": sums(1800, 90, 0.1), "t1": sums(16_200, 1053, 0.9)}
    mix = evaluate(design(max_n=20_000), data, {}, now=NOW)
    hor = evaluate(design(max_n=20_000, boundary="horizon"), data, {}, now=NOW)
    assert mix.boundary == "mixture" and mix.horizon_plan is None
    assert hor.boundary == "horizon" and hor.tau2 == mix.tau2
    plan = hor.horizon_plan
    assert plan.impressions == 20_000 and plan.share == 0.8
    assert plan.info == pytest.approx(20_000**2 * mix.tau2 / tau2_for_horizon(1.0, 0.05))
    m, h = mix.arms[0], hor.arms[0]
    assert m.decision == "continue" and m.p_value > 0.05
    assert h.decision == "treatment_better" and h.p_value <= 0.05
    assert h.ci_low > 0 and h.ci_high - h.ci_low < m.ci_high - m.ci_low
    # the mixture test's running state does not continue into the horizon test
    prev = {"t1": PriorLook(p_value=0.9, ci_low=-0.5, ci_high=0.5, method="ipw",
                            tau2=mix.tau2, looks=4)}
    again = evaluate(design(max_n=20_000, boundary="horizon"), data, prev, now=NOW).arms[0]
    assert again.looks == 1 and again.p_value == h.p_value
    carried = {"t1": PriorLook(p_value=0.9, ci_low=-0.5, ci_high=0.5, method="ipw",
                               tau2=mix.tau2, looks=4, boundary="horizon")}
    assert evaluate(design(max_n=20_000, boundary="horizon"), data, carried,
                    now=NOW).arms[0].looks == 5
    with pytest.raises(ValueError, match="boundary"):
        SequentialSpec.model_validate({"boundary": "pocock"})


ARM_KEYS = ["arm", "control", "n_control", "n_treatment", "mean_control", "mean_treatment",
            "decision", "reason", "estimate", "p_value", "p_adjusted"]
TOP_KEYS = ["method", "alpha", "cs_alpha", "tau2", "tau2_source", "theta0", "correction",
            "min_samples", "min_events", "alternative", "boundary", "horizon_plan", "max_n",
            "impressions", "control", "arms", "srm", "stop", "stop_reason", "warnings",
            "evaluated_at"]


def test_the_stored_form_keeps_its_keys_and_reads_back() -> None:
    """``as_dict`` is the stored and served JSON: an arm not looked at has no p_now,
    log_lambda or cs_empty; ``from_dict`` gives the same evaluation back."""
    few = evaluate(design(), {"control": sums(50, 2, 0.5), "t1": sums(50, 9, 0.5)}, {}, now=NOW)
    d = few.as_dict()
    assert list(d) == TOP_KEYS and d["evaluated_at"] == NOW.isoformat()
    assert list(d["arms"][0]) == [*ARM_KEYS, "ci_low", "ci_high", "valid", "looks"]
    assert type(d["arms"][0]["decision"]) is str and d["arms"][0]["decision"] == "continue"
    many = evaluate(design(max_n=20_000, boundary="horizon"),
                    {"control": sums(20_000, 1000, 0.5), "t1": sums(20_000, 1400, 0.5)}, {},
                    now=NOW)
    d = many.as_dict()
    assert list(d["arms"][0]) == [*ARM_KEYS, "p_now", "ci_low", "ci_high", "log_lambda",
                                  "valid", "looks", "cs_empty"]
    assert set(d["horizon_plan"]) == {"impressions", "info", "share"}
    for ev in (few, many):
        assert Evaluation.from_dict(ev.as_dict()) == ev
        assert Evaluation.from_dict(ev.as_dict()).as_dict() == ev.as_dict()
    assert many.arms[0].decision is Decision.TREATMENT_BETTER
    assert many.arm("t1") == many.arms[0] and many.arm("control") is None


def test_from_dict_reads_partial_and_extended_entries() -> None:
    """Rows written before whole evaluations were stored lack keys; the services add keys
    (guardrails, rolled_back) that are not an arm's look."""
    look = ArmLook.from_dict({"arm": "b", "decision": "treatment_worse", "reason": "x",
                              "guardrails": [], "rolled_back": True})
    assert look.decision == "treatment_worse" and look.valid is False and look.looks == 0
    ev = Evaluation.from_dict({"error": "no such thing"})
    assert ev.arms == () and ev.stop is False and ev.evaluated_at is None


def test_the_horizon_without_evidence_is_inconclusive_not_futile() -> None:
    """At max_n an arm the test has not decided is reported as inconclusive with its
    interval; futility stays reserved for an interval inside ±min_effect."""
    data = {"control": sums(20_000, 1000, 0.5), "t1": sums(20_000, 1030, 0.5)}
    ev = evaluate(design(max_n=40_000), data, {}, now=NOW)
    arm = ev.arms[0]
    assert arm.decision == Decision.INCONCLUSIVE and ev.stop is True
    assert "max_n=40000 impressions reached" in arm.reason
    assert f"{arm.ci_low:+.4g}" in arm.reason  # the interval is reported
    below = evaluate(design(max_n=40_001), data, {}, now=NOW)
    assert below.arms[0].decision == Decision.CONTINUE and below.stop is False
    # with a min_effect the interval lies inside, futility still wins over the horizon
    lo, hi = arm.ci_low, arm.ci_high
    futile = evaluate(design(max_n=40_000, min_effect=max(-lo, hi) * 1.5), data, {},
                      now=NOW).arms[0]
    assert futile.decision == Decision.FUTILE


def test_max_n_counts_the_unit_of_analysis() -> None:
    """unit: user: the sums count users, and so does max_n (a user-unit experiment whose
    horizon was read as impressions never stopped)."""
    users = {"control": ArmSums(n=300, reward_sum=30, reward_sumsq=60, ipw_n=600,
                                ipw_sum=60, ipw_sumsq=240, ipw_n_sq=1200),
             "t1": ArmSums(n=300, reward_sum=31, reward_sumsq=62, ipw_n=600, ipw_sum=62,
                           ipw_sumsq=248, ipw_n_sq=1200)}
    d = Design(arm_keys=("control", "t1"), control="control", binary=False,
               policy_name="thompson", exploration_floor=0.1,
               sequential=SequentialSpec.model_validate({"min_samples": 100, "max_n": 600}),
               unit="user")
    arm = evaluate(d, users, {}, now=NOW).arms[0]
    assert arm.decision == Decision.INCONCLUSIVE and "max_n=600 users reached" in arm.reason
    # before any look (too few data for the test), the horizon still ends the arm
    early = Design(**{**d.__dict__, "sequential": SequentialSpec.model_validate(
        {"min_samples": 1000, "max_n": 600})})
    arm = evaluate(early, users, {}, now=NOW).arms[0]
    assert arm.decision == Decision.INCONCLUSIVE and "before the test had enough data" in \
        arm.reason


def test_tau2_is_frozen_at_the_look_gate_not_at_min_samples_alone() -> None:
    """Regression (power): tau² and the horizon plan were frozen as soon as each arm had
    min_samples impressions; at a 5% click rate that is ~5 clicks per arm and a ±30% error in
    the frozen sigma². They now wait for min_events events per arm, like the looks."""
    few = {"control": sums(200, 8, 0.5), "t1": sums(200, 9, 0.5)}  # 100+ shown, < 30 clicks
    early = evaluate(design(max_n=20_000, boundary="horizon"), few, {}, now=NOW)
    assert early.tau2 is None and early.arms[0].decision == "continue"
    enough = {"control": sums(700, 31, 0.5), "t1": sums(700, 35, 0.5)}
    ev = evaluate(design(max_n=20_000, boundary="horizon"), enough, {}, now=NOW)
    pooled = 66 / 1400 * (1 - 66 / 1400)
    assert ev.tau2_source == "horizon"
    assert ev.tau2 == pytest.approx(tau2_for_horizon(pooled * (1 / 0.1 + 1 / 0.9) / 20_000))
    # min_events 0 restores planning at min_samples alone
    assert evaluate(design(min_events=0), few, {}, now=NOW).tau2 is not None
