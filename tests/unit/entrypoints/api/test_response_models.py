"""The response models are strict (declared fields only) and the results endpoint's JSON keeps
the evaluation's keys as they are: an absent key stays absent, not null."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from armlab.core.decisions import Design, evaluate
from armlab.core.evidence import ArmSums
from armlab.core.specs import SequentialSpec
from armlab.entrypoints.api.schemas import (
    ExperimentSummary,
    Health,
    ResultsOut,
    SequentialOut,
    SequentialUnavailable,
)

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def sums(n: float, clicks: float) -> ArmSums:
    return ArmSums(n=n, reward_sum=clicks, reward_sumsq=clicks, ipw_n=2 * n, ipw_sum=2 * clicks,
                   ipw_sumsq=4 * clicks, ipw_n_sq=4 * n)


def results(data: dict[str, ArmSums]) -> dict[str, Any]:
    """What build_results returns around a recorded evaluation of ``data``."""
    design = Design(("control", "t1"), "control", True, "thompson", 0.1,
                    SequentialSpec.model_validate({"min_samples": 100}))
    seq = evaluate(design, data, {}, now=NOW).as_dict()
    rec = {"action": "continue", "arm": None, "reasons": ["t1: evidence not conclusive yet"]}
    for e in seq["arms"]:
        e["guardrails"] = []
    seq.update(unit="request", cutoff=NOW.isoformat(), guardrails=[], rolled_back={},
               recommendation=rec, recorded=True, recorded_at=NOW.isoformat())
    arms = [{"key": k, "control": k == "control", "impressions": int(s.n), "feedback": 0,
             "reward_sum": s.reward_sum, "mean": s.reward_sum / s.n, "weight": 0.5,
             "rolled_back": False} for k, s in data.items()]
    return {"key": "e", "status": "running", "shipped_arm": None, "control_arm": "control",
            "arms": arms, "snapshot": None, "sequential": seq, "guardrails": [],
            "recommendation": rec}


def served(payload: dict[str, Any]) -> Any:
    """The JSON the results route answers with for ``payload`` (its decorator's options)."""
    app = FastAPI()

    @app.get("/r", response_model=ResultsOut, response_model_exclude_unset=True)
    def route() -> ResultsOut:
        return ResultsOut.model_validate(copy.deepcopy(payload))

    return TestClient(app).get("/r").json()


@pytest.mark.parametrize("data", [
    {"control": sums(50, 2), "t1": sums(50, 9)},  # not looked at: no p_now, log_lambda, ...
    {"control": sums(20_000, 1000), "t1": sums(20_000, 1400)},
])
def test_the_results_json_is_the_evaluation_as_it_is(data: dict[str, ArmSums]) -> None:
    payload = results(data)
    assert served(payload) == payload
    legacy = copy.deepcopy(payload)  # a row stored before whole evaluations were
    for k in ("min_samples", "min_events", "alternative", "boundary", "horizon_plan",
              "evaluated_at", "unit", "cutoff"):
        del legacy["sequential"][k]
    for e in legacy["sequential"]["arms"]:
        del e["mean_control"], e["mean_treatment"], e["guardrails"]
    assert served(legacy) == legacy
    unavailable = {**payload, "sequential": {"error": "no such table"}}
    assert served(unavailable) == unavailable
    assert isinstance(ResultsOut.model_validate(unavailable).sequential, SequentialUnavailable)


def test_response_models_refuse_undeclared_fields() -> None:
    payload = results({"control": sums(50, 2), "t1": sums(50, 9)})
    ResultsOut.model_validate(payload)
    places: list[Callable[[dict[str, Any]], dict[str, Any]]] = [
        lambda r: r, lambda r: r["arms"][0], lambda r: r["sequential"],
        lambda r: r["sequential"]["arms"][0], lambda r: r["sequential"]["srm"],
        lambda r: r["recommendation"]]
    for place in places:
        bad = copy.deepcopy(payload)
        place(bad)["surprise"] = 1
        with pytest.raises(ValidationError, match="surprise"):
            ResultsOut.model_validate(bad)
    with pytest.raises(ValidationError):
        SequentialOut.model_validate({**payload["sequential"], "error": "x"})
    with pytest.raises(ValidationError):
        Health.model_validate({"status": "ok", "extra": True})
    with pytest.raises(ValidationError):
        ExperimentSummary.model_validate({"status": "paused"})
