"""The guardrail glue (pure): Bonferroni over treatments, the running p-value, frozen arms,
the one recommendation, and the test's direction ("clear harm is breached, no harm is not",
whatever implementation of ``guardrail_test`` is installed)."""

from __future__ import annotations

import pytest

from armlab.core.evidence import ArmSums
from armlab.core.recommendation import breached_arms, evaluate_guardrails, recommend
from armlab.core.specs import GuardrailSpec
from armlab.core.stats.noninferiority import guardrail_test


def sums(rate: float, n: int = 4000, p: float = 0.5, value: float = 1.0) -> ArmSums:
    k = round(rate * n)
    return ArmSums(n=n, reward_sum=k * value, reward_sumsq=k * value**2, ipw_n=n / p,
                   ipw_sum=k * value / p, ipw_sumsq=k * value**2 / p**2, ipw_n_sq=n / p**2,
                   feedback_n=k)


def spec(**kw: object) -> GuardrailSpec:
    body = {"key": "skips", "source": {"feedback": "skip"}, "harm": "increase",
            "margin": {"absolute": 0.01}, "alpha": 0.05, **kw}
    return GuardrailSpec.model_validate(body)


@pytest.mark.parametrize(("harm", "a", "b", "breached"), [
    ("increase", 0.10, 0.30, True),
    ("increase", 0.10, 0.10, False),
    ("increase", 0.30, 0.10, False),   # a decrease is not harm here
    ("decrease", 0.30, 0.10, True),
    ("decrease", 0.10, 0.30, False),
])
def test_clear_harm_is_breached_and_no_harm_is_not(harm: str, a: float, b: float,
                                                   breached: bool) -> None:
    r = guardrail_test(8000, sums(a), sums(b), harm=harm,  # type: ignore[arg-type]
                       margin=0.01, relative=False, alpha=0.05, binary=True)
    assert r.informative and r.breached is breached
    if breached:
        assert r.p_value <= 0.05 and r.excess is not None and r.excess > 0


def test_relative_margin_tolerates_harm_within_it() -> None:
    # +20% relative skips: breached with a 5% relative margin, not with a 50% one
    a, b = sums(0.20, n=20000), sums(0.24, n=20000)
    tight = guardrail_test(40000, a, b, harm="increase", margin=0.05, relative=True,
                           alpha=0.05, binary=True)
    loose = guardrail_test(40000, a, b, harm="increase", margin=0.5, relative=True,
                           alpha=0.05, binary=True)
    assert tight.breached and not loose.breached and loose.non_inferior


def test_running_p_never_rises_and_the_gate_holds() -> None:
    r = guardrail_test(20, sums(0.1, n=10), sums(0.5, n=10), harm="increase", margin=0.0,
                       relative=False, alpha=0.05, binary=True, prior_p=0.2)
    assert not r.informative and r.p_value == 0.2 and not r.breached
    kept = guardrail_test(8000, sums(0.1), sums(0.1), harm="increase", margin=0.0,
                          relative=False, alpha=0.05, binary=True, prior_p=0.01)
    assert kept.p_value == 0.01 and kept.breached  # once breached, stays breached


def test_evaluate_divides_alpha_by_treatments_and_carries_state() -> None:
    per_arm = {"skips": {"ctl": sums(0.1), "b": sums(0.3), "c": sums(0.1)}}
    frozen = {("skips", "c"): {"metric": "skips", "arm": "c", "state": "breached",
                               "p_value": 0.001}}
    out = evaluate_guardrails([spec(alpha=0.1)], control="ctl", treatments=["b", "c"],
                              sums=per_arm, previous={}, frozen=frozen)
    by = {e["arm"]: e for e in out}
    assert by["b"]["alpha"] == pytest.approx(0.05) and by["b"]["state"] == "breached"
    assert by["b"]["alpha_guardrail"] == 0.1 and by["b"]["on_breach"] == "rollback"
    assert by["c"]["frozen"] and by["c"]["state"] == "breached"  # kept as it was
    prior = evaluate_guardrails([spec()], control="ctl", treatments=["c"], sums=per_arm,
                                previous={("skips", "c"): 1e-6})
    assert prior[0]["p_value"] == 1e-6 and prior[0]["state"] == "breached"


def test_recommendation_never_names_a_breached_arm() -> None:
    ev = {"arms": [
        {"arm": "b", "decision": "treatment_better", "estimate": 0.08, "p_adjusted": 0.01},
        {"arm": "c", "decision": "treatment_better", "estimate": 0.05, "p_adjusted": 0.02},
    ]}
    g = [{"metric": "skips", "arm": "b", "state": "breached"},
         {"metric": "skips", "arm": "c", "state": "non_inferior"}]
    rec = recommend(ev, g, control="ctl")
    assert rec["action"] == "ship" and rec["arm"] == "c"
    assert any("b: breached guardrail(s) skips" in r for r in rec["reasons"])
    both = recommend(ev, g, control="ctl", rolled_back={"c": {"metric": "latency"}})
    assert both["action"] == "keep_control" and both["arm"] == "ctl"
    assert breached_arms(g, {"c": {"metric": "latency"}}) == {"b": ["skips"], "c": ["latency"]}
    going = recommend({"arms": [{"arm": "b", "decision": "continue"}]}, [], control="ctl")
    assert going == {"action": "continue", "arm": None,
                     "reasons": ["b: evidence not conclusive yet"]}
    worse = recommend({"arms": [{"arm": "b", "decision": "treatment_worse", "reason": "x"}]},
                      [], control="ctl")
    assert worse["action"] == "keep_control"


def test_an_impression_field_guardrail_becomes_informative() -> None:
    """Latency-like metric (continuous, one observation per impression): a clear slowdown is a
    breach once both arms have observations, a tiny one inside the margin is not."""
    def lat(mean: float, n: int = 3000) -> ArmSums:
        # half the impressions at mean - 5, half at mean + 5 ms; propensity 0.5
        lo, hi = mean - 5.0, mean + 5.0
        s1, s2 = n / 2 * (lo + hi), n / 2 * (lo * lo + hi * hi)
        return ArmSums(n=n, reward_sum=s1, reward_sumsq=s2, ipw_n=2 * n, ipw_sum=2 * s1,
                       ipw_sumsq=4 * s2, ipw_n_sq=4 * n, feedback_n=n)

    g = GuardrailSpec.model_validate({"key": "latency", "source": {
        "impression_field": "serving.latency_ms"}, "harm": "increase",
        "margin": {"relative": 0.1}})
    out = evaluate_guardrails([g], control="ctl", treatments=["slow", "same"], sums={
        "latency": {"ctl": lat(100.0), "slow": lat(130.0), "same": lat(101.0)}}, previous={})
    by = {e["arm"]: e for e in out}
    assert by["slow"]["state"] == "breached"
    assert by["same"]["state"] in ("non_inferior", "ok")
