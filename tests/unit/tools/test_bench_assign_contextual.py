"""``armlab bench assign --contextual`` end to end at a tiny size: one API process serves the
non-contextual and the contextual experiments, every request answers 200 with a propensity
(the load process checks), and the ratios are reported."""

from __future__ import annotations

from armlab.tools.bench.assign_contextual import run_contextual_assign_bench


def test_contextual_assign_bench_reports_every_measurement_and_ratios() -> None:
    out = run_contextual_assign_bench(requests=200, concurrency=2, max_seconds=10, rounds=1)
    names = ("baseline", "baseline_with_context", "segment", "linear", "linear_repeated")
    for name in names:
        assert out[name]["requests"] == 200 and out[name]["errors"] == 0, out[name]
        assert out[name]["p50_ms"] > 0
    for name in names[1:]:
        assert out[name]["ratio_p50"] > 0 and out[name]["ratio_throughput"] > 0
    assert out["segments"] == 24 and out["rounds"] == 1
