"""Benchmark plumbing in quick mode: JSON shape, baselines and ratios present."""

from __future__ import annotations

from armlab.tools.bench.policy import run_policy_bench


def test_policy_bench_quick_reports_baselines_and_ratios() -> None:
    out = run_policy_bench(quick=True)
    row = out["regret"]["k3_easy"]
    for name in ("armlab_ts_online", "armlab_ts_batch1000", "uniform", "mabwiser_ts",
                 "mabwiser_eps0.1"):
        assert row[name]["regret_mean"] >= 0
    assert row["armlab_ts_online"]["regret_mean"] < row["uniform"]["regret_mean"]
    assert row["armlab_ts_over_mabwiser_ts"]["ratio"] > 0
    assert row["batch1000_over_online"]["ratio"] > 0
    speed = out["decision_speed"]
    assert speed["armlab_single_us"] > 0 and speed["batch_speedup"] > 0
