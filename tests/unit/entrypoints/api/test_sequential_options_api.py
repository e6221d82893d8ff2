"""The sequential options of a registration through the API: ``alternative``,
``min_events`` and ``boundary`` are stored and validated (422 naming the field)."""

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
