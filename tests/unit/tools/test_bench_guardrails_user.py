"""``python -m armlab.tools.bench.guardrails --unit user``: the user grid runs and reports the
per-user test next to the per-impression ones."""

from __future__ import annotations

import json

import pytest

from armlab.tools.bench.guardrails import main, run_guardrail_bench


def test_user_grid_reports_the_per_user_test() -> None:
    r = run_guardrail_bench(reps=20, quick=True, workers=1, unit="user", horizon=400,
                            look_every=50)
    assert r["config"]["unit"] == "user" and r["config"]["horizon_users"] == 400
    assert r["config"]["cell_defaults"]["min_samples"] == 100
    row = r["false_rollback_no_harm"]["user_skip_0.1_icc0.3"]
    assert row["unit"] == "user" and row["icc"] == 0.3
    assert {"per_user", "ipw", "plain_msprt"} <= set(row)
    assert 0.0 < row["treatment_share_no_guardrail"] < 1.0
    det = r["detection"]["user_skip_0.1_to_0.16_abs0.02_icc0.1"]
    assert "median_users_to_rollback" in det["per_user"]


def test_module_entry_point(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--unit", "user", "--quick", "--reps", "4", "--workers", "1", "--horizon", "200"])
    out = json.loads(capsys.readouterr().out)
    assert out["bench"] == "guardrails" and out["config"]["unit"] == "user"
