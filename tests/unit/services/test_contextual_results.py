"""The results' ``contextual`` block on the in-memory unit of work: per-segment weights from
the snapshot, per-segment effects that find the segment that differs, the value of
personalisation, and the strict response model (armlab.services.contextual_results)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from armlab.core.records import NewSnapshot
from armlab.core.specs import ExperimentSpec
from armlab.entrypoints.api.schemas import ResultsOut
from armlab.services import registry
from armlab.services.contextual_results import contextual_block
from armlab.services.results import build_results
from tests.fakes import FakeUnitOfWork

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
FEATURES = [{"name": "device", "kind": "categorical", "levels": ["m", "d"]}]
# P(arm | segment) the snapshot serves, and the click rates: b wins in m, c wins in d
WEIGHTS = {"m": [0.2, 0.6, 0.2], "d": [0.2, 0.2, 0.6], "other": [1 / 3, 1 / 3, 1 / 3]}
RATES = {"m": [0.10, 0.20, 0.10], "d": [0.10, 0.10, 0.20], "other": [0.1, 0.1, 0.1]}


def _experiment(uow: FakeUnitOfWork, policy: str = "segment_thompson",
                features: list[dict[str, Any]] | None = None) -> Any:
    """A running experiment registered with its contextual policy (a features list the spec
    refuses is set on the row afterwards, to test the block's own error)."""
    feats = FEATURES if features is None else features
    spec = ExperimentSpec.model_validate({
        "key": "ctx", "exploration_floor": 0.05,
        "policy": {"name": policy, "params": {"features": FEATURES}},
        "arms": [{"key": k, "control": k == "a", "variant": {"kind": "popularity"}}
                 for k in "abc"]})
    exp = registry.create_experiment(uow, spec=spec, actor="t")
    registry.start_experiment(uow, key="ctx", actor="t", reason="go")
    assert exp.policy_name == policy
    if features is not None:
        exp.policy_params = {"features": feats}
    return exp


def _log(uow: FakeUnitOfWork, exp: Any, n: int = 20_000, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        seg = str(rng.choice(["m", "d", "other"], p=[0.5, 0.4, 0.1]))
        k = int(rng.choice(3, p=WEIGHTS[seg]))
        r = float(rng.random() < RATES[seg][k])
        ctx = {} if seg == "other" else {"device": seg}
        served = NOW - timedelta(hours=3) + timedelta(seconds=i / 10)
        rows.append(("abc"[k], r, WEIGHTS[seg][k], served, ctx))
    uow.evidence.contexts[exp.id] = rows
    uow.evidence.add_snapshot(NewSnapshot(
        experiment_id=exp.id, policy_name="segment_thompson", policy_version="1",
        weights={"a": 0.2, "b": 0.4, "c": 0.4}, created_at=NOW,
        stats={"contextual": {"policy": "segment_thompson", "features": FEATURES,
                              "arms": ["a", "b", "c"], "segments": [
                                  {"segment": {"device": s}, "source": "segment",
                                   "weights": WEIGHTS[s], "prob_best": WEIGHTS[s]}
                                  for s in ("m", "d", "other")]}}))


def test_segment_block_finds_the_segments_that_differ_and_the_gain() -> None:
    uow = FakeUnitOfWork()
    exp = _experiment(uow)
    _log(uow, exp)
    block = contextual_block(uow, exp, now=NOW)
    assert block is not None and block["matured_impressions"] == 20_000
    assert block["declared_segments"] == 3
    seg = {s["label"]: s for s in block["segments"]}
    assert seg["device=m"]["weights"] == pytest.approx(dict(zip("abc", WEIGHTS["m"])))
    assert seg["device=other"]["source"] == "segment"
    effects = {(r["segment"].get("device"), r["arm"]): r for r in block["effects"]["rows"]}
    assert block["effects"]["hypotheses"] == 6
    assert effects[("m", "b")]["significant"] and effects[("d", "c")]["significant"]
    assert effects[("m", "b")]["ci_low"] > 0
    assert not effects[("m", "c")]["significant"] and not effects[("d", "b")]["significant"]
    assert not any(s["mismatch"] for s in block["srm"])  # propensities match the draws
    pers = block["personalisation"]
    # greedy: b in m, c in d, a (first of the ties) in other: about .5*.2 + .4*.2 + .1*.1
    # = .19 against .5*.2+.4*.1+.1*.1 = .15 for b alone
    assert pers["available"] and pers["target"] == "greedy"
    assert pers["gain"] == pytest.approx(0.04, abs=0.02) and pers["cs_low"] > 0
    assert pers["summary"].startswith("serving by segment gains +0.0")


def test_srm_per_segment_flags_a_segment_whose_propensities_are_wrong() -> None:
    uow = FakeUnitOfWork()
    exp = _experiment(uow)
    _log(uow, exp)
    # segment d logged uniform propensities although it was served 20/20/60
    uow.evidence.contexts[exp.id] = [
        (a, r, 1 / 3 if c.get("device") == "d" else p, t, c)
        for a, r, p, t, c in uow.evidence.contexts[exp.id]]
    srm = {tuple(s["segment"].values()): s for s in contextual_block(uow, exp, now=NOW)["srm"]}
    assert srm[("d",)]["mismatch"] and not srm[("m",)]["mismatch"]


def test_results_carry_the_block_and_validate_strictly() -> None:
    uow = FakeUnitOfWork()
    exp = _experiment(uow)
    _log(uow, exp, n=3000)
    out = ResultsOut.model_validate(build_results(uow, exp))
    assert out.contextual is not None and out.contextual.personalisation is not None
    assert len(out.contextual.segments) == 3


def test_no_block_for_a_non_contextual_policy_and_none_before_a_snapshot() -> None:
    uow = FakeUnitOfWork()
    exp = _experiment(uow)
    exp.policy_name = "thompson"
    assert build_results(uow, exp)["contextual"] is None
    exp.policy_name = "segment_thompson"
    block = contextual_block(uow, exp, now=NOW)
    assert block is not None and block["personalisation"] == {
        "available": False, "reason": "no contextual allocation snapshot yet"}


def test_linear_policy_without_categorical_features_has_no_segments() -> None:
    uow = FakeUnitOfWork()
    exp = _experiment(uow, "linear_thompson", [{"name": "age", "kind": "numeric",
                                               "center": 35, "scale": 10}])
    uow.evidence.contexts[exp.id] = [
        ("abc"[i % 3], float(i % 7 == 0), 1 / 3, NOW - timedelta(hours=2), {"age": 20 + i % 40})
        for i in range(600)]
    uow.evidence.add_snapshot(NewSnapshot(
        experiment_id=exp.id, policy_name="linear_thompson", policy_version="1",
        weights={"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, created_at=NOW,
        stats={"contextual": {"policy": "linear_thompson", "features": exp.policy_params[
            "features"], "arms": ["a", "b", "c"], "mean": [[0.1, 0.0], [0.1, 0.02],
                                                           [0.1, -0.02]],
            "cov": [np.eye(2).tolist()] * 3, "floor": 0.05, "grid": 48, "burn_in": False}}))
    block = contextual_block(uow, exp, now=NOW)
    assert block is not None
    assert block["segments"] == [] and block["effects"] is None and block["srm"] == []
    assert block["personalisation"]["available"]
    assert ResultsOut.model_validate(build_results(uow, exp)).contextual is not None


def test_bad_features_give_an_error_not_a_crash() -> None:
    uow = FakeUnitOfWork()
    exp = _experiment(uow, features=[{"name": "x", "kind": "categorical"}])
    block = contextual_block(uow, exp, now=NOW)
    assert block is not None and block["error"].startswith("policy.params.features")


def test_dashboard_shows_per_segment_weights_effects_and_the_gain() -> None:
    from armlab.entrypoints.api.ui.routes import TEMPLATES
    from armlab.services import dashboard

    uow = FakeUnitOfWork()
    exp = _experiment(uow)
    _log(uow, exp)
    view = dashboard.experiment_view(uow, "ctx", now=NOW)
    assert view["contextual"]["segments"]
    html = TEMPLATES.env.get_template("_live.html").render(v=view)
    assert 'id="contextual"' in html and "serving by segment gains +0.0" in html
    row = html.split('data-segment="device=m"')[1].split("</tr>")[0]
    assert "<code>b</code> 0.600" in row  # the snapshot's weight of b in segment m
    assert "significant" in row.split('data-arm="b"')[1].split("</div>")[0]
    assert "<span class=\"ok\">ok</span>" in row  # SRM


def test_report_has_the_contextual_section() -> None:
    from armlab.entrypoints.report import build_report
    from armlab.services.report import collect_by_key

    uow = FakeUnitOfWork()
    exp = _experiment(uow)
    _log(uow, exp)
    html = build_report(collect_by_key(uow, "ctx"))
    assert 'id="contextual"' in html and "serving by segment gains +0.0" in html
    assert "device=m" in html and "device=d" in html


def test_a_policy_that_picks_one_arm_everywhere_personalises_nothing() -> None:
    uow = FakeUnitOfWork()
    exp = _experiment(uow)
    _log(uow, exp, n=2000)
    snap = uow.evidence.latest_snapshot(exp.id)
    for row in snap.stats["contextual"]["segments"]:
        row["weights"] = [0.9, 0.05, 0.05]
    pers = contextual_block(uow, exp, now=NOW)["personalisation"]
    assert not pers["available"] and "picks a in every matured context" in pers["reason"]


def test_a_rolled_back_arm_missing_from_the_snapshot_has_weight_zero() -> None:
    uow = FakeUnitOfWork()
    exp = _experiment(uow)
    _log(uow, exp, n=3000)
    snap = uow.evidence.latest_snapshot(exp.id)
    ctx = snap.stats["contextual"]
    ctx["arms"] = ["a", "b"]  # c rolled back: the allocation serves a and b only
    for row in ctx["segments"]:
        row["weights"] = row["prob_best"] = [0.3, 0.7] if row["segment"]["device"] == "m" \
            else [0.6, 0.4]
    block = contextual_block(uow, exp, now=NOW)
    seg = {s["label"]: s for s in block["segments"]}
    assert seg["device=m"]["weights"] == pytest.approx({"a": 0.3, "b": 0.7, "c": 0.0})
    assert block["personalisation"]["policy_share"]["c"] == 0.0


def test_unit_user_analyses_one_term_per_user_in_its_first_segment() -> None:
    uow = FakeUnitOfWork()
    exp = _experiment(uow)
    _log(uow, exp, n=6000)
    exp.unit = "user"
    # 1,500 users of 4 impressions each, sticky arm and propensity; user 0 moves segment
    rows = []
    for i, (a, r, p, t, c) in enumerate(uow.evidence.contexts[exp.id][:1500]):
        for j in range(4):
            ctx = c if i or j < 3 else {"device": "m" if c.get("device") == "d" else "d"}
            rows.append((f"u{i}", a, r, p, t + timedelta(minutes=j), ctx))
    uow.evidence.unit_contexts[exp.id] = rows
    block = contextual_block(uow, exp, now=NOW)
    assert block is not None and block["per_user"]["impressions"] == 6000
    assert block["per_user"]["users"] == 1500
    assert sum(s["impressions"] for s in block["segments"]) == 1500  # users
    assert block["per_user"]["changed_segment"] == 1
    assert "1 of 1500 users" in block["warnings"][0]
    assert block["personalisation"]["n"] == 1500
    assert "per user over the best single arm" in block["personalisation"]["summary"]
    assert ResultsOut.model_validate(build_results(uow, exp)).contextual is not None
