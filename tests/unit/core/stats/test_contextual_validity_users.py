"""The unit-user contextual cells (armlab.core.contextual_validity_users): reduced cells in
seconds where the per-user analyses stay within alpha + 2 MC s.e. while the per-impression
ones (what ``unit: user`` experiments got before the per-user analysis) do not, and the
simulation's per-user segment test equal to the platform's on the same per-user rows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from armlab.core.contextual_validity_users import (
    ContextualUserCell,
    _llr,
    run_contextual_user_cell,
)
from armlab.core.policies.context_features import ContextParams, ContextSpec
from armlab.core.stats.segment_units import per_unit_rows
from armlab.core.stats.segments import SegmentDesign, segment_effects, segment_table
from armlab.errors import StatsError


@pytest.mark.parametrize("policy", ["segment_thompson", "linear_thompson"])
def test_reduced_user_cell_per_user_holds_per_impression_does_not(policy: str) -> None:
    res = run_contextual_user_cell(ContextualUserCell(
        policy=policy, reps=100, users=4000, look_every=200, impressions=10, icc=0.2, seed=5))
    a = res["analyses"]
    for name in ("segments_per_user", "personalisation_per_user", "average_per_user",
                 "srm_segments_per_user"):
        assert a[name]["fpr_ok"], (name, a[name])
    assert a["segments_per_impression"]["fpr"] > 2 * 0.05, a  # seeded: 0.2 or so
    assert a["average_per_impression"]["fpr"] > 2 * 0.05, a  # seeded: 0.25 or so
    # every impression of a sticky user goes to one arm: counted per impression the arms'
    # shares look unbalanced whatever the correlation of the clicks
    assert a["srm_segments_per_impression"]["fpr"] > 0.2, a
    assert a["srm_segments_per_user"]["level"] == 0.001


def test_without_correlation_both_hold() -> None:
    res = run_contextual_user_cell(ContextualUserCell(
        reps=60, users=2000, look_every=200, impressions=5, icc=0.0, seed=6))
    assert all(x["fpr_ok"] for name, x in res["analyses"].items()
               if name != "srm_segments_per_impression"), res["analyses"]


def test_the_per_user_average_test_is_the_request_cells_when_each_user_sees_one() -> None:
    """One impression per user and no correlation: the per-user and per-impression average
    tests see the same terms; the continuous kernel on 0/1 rewards agrees with the binary one
    closely enough to reject in the same replications almost always."""
    res = run_contextual_user_cell(ContextualUserCell(
        policy="linear_thompson", reps=200, users=4000, look_every=200, impressions=1,
        icc=0.0, seed=9))
    a = res["analyses"]
    assert abs(a["average_per_user"]["fpr"] - a["average_per_impression"]["fpr"]) <= 0.02, a
    assert a["srm_segments_per_impression"]["fpr"] == a["srm_segments_per_user"]["fpr"], a


def test_bad_cells_are_refused() -> None:
    with pytest.raises(StatsError):
        ContextualUserCell(segments="crossed")
    with pytest.raises(StatsError):
        ContextualUserCell(icc=1.0)


def test_simulated_per_user_test_equals_the_platform_test() -> None:
    spec = ContextSpec(ContextParams(features=[
        {"name": "segment", "kind": "categorical", "levels": ["s0", "s1", "s2"]}]).features)
    rng = np.random.default_rng(7)
    rows = []
    for u in range(3000):
        g = int(rng.choice(3, p=[0.5, 0.3, 0.2]))
        w = [[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.2, 0.6, 0.2]][g]
        k = int(rng.choice(3, p=w))
        rate = rng.beta(1.0, 12.0) * (1 + 0.5 * k)
        for _ in range(int(rng.integers(1, 8))):
            rows.append((f"u{u}", ("abc"[k], float(rng.random() < rate), w[k],
                                   {"segment": f"s{g}"})))
    idx = np.array([int(r[1][3]["segment"][1]) for r in rows], dtype=np.int64)
    per_user, seg, _ = per_unit_rows(rows, idx)
    table = segment_table(spec, ["a", "b", "c"], per_user, seg)
    cell = ContextualUserCell(floor=0.1, arms=3, users=3000, min_samples=100, min_events=30)
    plat = segment_effects(table, SegmentDesign(
        control="a", treatments=("b", "c"), alpha=cell.alpha, binary=False, min_samples=100,
        min_events=30, horizon=3000, floor=0.1))
    fields = ("n", "reward_sum", "reward_sumsq", "ipw_n", "ipw_sum", "ipw_sumsq", "ipw_n_sq")
    sums = np.array([[[[getattr(s[a], f) for a in "abc"] for s in table.sums]]
                     for f in fields])  # (7, 1, G, K)
    events = np.array([[[s[a].feedback_n for a in "abc"] for s in table.sums]])
    llr = _llr(sums, events, cell, 3000.0, binary=False)
    tested = 0
    for r in plat["rows"]:
        j = "bc".index(r["arm"])
        val = llr[j, 0, r["segment_index"]]
        p_sim = 1.0 if not np.isfinite(val) or val <= 0 else math.exp(-val)
        assert p_sim == pytest.approx(r["p_value"], rel=1e-9), r
        tested += r["valid"]
    assert tested >= 2


def test_cli_runs_the_user_cells() -> None:
    import json

    from typer.testing import CliRunner

    from armlab.entrypoints.cli.main import _register_all, app

    _register_all()
    res = CliRunner().invoke(app, [
        "simulate", "validity", "--contextual", "--contextual-users", "400",
        "--contextual-look", "1000", "--contextual-impressions", "5", "--reps", "5",
        "--floors", "0.1", "--policies", "linear_thompson", "--segments", "same",
        "--workers", "1", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["n_cells"] == 1
    cell = out["cells"][0]["cell"]
    assert cell["users"] == 400 and cell["look_every"] == 200 and cell["impressions"] == 5
    assert set(out["cells"][0]["analyses"]) == {
        f"{a}_per_{u}" for a in ("average", "segments", "srm_segments", "personalisation")
        for u in ("user", "impression")}
