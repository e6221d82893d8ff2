"""The contextual cells of the validity grid (armlab.core.contextual_validity): reduced cells
in seconds (A/A within alpha + 2 MC s.e. for every analysis, under both contextual policies,
segments that differ and that do not), a power cell that shows the tests can reject, and the
simulation's per-segment test equal to the platform's (armlab.core.stats.segments)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from armlab.core.contextual_validity import (
    ContextualCell,
    contextual_grid,
    cs_radius_v,
    run_contextual_cell,
    segment_llr,
)
from armlab.core.policies.context_features import ContextParams, ContextSpec
from armlab.core.stats.ope_estimate import cs_radius
from armlab.core.stats.segments import SegmentDesign, segment_effects, segment_table
from armlab.errors import StatsError

REDUCED = {"reps": 100, "horizon": 5000, "look_every": 500}


@pytest.mark.parametrize("cell", contextual_grid(**REDUCED, seed=3),
                         ids=lambda c: f"{c.policy}-{c.segments}")
def test_reduced_contextual_cell_is_within_alpha(cell: ContextualCell) -> None:
    res = run_contextual_cell(cell)
    for name, a in res["analyses"].items():
        if name != "segments_unadjusted":
            assert a["fpr_ok"], (name, a)
        assert a["fpr"] <= a["level"] + 2 * a["fpr_se"] or name == "segments_unadjusted"


def test_the_tests_can_reject_a_real_effect() -> None:
    """Not A/A (``null`` False): the rates are power."""
    res = run_contextual_cell(ContextualCell(
        policy="linear_thompson", segments="same", lift=2.0, reps=40, horizon=20_000,
        look_every=1000, seed=1))
    a = res["analyses"]
    assert not res["null"]
    assert a["average"]["fpr"] > 0.8 and a["segments"]["fpr"] > 0.5
    assert a["srm_segments"]["fpr"] <= 0.05  # the propensities are still right
    assert a["personalisation"]["fpr"] <= 0.05  # one arm is best everywhere: no gain
    crossed = run_contextual_cell(ContextualCell(
        policy="linear_thompson", segments="crossed", reps=40, horizon=20_000,
        look_every=1000, seed=2))["analyses"]
    assert crossed["personalisation"]["fpr"] > 0.7 and crossed["segments"]["fpr"] > 0.2


def test_simulated_segment_test_equals_the_platform_test() -> None:
    spec = ContextSpec(ContextParams(features=[
        {"name": "segment", "kind": "categorical", "levels": ["s0", "s1", "s2"]}]).features)
    rng = np.random.default_rng(5)
    rows = []
    for _ in range(6000):
        g = int(rng.choice(3, p=[0.5, 0.3, 0.2]))
        w = [[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.2, 0.6, 0.2]][g]
        k = int(rng.choice(3, p=w))
        rows.append(("abc"[k], float(rng.random() < [0.05, 0.08, 0.12][g] * (1 + 0.4 * k)),
                     w[k], {"segment": f"s{g}"}))
    table = segment_table(spec, ["a", "b", "c"], rows)
    cell = ContextualCell(floor=0.1, arms=3, horizon=20_000, min_samples=100, min_events=30)
    plat = segment_effects(table, SegmentDesign(
        control="a", treatments=("b", "c"), alpha=cell.alpha, min_samples=100, min_events=30,
        horizon=20_000, floor=0.1))
    fields = ("n", "reward_sum", "reward_sumsq", "ipw_n", "ipw_sum", "ipw_sumsq", "ipw_n_sq")
    sums = np.array([[[[getattr(seg[a], f) for a in "abc"] for seg in table.sums]]
                     for f in fields])  # (7, 1, G, K)
    llr = segment_llr(sums, cell)
    tested = 0
    for r in plat["rows"]:
        j = "bc".index(r["arm"])
        val = llr[j, 0, r["segment_index"]]
        p_sim = 1.0 if not np.isfinite(val) or val <= 0 else math.exp(-val)
        assert p_sim == pytest.approx(r["p_value"], rel=1e-9), r
        tested += r["valid"]
    assert tested >= 2  # tested looks compared, not only the gated ones


def test_vectorised_radius_is_the_platform_radius() -> None:
    got = cs_radius_v(np.array([0.7, 2.0]), np.array([50.0, 5000.0]), 0.01)
    assert got == pytest.approx([cs_radius(0.7, 50, 0.01), cs_radius(2.0, 5000, 0.01)])


def test_cell_errors() -> None:
    with pytest.raises(StatsError):
        ContextualCell(policy="thompson")  # type: ignore[arg-type]
    with pytest.raises(StatsError):
        ContextualCell(floor=0.5, arms=3)
    with pytest.raises(StatsError):
        ContextualCell(segments="crossed", arms=2)
    assert len(contextual_grid(floors=(0.05, 0.1))) == 8
