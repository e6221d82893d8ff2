"""Per-segment effects, per-segment SRM and the value of personalisation against numbers
computed by hand on small cases (armlab.core.stats.segments, .personalisation)."""

from __future__ import annotations

import math

import pytest
from scipy.special import lambertw

from armlab.core.policies.context_features import ContextParams, ContextSpec
from armlab.core.stats.ope_estimate import cs_radius
from armlab.core.stats.personalisation import personalisation_value
from armlab.core.stats.segments import (
    SegmentDesign,
    segment_effects,
    segment_srm,
    segment_table,
)

SPEC = ContextSpec(ContextParams(features=[
    {"name": "device", "kind": "categorical", "levels": ["m", "d"]}]).features)


def _rows(arm: str, n: int, clicks: int, p: float, device: str | None
          ) -> list[tuple[str, float, float, dict[str, str] | None]]:
    ctx = None if device is None else {"device": device}
    return [(arm, 1.0 if i < clicks else 0.0, p, ctx) for i in range(n)]


def _tau2_factor(alpha: float) -> float:
    """-W_{-1}(-alpha² e^{alpha² - 1}) - 1: Howard et al.'s tau² / V* at the horizon."""
    return float(-lambertw(-(alpha**2) * math.exp(alpha**2 - 1.0), k=-1).real - 1.0)


def test_segment_effect_matches_the_hand_computation() -> None:
    # segment m: control 200 at p=.5 with 40 clicks, treatment 200 at p=.5 with 60 clicks;
    # segment d: 200 + 200, 40 clicks each (no effect); nothing in "other"
    rows = (_rows("c", 200, 40, 0.5, "m") + _rows("t", 200, 60, 0.5, "m")
            + _rows("c", 200, 40, 0.5, "d") + _rows("t", 200, 40, 0.5, "d"))
    table = segment_table(SPEC, ["c", "t"], rows)
    assert [int(x) for x in table.impressions] == [400, 400, 0]
    d = SegmentDesign(control="c", treatments=("t",), alpha=0.05, min_samples=100,
                      min_events=30, horizon=20_000, floor=0.1)
    out = segment_effects(table, d)
    assert out["hypotheses"] == 3 and out["cs_alpha"] == pytest.approx(0.05 / 3)
    m_row = next(r for r in out["rows"] if r["segment"] == {"device": "m"})
    # by hand: c = 100/400 = .25; Zbar = ((120 - 100) - (80 - 100)) / 400 = 0.1
    assert m_row["estimate"] == pytest.approx(0.1)
    # m2 (robust, floored at the pooled .1875): .1875 and .2125; ipw_n_sq = 800 per arm:
    # second = (.1875*800 + .2125*800)/400 = .8 (> realised .75); sigma2 = (.8 - .01)*400/399
    v = (0.8 - 0.01) * 400 / 399 / 400
    # tau²: pooled p(1-p) = .1875, share .5 of 20,000, inverse sum 1/.1 + 1/.9
    tau2 = _tau2_factor(0.05) * 0.1875 * (1 / 0.1 + 1 / 0.9) / 10_000
    llr = 0.5 * math.log(v / (v + tau2)) + tau2 * 0.01 / (2 * v * (v + tau2))
    assert m_row["p_value"] == pytest.approx(math.exp(-llr), rel=1e-9)
    half = math.sqrt(v * (v + tau2) / tau2 * (math.log1p(tau2 / v) - 2 * math.log(0.05 / 3)))
    assert (m_row["ci_low"], m_row["ci_high"]) == pytest.approx((0.1 - half, 0.1 + half))
    d_row = next(r for r in out["rows"] if r["segment"] == {"device": "d"})
    assert d_row["estimate"] == pytest.approx(0.0) and d_row["p_value"] == pytest.approx(1.0)
    # Holm over 3 hypotheses (the empty "other" segment counts with p = 1)
    assert m_row["p_adjusted"] == pytest.approx(min(1.0, 3 * m_row["p_value"]))
    assert m_row["significant"] == (3 * m_row["p_value"] <= 0.05)


def test_segment_without_enough_events_is_not_tested() -> None:
    rows = _rows("c", 200, 5, 0.5, "m") + _rows("t", 200, 6, 0.5, "m")
    out = segment_effects(segment_table(SPEC, ["c", "t"], rows),
                          SegmentDesign(control="c", treatments=("t",)))
    (row,) = out["rows"]
    assert row["p_value"] == 1.0 and row["ci_low"] is None and not row["significant"]


def test_segment_srm_matches_the_hand_computation() -> None:
    # segment m balanced; segment d: 150 control and 50 treatment, both logged at p = .5
    rows = (_rows("c", 100, 10, 0.5, "m") + _rows("t", 100, 10, 0.5, "m")
            + _rows("c", 150, 10, 0.5, "d") + _rows("t", 50, 10, 0.5, "d"))
    srm = {tuple(r["segment"].values()): r for r in segment_srm(
        segment_table(SPEC, ["c", "t"], rows), min_samples=100)}
    assert srm[("m",)]["p_value"] == pytest.approx(1.0) and not srm[("m",)]["mismatch"]
    # d: mean of 1{A=c}/p - 1 = 300/200 - 1 = .5; sum x² = 600 - 600 + 200 -> sigma2 = .75
    v, tau2 = 0.75 / 200, 0.02**2
    llr = 0.5 * math.log(v / (v + tau2)) + tau2 * 0.25 / (2 * v * (v + tau2))
    p = min(1.0, 2 * math.exp(-llr))  # Bonferroni over the two arms
    assert srm[("d",)]["p_value"] == pytest.approx(p) and p == pytest.approx(0.0846, abs=1e-3)
    assert srm[("d",)]["p_adjusted"] == pytest.approx(min(1.0, 3 * p))  # 3 declared segments
    assert srm[("d",)]["expected"] == pytest.approx({"c": 100.0, "t": 100.0})


def test_segment_srm_flags_a_large_mismatch() -> None:
    rows = _rows("c", 1500, 10, 0.5, "m") + _rows("t", 500, 10, 0.5, "m")
    (row,) = segment_srm(segment_table(SPEC, ["c", "t"], rows))
    assert row["mismatch"] and row["p_adjusted"] < 0.001


def test_unreadable_rows_are_skipped_and_missing_context_is_other() -> None:
    rows = [("c", 1.0, 0.5, None), ("zz", 1.0, 0.5, {"device": "m"}),
            ("t", 0.0, 0.0, {"device": "m"}), ("t", 0.0, 0.5, {"device": ["x"]})]
    table = segment_table(SPEC, ["c", "t"], rows)
    assert table.skipped == 3 and [int(x) for x in table.impressions] == [0, 0, 1]


def test_personalisation_value_matches_the_hand_computation() -> None:
    # greedy: a in m, b in d; each arm clicked once, in its own segment, at p = .5
    actions = ["a", "b", "a", "b"]
    rewards = [1.0, 0.0, 0.0, 1.0]
    probs = [[0.9, 0.1], [0.9, 0.1], [0.2, 0.8], [0.2, 0.8]]
    out = personalisation_value(["a", "b"], actions, rewards, [0.5] * 4, probs)
    assert out["value_policy"] == pytest.approx(1.0)
    assert out["value_arms"] == pytest.approx({"a": 0.5, "b": 0.5})
    # differences vs a: (0, 0, 0, 2), vs b: (2, 0, 0, 0): mean .5, sd 1 each
    r = cs_radius(1.0, 4, 0.025)
    assert out["gain"] == pytest.approx(0.5)
    assert (out["cs_low"], out["cs_high"]) == pytest.approx((0.5 - r, 0.5 + r))
    assert out["policy_share"] == pytest.approx({"a": 0.5, "b": 0.5})
    stoch = personalisation_value(["a", "b"], actions, rewards, [0.5] * 4, probs,
                                  target="stochastic")
    # stochastic: V = (.9*2 + .8*2)/4 = .85
    assert stoch["value_policy"] == pytest.approx(0.85)
