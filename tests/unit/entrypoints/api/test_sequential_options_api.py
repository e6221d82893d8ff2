"""The sequential options of a registration through the API: ``alternative``,
``min_events``, ``boundary`` and ``cuped`` are stored and validated (422 naming the field)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from armlab.entrypoints.api.app import create_app
from armlab.settings import Settings
from tests.unit.entrypoints.api.test_experiments_api import ADMIN, READER, TOKENS, make_spec


@pytest.fixture()
def client(sqlite_url: str) -> Iterator[TestClient]:
    settings = Settings(database_url=sqlite_url, auth_tokens=TOKENS, auth_disabled=False,
                        transport="memory")
    with TestClient(create_app(settings)) as c:
        yield c


def test_one_sided_alternative_is_registered(client: TestClient) -> None:
    body = make_spec(sequential={"alternative": "greater", "min_events": 50,
                                 "boundary": "horizon"})
    r = client.post("/v1/experiments", json=body, headers=ADMIN)
    assert r.status_code == 201, r.text
    seq = client.get("/v1/experiments/home-recs", headers=READER).json()["sequential"]
    assert seq["alternative"] == "greater" and seq["min_events"] == 50
    assert seq["boundary"] == "horizon"


@pytest.mark.parametrize("bad", [{"alternative": "less"}, {"alternative": 1},
                                 {"min_events": -1}, {"min_events": "many"},
                                 {"boundary": "pocock"}, {"boundary": None}])
def test_bad_sequential_options_are_422_naming_the_field(client: TestClient,
                                                         bad: dict[str, object]) -> None:
    r = client.post("/v1/experiments", json=make_spec(sequential=bad), headers=ADMIN)
    assert r.status_code == 422
    fields = [e["field"] for e in r.json()["errors"]]
    assert any(f.startswith(f"sequential.{next(iter(bad))}") for f in fields), fields


def test_cuped_is_registered_for_a_user_unit_experiment(client: TestClient) -> None:
    body = make_spec(unit="user", sequential={"cuped": {"pre_period_days": 14}})
    r = client.post("/v1/experiments", json=body, headers=ADMIN)
    assert r.status_code == 201, r.text
    seq = client.get("/v1/experiments/home-recs", headers=READER).json()["sequential"]
    assert seq["cuped"] == {"pre_period_days": 14, "covariate": "reward"}
    r = client.post("/v1/experiments", json=make_spec(key="plain"), headers=ADMIN)
    assert r.status_code == 201, r.text  # off by default
    assert client.get("/v1/experiments/plain", headers=READER).json()["sequential"][
        "cuped"] is None


@pytest.mark.parametrize("unit, cuped, field", [
    ("request", {"pre_period_days": 28}, "sequential"),  # needs unit: user
    ("request", {}, "sequential"),
    ("user", {"pre_period_days": 0}, "sequential.cuped.pre_period_days"),
    ("user", {"pre_period_days": 366}, "sequential.cuped.pre_period_days"),
    ("user", {"pre_period_days": "a month"}, "sequential.cuped.pre_period_days"),
    ("user", {"covariate": "revenue"}, "sequential.cuped.covariate"),
    ("user", {"pre_period": 28}, "sequential.cuped.pre_period"),
    ("user", True, "sequential.cuped"),
])
def test_bad_cuped_is_422_naming_the_field(client: TestClient, unit: str, cuped: object,
                                           field: str) -> None:
    r = client.post("/v1/experiments", json=make_spec(unit=unit, sequential={"cuped": cuped}),
                    headers=ADMIN)
    assert r.status_code == 422, r.text
    errors = {e["field"]: e["message"] for e in r.json()["errors"]}
    assert field in errors, errors
    if field == "sequential":
        assert "cuped" in errors[field] and "unit: user" in errors[field]


def test_cuped_is_refused_on_an_interleaving_experiment(client: TestClient) -> None:
    body = make_spec(unit="user", design="interleaving", sequential={"cuped": {}})
    r = client.post("/v1/experiments", json=body, headers=ADMIN)
    assert r.status_code == 422, r.text
    errors = {e["field"]: e["message"] for e in r.json()["errors"]}
    assert "cuped" in errors.get("sequential", ""), errors
