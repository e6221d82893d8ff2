"""``armlab bench contextual`` at a tiny size: the JSON's shape, ratios, and peers that are
missing reported as such (never estimated)."""

from __future__ import annotations

import pytest

from armlab.tools.bench import contextual as bench


def test_tiny_run_reports_ratios_and_marks_missing_peers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bench, "_installed", lambda module: None)
    out = bench.run_contextual_bench(horizon=300, seeds=3, peer_seeds=1, latency=False)
    assert out["sizes"] == {"horizon": 300, "seeds": 3, "peer_seeds": 1, "batch_every": 100,
                            "seed": 2026}
    assert set(out["scenarios"]) == set(out["targets"]) == {
        "segments_differ", "segments_same", "segments_main_effect", "segments_differ_low_ctr",
        "segments_same_low_ctr"}
    for name in out["scenarios"]:
        row = out["scenarios"][name]
        assert {"armlab_thompson", "armlab_segment_thompson", "armlab_linear_thompson"} <= set(row)
        assert row["best_peer"] is None
        for peer in row["peers"].values():
            assert peer["installed"] is False and "not installed" in peer["note"]
            assert "regret_mean" not in peer
        ratio = row["segment_thompson_over_thompson"]["ratio"]
        assert ratio == pytest.approx(row["armlab_segment_thompson"]["regret_mean"]
                                      / row["armlab_thompson"]["regret_mean"], abs=1e-3)
        assert row["linear_thompson_over_best_peer"] is None
    assert "decision_latency" not in out


def test_ratio_standard_error() -> None:
    r = bench._ratio({"regret_mean": 50.0, "regret_se": 5.0},
                     {"regret_mean": 100.0, "regret_se": 10.0})
    assert r == {"ratio": 0.5, "se": pytest.approx(0.5 * (0.1**2 + 0.1**2) ** 0.5, abs=1e-3)}
    assert bench._ratio({"regret_mean": 1.0}, {"regret_mean": 0.0}) == {"ratio": None}
