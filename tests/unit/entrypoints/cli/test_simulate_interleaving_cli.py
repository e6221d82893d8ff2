"""``armlab simulate interleaving``: JSON for a subset of the reduced grid; no match is an
error."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from armlab.entrypoints.cli.main import _register_all, app
from armlab.errors import StatsError


def test_interleaving_subset_json_and_errors() -> None:
    _register_all()
    res = CliRunner().invoke(app, [
        "simulate", "interleaving", "--quick", "--reps", "10", "--workers", "1",
        "--cells", "self r=2 cascade request,split", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)  # progress goes to stderr
    assert "PASS" in res.stderr
    assert out["n_cells"] == 2 and [c["cell"]["label"] for c in out["cells"]] == [
        "self r=2 cascade request", "split r=2 cascade user"]
    a = out["cells"][0]["analysis"]
    assert {"fpr", "fpr_se", "limit", "pass"} <= set(a)
    assert "per_request_baseline" in out["cells"][1]
    assert out["summary"]["cells"] == 2
    res = CliRunner().invoke(app, ["simulate", "interleaving", "--quick", "--cells", "nope"])
    assert res.exit_code != 0 and isinstance(res.exception, StatsError)
