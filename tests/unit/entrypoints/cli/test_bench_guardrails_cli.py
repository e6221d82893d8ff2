"""``armlab bench guardrails --quick``: JSON shape, same-run baselines and sanity."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from armlab.entrypoints.cli.main import _register_all, app


def test_bench_guardrails_quick_json() -> None:
    _register_all()
    res = CliRunner().invoke(app, ["bench", "guardrails", "--quick", "--seed", "3", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["bench"] == "guardrails" and out["config"]["quick"] is True
    assert out["config"]["workers"] == 2 and out["config"]["alpha"] == 0.05
    no_harm = out["false_rollback_no_harm"]
    assert {"skip_0.01", "skip_0.02", "skip_0.05", "skip_0.1", "skip_0.2"} <= set(no_harm)
    for row in no_harm.values():
        assert abs(row["true_excess"]) < 1e-12
        for name in ("ipw", "plain_msprt"):
            assert 0.0 <= row[name]["false_rollback_rate"] <= 1.0 and row[name]["se"] >= 0
        assert row["reps"] == out["config"]["reps_per_cell"]
    assert set(out["detection"]) == set(out["regret"]) and out["detection"]
    for name, row in out["detection"].items():
        assert row["true_excess"] > 0
        assert 0.0 <= row["ipw"]["detection_rate"] <= 1.0
        reg = out["regret"][name]
        base, rb = reg["no_guardrail"], reg["ipw_rollback"]
        # a rollback can only shorten the treatment's exposure
        assert 0.0 <= rb["extra_harm"] <= base["extra_harm"] + 1e-9
        assert reg["harm_saved"] >= -1e-9 and reg["clicks_lost_by_rollback"] >= -1e-9
    assert out["detection"]["skip_0.1_to_0.12_abs0.005"]["margin"] == {
        "kind": "absolute", "value": 0.005}


def test_bench_guardrails_rejects_bad_options() -> None:
    _register_all()
    res = CliRunner().invoke(app, ["bench", "guardrails", "--quick", "--reps", "1"])
    assert res.exit_code != 0
