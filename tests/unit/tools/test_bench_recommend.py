"""``armlab bench recommend`` end to end on tiny random models: a real API process, the
MovieLens catalogue, the demo's arms, batched requests and the single-request baseline."""

from __future__ import annotations

from pathlib import Path

import pytest

from armlab.adapters.scoring.tiny import make_tiny_model
from armlab.tools.bench.recommend import run_recommend_bench


@pytest.mark.timeout(300)
def test_recommend_bench_reports_the_figure_and_the_same_run_baseline(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ARMLAB_DATABASE_URL", raising=False)
    monkeypatch.setenv("ARMLAB_HOME", str(tmp_path / "home"))
    enc = str(make_tiny_model(tmp_path / "encoder", "encoder"))
    out = run_recommend_bench(requests=60, concurrency=4, max_seconds=60,
                              tiny_models={"encoder": enc})
    assert out["benchmark"] == "recommend" and out["models"] == "tiny random (test)"
    assert out["requests"] == 60 and out["errors"] == 0 and out["requests_per_s"] > 0
    base = out["baseline_single_request"]
    assert base["concurrency"] == 1 and base["requests"] >= 15 and base["errors"] == 0
    assert out["ratio_requests_per_s"] == pytest.approx(
        out["requests_per_s"] / base["requests_per_s"], rel=0.02)
    assert out["arms"] == ["popularity", "minilm-history-pop", "minilm-history"]
