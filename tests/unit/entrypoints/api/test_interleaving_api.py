"""An interleaving experiment through the API and the dashboard on SQLite (TestClient): the
results carry ``design`` and the ``interleaving`` block (validated by the strict response
model and documented in the OpenAPI schema), the experiment page shows the pair rows, the
Condorcet winner and the ranker-choice probabilities, and ship is refused without force."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import sessionmaker

from armlab.adapters.db.allocation_store import SqlAllocationStore
from armlab.adapters.db.engine import make_engine
from armlab.entrypoints.api.app import create_app
from armlab.services.allocator import run_allocation
from armlab.settings import Settings
from tests.interleaving_data import add_units, preferring
from tests.unit.entrypoints.api.test_experiments_api import ADMIN, READER, TOKENS
from tests.unit.entrypoints.api.test_ui import sign_in

ARMS = ["a", "b", "c"]
BODY: dict[str, Any] = {
    "key": "il", "design": "interleaving", "unit": "request",
    "arms": [{"key": k, "control": i == 0, "variant": {"kind": "popularity"}}
             for i, k in enumerate(ARMS)],
    "interleaving": {"rankers_per_request": 2, "min_units": 30, "planned_units": 500},
    "sequential": {"alpha": 0.05, "auto_stop": False},
}


@pytest.fixture()
def client(sqlite_url: str) -> Iterator[TestClient]:
    app = create_app(Settings(database_url=sqlite_url, auth_tokens=TOKENS, transport="memory",
                              ui_secret="unit-test-secret"))
    with TestClient(app) as c:
        r = c.post("/v1/experiments", json=BODY, headers=ADMIN)
        assert r.status_code == 201, r.text
        assert c.post("/v1/experiments/il/start", headers=ADMIN).status_code == 200
        yield c


def _evidence(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    sf = sessionmaker(engine)
    add_units(sf, 1, preferring("c", ARMS, 300, np.random.default_rng(11)),
              tallies={("a", "c"): (120, 15, 70, 20, 90), ("b", "c"): (110, 20, 60, 25, 75)})
    run_allocation(SqlAllocationStore(sf), now=datetime(2030, 1, 1, tzinfo=UTC))
    engine.dispose()


def test_results_show_the_interleaving_block(client: TestClient, sqlite_url: str) -> None:
    r = client.get("/v1/experiments/il/results", headers=READER)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["design"] == "interleaving" and body["sequential"] is None
    assert body["interleaving"]["recorded"] is False
    _evidence(sqlite_url)
    body = client.get("/v1/experiments/il/results", headers=READER).json()
    il = body["interleaving"]
    assert il["rankers"] == ARMS and il["condorcet_winner"] == "c" and il["recorded"]
    pairs = {(p["a"], p["b"]): p for p in il["pairs"]}
    assert set(pairs) == {("a", "b"), ("a", "c"), ("b", "c")}
    ac = pairs[("a", "c")]
    assert ac["winner"] == "c" and ac["decision"] == "b_better" and ac["compared"] == 120
    assert (ac["a_wins"], ac["b_wins"], ac["a_clicks"], ac["b_clicks"]) == (15, 70, 20, 90)
    assert ac["win_rate_a"] == pytest.approx(15 / 85) and ac["ci_high"] < 0
    assert ac["p_adjusted"] <= 0.05 and 0 < ac["propensity"] <= 1
    assert il["choice"]["m"] == 2 and set(il["choice"]["enter"]) == set(ARMS)
    assert body["snapshot"]["stats"]["design"] == "interleaving"
    ab = client.get("/openapi.json").json()["components"]["schemas"]
    assert "interleaving" in ab["ResultsOut"]["properties"]
    assert "win_rate_a" in ab["PairResultOut"]["properties"]


def test_ship_needs_the_condorcet_winner_or_force(client: TestClient, sqlite_url: str) -> None:
    _evidence(sqlite_url)
    r = client.post("/v1/experiments/il/ship", json={"arm": "a", "reason": "r"}, headers=ADMIN)
    assert r.status_code == 409 and "Condorcet winner" in r.text
    r = client.post("/v1/experiments/il/ship", json={"arm": "c", "reason": "r"}, headers=ADMIN)
    assert r.status_code == 200, r.text


def test_dashboard_page_shows_the_pairs(client: TestClient, sqlite_url: str) -> None:
    _evidence(sqlite_url)
    sign_in(client, "reader-secret")
    page = client.get("/ui/experiments/il")
    assert page.status_code == 200, page.text
    text = page.text
    assert 'id="interleaving"' in text and 'id="leaderboard"' not in text
    for pair in ("a|b", "a|c", "b|c"):
        assert f'data-pair="{pair}"' in text
    assert '<b id="condorcet-winner">c</b>' in text
    assert 'id="ranker-choice"' in text and "15 : 70" in text
    listing = client.get("/ui/experiments").text
    assert "Condorcet winner decided" in listing
    assert "interleaving (dueling bandit, 2 of 3)" in listing and "thompson" not in listing
    live = client.get("/ui/experiments/il/live")
    assert live.status_code == 200 and 'data-pair="a|c"' in live.text
