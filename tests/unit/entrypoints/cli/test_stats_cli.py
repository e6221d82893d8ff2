"""``armlab stats msprt`` reference interface and ``armlab simulate sequential`` output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from armlab.core.stats.msprt import msprt_two_sample
from armlab.entrypoints.cli.stats import run_msprt_cases
from armlab.errors import StatsError


def test_running_values_over_checkpoints() -> None:
    cases = [{"alpha": 0.05, "tau2": 1e-4, "theta0": 0, "kind": "bernoulli", "checkpoints": [
        {"n_a": 5000, "sum_a": 250, "n_b": 5000, "sum_b": 330},
        {"n_a": 6000, "sum_a": 320, "n_b": 6000, "sum_b": 340}]}]
    out = run_msprt_cases(cases)[0]["checkpoints"]
    first = msprt_two_sample("bernoulli", 5000, 250, None, 5000, 330, None, tau2=1e-4)
    assert out[0]["p_value"] == pytest.approx(first.p_value)
    assert out[1]["p_value"] == pytest.approx(first.p_value)  # running minimum kept
    assert out[1]["ci_low"] >= out[0]["ci_low"] and out[1]["ci_high"] <= out[0]["ci_high"]
    assert set(out[0]) >= {"lambda", "p_value", "ci_low", "ci_high"}


@pytest.mark.parametrize(("cases", "match"), [
    ({}, "JSON list"),
    ([{"alpha": 0.05, "checkpoints": []}], "missing field 'tau2'"),
    ([{"tau2": 1, "kind": "x", "checkpoints": []}], "kind must be"),
    ([{"tau2": 1, "checkpoints": [{"n_a": 1}]}], "checkpoint 0: missing field 'sum_a'"),
])
def test_bad_cases_name_the_problem(cases: object, match: str) -> None:
    with pytest.raises(StatsError, match=match):
        run_msprt_cases(cases)


def test_cli_prints_json_and_one_line_errors(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from armlab.entrypoints.cli.main import GROUPS, _register_all, app

    _register_all()
    f = tmp_path / "cases.json"
    f.write_text(json.dumps([{"alpha": 0.05, "tau2": 1.0, "theta0": 0, "kind": "normal",
                              "checkpoints": [{"n_a": 100, "sum_a": 350, "sumsq_a": 1300,
                                               "n_b": 100, "sum_b": 380, "sumsq_b": 1500}]}]))
    res = CliRunner().invoke(app, ["stats", "msprt", "--input", str(f), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)[0]["checkpoints"][0]["p_value"] < 1
    res = CliRunner().invoke(app, ["simulate", "sequential", "--reps", "50", "--max-n", "1000",
                                   "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    assert {"rejection_rate", "rejection_rate_se", "mean_n", "median_n"} <= set(got)
    assert "simulate" in GROUPS
