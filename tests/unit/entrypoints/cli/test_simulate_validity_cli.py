"""``armlab simulate validity``: JSON for a subset of the grid; bad options are StatsErrors."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from armlab.entrypoints.cli.main import _register_all, app
from armlab.errors import StatsError


def test_validity_subset_json_and_one_line_errors() -> None:
    _register_all()
    res = CliRunner().invoke(app, [
        "simulate", "validity", "--base-rates", "0.05", "--floors", "0.2", "--looks", "100",
        "--units", "request,user", "--delays", "no", "--reps", "20", "--max-n", "1000",
        "--workers", "1", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["n_cells"] == 2 and len(out["cells"]) == 2
    names = set(out["cells"][1]["analyses"])
    assert names == {"armlab", "armlab_horizon", "msprt_thompson", "msprt_fixed",
                     "ipw_per_impression"}
    row = out["cells"][0]["analyses"]["armlab"]
    assert {"fpr", "fpr_se", "srm_false_alarm", "coverage", "power", "power_greater",
            "mean_n_at_decision"} <= set(row)
    assert set(out["summary"]) == names
    for args, match in ((["--units", "foo"], "--units"), (["--base-rates", "x"], "--base-rates"),
                        (["--units", "user", "--looks", "15"], "multiple of")):
        res = CliRunner().invoke(app, ["simulate", "validity", "--reps", "5", *args])
        # an ArmlabError, which the entry point prints as one line with exit status 1
        assert res.exit_code != 0 and isinstance(res.exception, StatsError)
        assert match in str(res.exception)


def test_contextual_cells_json_and_table() -> None:
    _register_all()
    base = ["simulate", "validity", "--contextual", "--policies", "linear_thompson",
            "--segments", "same,crossed", "--floors", "0.1", "--reps", "10",
            "--contextual-horizon", "2000", "--contextual-look", "500", "--workers", "1"]
    res = CliRunner().invoke(app, [*base, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["n_cells"] == 2 and [c["null"] for c in out["cells"]] == [True, False]
    assert set(out["cells"][0]["analyses"]) == {
        "average", "segments", "segments_unadjusted", "srm_segments", "personalisation"}
    table = CliRunner().invoke(app, base)
    assert table.exit_code == 0 and "linear_thompson segments=crossed" in table.output
    bad = CliRunner().invoke(app, [*base[:4], "bogus"])  # --policies bogus
    assert bad.exit_code != 0 and isinstance(bad.exception, StatsError)
