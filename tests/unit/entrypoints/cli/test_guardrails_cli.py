"""``armlab experiments show`` and ``armlab ship`` with a guardrail: the guardrails' state, the
one recommendation, and a ship of a breached arm refused unless ``--force``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from armlab.adapters.db.allocation_store import SqlAllocationStore
from armlab.adapters.db.engine import make_engine, make_session_factory
from armlab.adapters.http_client import ApiError, ArmlabClient
from armlab.entrypoints.api.app import create_app
from armlab.entrypoints.cli import admin
from armlab.services.allocator import run_allocation
from armlab.settings import Settings
from tests.unit.entrypoints.api.test_ui import sign_in
from tests.unit.entrypoints.cli.test_admin_cli import TOKENS
from tests.unit.services.test_guardrail_rollback import _setup


@pytest.fixture()
def env(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[typer.Typer, Any]]:
    settings = Settings(database_url=sqlite_url, auth_tokens=TOKENS, auth_disabled=False,
                        transport="memory")
    engine = make_engine(sqlite_url)
    with TestClient(create_app(settings)) as tc:
        def client(api_url: str | None, token: str | None) -> ArmlabClient:
            return ArmlabClient("http://testserver", token or "admin-secret", http=tc)

        monkeypatch.setattr(admin, "_client", client)
        app = typer.Typer()
        admin.register(app, {})
        yield app, make_session_factory(engine)
    engine.dispose()


def test_show_and_ship_with_a_breached_guardrail(env: tuple[typer.Typer, Any],
                                                 tmp_path: Path) -> None:
    cli, sf = env
    _setup(sf)  # "harm" raises the skip rate 10% -> 30%; "fine" does not
    run_allocation(SqlAllocationStore(sf))
    runner = CliRunner()
    r = runner.invoke(cli, ["experiments", "show", "exp"], terminal_width=250)
    assert r.exit_code == 0, r.output
    for text in ("guardrails", "skips", "breached", "recommendation:", "rolled back"):
        assert text in r.output, text
    data = json.loads(runner.invoke(cli, ["experiments", "show", "exp", "--json"]).output)
    res = data["results"]
    assert data["experiment"]["rolled_back"]["harm"]["metric"] == "skips"
    assert {(g["arm"], g["state"]) for g in res["guardrails"]} >= {("harm", "breached")}
    assert res["recommendation"]["action"] in ("continue", "keep_control", "ship")
    assert res["recommendation"]["arm"] != "harm"
    assert next(a for a in res["arms"] if a["key"] == "harm")["rolled_back"] is True
    assert next(a for a in res["arms"] if a["key"] == "harm")["weight"] == 0.0
    r = runner.invoke(cli, ["ship", "exp", "--arm", "harm", "--reason", "x"])
    assert isinstance(r.exception, ApiError) and r.exception.status == 409
    assert "guardrail 'skips' breached by arm 'harm'" in r.exception.message
    assert "--force" in r.exception.message
    r = runner.invoke(cli, ["ship", "exp", "--arm", "harm", "--reason", "x", "--force"])
    assert r.exit_code == 0, r.output


def test_dashboard_shows_guardrails_and_the_recommendation(sqlite_url: str) -> None:
    app = create_app(Settings(database_url=sqlite_url, auth_tokens=TOKENS, transport="memory",
                              ui_secret="unit-test-secret"))
    engine = make_engine(sqlite_url)
    sf = make_session_factory(engine)
    _setup(sf)
    run_allocation(SqlAllocationStore(sf))
    with TestClient(app) as c:
        sign_in(c, "admin-secret")
        page = c.get("/ui/experiments/exp/live")
        assert page.status_code == 200, page.text
        html = page.text
    engine.dispose()
    assert "<th>Guardrails</th>" in html and 'id="recommendation"' in html
    assert "rolled back" in html and "breached" in html and "<code>skips</code>" in html
