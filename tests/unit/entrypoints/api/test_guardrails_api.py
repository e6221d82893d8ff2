"""Guardrail metrics on a registration through the API: stored, shown, validated (422 naming
the field), frozen once the experiment runs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from armlab.entrypoints.api.app import create_app
from armlab.settings import Settings
from tests.unit.entrypoints.api.test_experiments_api import ADMIN, READER, TOKENS, make_spec

SKIP = {"key": "skips", "source": {"feedback": "skip"}, "harm": "increase",
        "margin": {"absolute": 0.01}, "alpha": 0.05}


@pytest.fixture()
def client(sqlite_url: str) -> Iterator[TestClient]:
    settings = Settings(database_url=sqlite_url, auth_tokens=TOKENS, auth_disabled=False,
                        transport="memory")
    with TestClient(create_app(settings)) as c:
        yield c


def test_guardrails_are_registered_and_shown(client: TestClient) -> None:
    latency = {"key": "latency", "source": {"impression_field": "serving.latency_ms"},
               "harm": "increase", "margin": {"relative": 0.1}, "on_breach": "stop"}
    r = client.post("/v1/experiments", json=make_spec(guardrails=[SKIP, latency]),
                    headers=ADMIN)
    assert r.status_code == 201, r.text
    got = client.get("/v1/experiments/home-recs", headers=READER).json()
    g = {x["key"]: x for x in got["guardrails"]}
    assert g["skips"]["aggregate"] == "any" and g["skips"]["on_breach"] == "rollback"
    assert g["skips"]["margin"] == {"absolute": 0.01, "relative": None}
    assert g["latency"]["aggregate"] == "mean" and g["latency"]["alpha"] == 0.05
    assert g["latency"]["margin"]["relative"] == 0.1 and g["latency"]["on_breach"] == "stop"
    assert got["rolled_back"] == {}


def _with(**change: Any) -> dict[str, Any]:
    g = {**SKIP, **change}
    return {k: v for k, v in g.items() if v is not None}


@pytest.mark.parametrize(("guardrail", "field"), [
    (_with(margin={"absolute": -0.1}), "guardrails.0.margin.absolute"),
    (_with(margin={"relative": "inf"}), "guardrails.0.margin.relative"),
    (_with(margin={"absolute": 0.1, "relative": 0.1}), "guardrails.0.margin"),
    (_with(margin={}), "guardrails.0.margin"),
    (_with(alpha=0.5), "guardrails.0.alpha"),
    (_with(alpha=0), "guardrails.0.alpha"),
    (_with(harm="up"), "guardrails.0.harm"),
    (_with(harm=None), "guardrails.0.harm"),
    (_with(aggregate="median"), "guardrails.0.aggregate"),
    (_with(source={}), "guardrails.0.source"),
    (_with(source={"feedback": "low_rating"}), "guardrails.0.source.feedback"),
    (_with(source={"feedback": "skip", "impression_field": "x"}), "guardrails.0.source"),
    (_with(source={"impression_field": "a..b"}), "guardrails.0.source.impression_field"),
    (_with(source={"impression_field": "latency"}, aggregate="any"),
     "guardrails.0.aggregate"),
    (_with(source={"feedback": "click"}), "guardrails"),  # the primary reward itself
    (_with(key="Bad Key"), "guardrails.0.key"),
    (_with(on_breach="panic"), "guardrails.0.on_breach"),
    (_with(typo=1), "guardrails.0.typo"),
])
def test_bad_guardrails_are_422_naming_the_field(client: TestClient, guardrail: dict[str, Any],
                                                 field: str) -> None:
    r = client.post("/v1/experiments", json=make_spec(guardrails=[guardrail]), headers=ADMIN)
    assert r.status_code == 422, r.text
    fields = [e["field"] for e in r.json()["errors"]]
    assert any(f.startswith(field) for f in fields), (fields, r.text)
    assert client.get("/v1/experiments/home-recs", headers=READER).status_code == 404


def test_duplicate_guardrail_keys_are_422(client: TestClient) -> None:
    r = client.post("/v1/experiments", json=make_spec(guardrails=[SKIP, SKIP]), headers=ADMIN)
    assert r.status_code == 422
    assert "guardrails.1.key: duplicate" in r.json()["detail"]
