"""``armlab bench contextual --obd`` at a reduced size (the reduced OBD comparison of
``make test``): every policy's progressive IPW value with its confidence sequence on the Open
Bandit Dataset sample's uniform log, side by side; a missing peer is reported as such."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from armlab.adapters.data import obd
from armlab.tools.bench import contextual_obd as bench


def test_user_contexts_follow_the_log_order() -> None:
    log = obd.load_log("random", "men", limit=500)
    ctx = obd.load_user_contexts("random", "men", limit=500)
    assert len(ctx) == log.n == 500
    assert set(ctx[0]) == set(obd.USER_FEATURES)
    data = bench.load_obd("men", limit=500)
    assert data.levels["user_feature_0"] and data.n_items == 34
    assert np.allclose(data.propensity, 1 / 34)


def test_before_any_learning_every_policy_is_uniform_and_its_terms_are_the_clicks() -> None:
    data = bench.load_obd("men", limit=2000)
    first = slice(0, 100)  # the first batch: no policy has learned anything yet
    for name in ("armlab_thompson", "armlab_segment_thompson", "armlab_linear_thompson"):
        _, run, _ = bench.POLICIES[name]
        terms = run(data, 100, 1)
        assert terms[first] == pytest.approx(data.clicks[first]), name
        assert np.all(terms >= 0) and np.count_nonzero(terms) <= data.clicks.sum()


def test_reduced_comparison_side_by_side(monkeypatch: pytest.MonkeyPatch) -> None:
    real = bench._installed
    monkeypatch.setattr(bench, "_installed",
                        lambda m: None if m == "mabwiser" else real(m))
    out = bench.run_obd_bench(campaigns=("men",), limit=2000)
    camp = out["campaigns"]["men"]
    assert camp["rows"] == 2000 and camp["items"] == 34
    assert camp["logging_policy_uniform"]["value"] == pytest.approx(camp["clicks"] / 2000)
    pols = camp["policies"]
    for name in ("armlab_thompson", "armlab_segment_thompson", "armlab_linear_thompson"):
        row = pols[name]
        assert row["cs_low"] <= row["value"] <= row["cs_high"]
    for name in ("armlab_segment_thompson", "armlab_linear_thompson"):
        gain = pols[name]["gain_over_thompson"]
        assert gain["cs_low"] <= gain["value"] <= gain["cs_high"]
    assert pols["mabwiser_lints_alpha1"]["installed"] is False
    assert isinstance(camp["intervals_overlap"], bool)
    json.dumps(out)


def test_cli_flag_runs_the_obd_comparison(monkeypatch: pytest.MonkeyPatch) -> None:
    from armlab.entrypoints.cli.main import _register_all, app

    _register_all()
    seen = {}

    def fake(**kw: object) -> dict[str, object]:
        seen.update(kw)
        return {"bench": "contextual --obd"}

    monkeypatch.setattr(bench, "run_obd_bench", fake)
    res = CliRunner().invoke(app, ["bench", "contextual", "--obd", "--obd-limit", "300",
                                   "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == {"bench": "contextual --obd"}
    assert seen["limit"] == 300 and seen["batch_every"] == 100
