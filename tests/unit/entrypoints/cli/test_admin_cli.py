"""Admin CLI and HTTP client: error mapping, spec files, commands against an in-process API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from armlab.adapters.http_client import ApiError, ArmlabClient
from armlab.entrypoints.api.app import create_app
from armlab.entrypoints.cli import admin
from armlab.errors import ServiceUnavailable, ValidationFailed
from armlab.settings import Settings

TOKENS = "ops:admin:admin-secret,ro:reader:reader-secret"

SPEC_YAML = """\
key: home-recs
name: Home page recommendations
reward: {kind: binary, metric: click}
policy: {name: thompson, params: {}}
exploration_floor: 0.02
arms:
  - key: control
    control: true
    variant: {kind: popularity}
  - key: minilm
    variant: {kind: bi_encoder, model: all-MiniLM-L6-v2}
"""


def mock_client(status: int, body: Any, content_type: str = "application/json") -> ArmlabClient:
    def handler(request: httpx.Request) -> httpx.Response:
        raw = json.dumps(body).encode() if content_type == "application/json" else body
        return httpx.Response(status, content=raw, headers={"content-type": content_type})

    return ArmlabClient("http://api.test", "tok", transport=httpx.MockTransport(handler))


def test_api_error_carries_detail_on_one_line() -> None:
    client = mock_client(409, {"type": "IllegalTransition", "title": "Illegal state transition",
                               "detail": "cannot start experiment 'x':\nit is shipped"})
    with pytest.raises(ApiError) as err:
        client.start("x")
    assert err.value.status == 409
    assert err.value.message == (
        "HTTP 409 Illegal state transition: cannot start experiment 'x': it is shipped"
    )


def test_non_json_error_body_is_still_readable() -> None:
    client = mock_client(502, b"<html>bad gateway</html>", content_type="text/html")
    with pytest.raises(ApiError, match=r"HTTP 502 Bad Gateway: <html>bad gateway</html>"):
        client.list_experiments()


def test_connection_refused_names_the_url() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    client = ArmlabClient("http://127.0.0.1:9", transport=httpx.MockTransport(refuse))
    with pytest.raises(ServiceUnavailable, match=r"cannot reach the armlab API at "
                                                 r"http://127.0.0.1:9: \[Errno 111\]"):
        client.get_experiment("x")


def test_bearer_token_and_quoted_keys_are_sent() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"key": "a/b"})

    ArmlabClient("http://api.test/", "s3cret", transport=httpx.MockTransport(handler)) \
        .get_experiment("a/b")
    assert seen[0].headers["authorization"] == "Bearer s3cret"
    assert seen[0].url.raw_path == b"/v1/experiments/a%2Fb"


def test_load_spec_yaml_json_and_errors(tmp_path: Path) -> None:
    y = tmp_path / "s.yaml"
    y.write_text(SPEC_YAML)
    assert admin.load_spec(y)["arms"][1]["variant"]["model"] == "all-MiniLM-L6-v2"
    j = tmp_path / "s.json"
    j.write_text(json.dumps({"key": "k", "arms": []}))
    assert admin.load_spec(j) == {"key": "k", "arms": []}
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ValidationFailed, match="not valid JSON/YAML"):
        admin.load_spec(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(ValidationFailed, match="must hold one mapping"):
        admin.load_spec(lst)
    with pytest.raises(ValidationFailed, match="cannot read spec file"):
        admin.load_spec(tmp_path / "missing.yaml")


@pytest.fixture()
def cli(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[typer.Typer]:
    """A fresh typer app with the admin commands, talking to an in-process API."""
    settings = Settings(database_url=sqlite_url, auth_tokens=TOKENS, auth_disabled=False,
                    transport="memory")
    with TestClient(create_app(settings)) as tc:
        def client(api_url: str | None, token: str | None) -> ArmlabClient:
            return ArmlabClient("http://testserver", token or "admin-secret", http=tc)

        monkeypatch.setattr(admin, "_client", client)
        app = typer.Typer()
        admin.register(app, {})
        yield app


def test_cli_register_start_ship_show(cli: typer.Typer, tmp_path: Path) -> None:
    runner = CliRunner()
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC_YAML)
    r = runner.invoke(cli, ["experiments", "create", "-f", str(spec)])
    assert r.exit_code == 0, r.output
    assert "home-recs: registered (draft)" in r.output
    r = runner.invoke(cli, ["start", "home-recs", "--reason", "go"])
    assert r.exit_code == 0 and "status running" in r.output
    r = runner.invoke(cli, ["ship", "home-recs", "--arm", "minilm", "--reason", "win", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["shipped_arm"] == "minilm"
    r = runner.invoke(cli, ["experiments", "show", "home-recs"])
    assert r.exit_code == 0, r.output
    for text in ("experiment home-recs", "arms", "results (shipped)", "bi_encoder"):
        assert text in r.output
    r = runner.invoke(cli, ["experiments", "show", "home-recs", "--json"])
    data = json.loads(r.output)
    assert data["experiment"]["status"] == "shipped"
    assert [a["weight"] for a in data["results"]["arms"]] == [0.0, 1.0]
    r = runner.invoke(cli, ["experiments", "list", "--json"])
    assert [e["key"] for e in json.loads(r.output)] == ["home-recs"]
    r = runner.invoke(cli, ["experiments", "list", "--status", "draft"])
    assert r.exit_code == 0 and "no experiments" in r.output
    r = runner.invoke(cli, ["experiments", "audit", "home-recs", "--json"])
    assert [e["action"] for e in json.loads(r.output)] == ["create", "start", "ship"]


def test_cli_errors_raise_armlab_errors(cli: typer.Typer, tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(cli, ["stop", "ghost", "--reason", "x"])
    assert r.exit_code != 0
    assert isinstance(r.exception, ApiError) and r.exception.status == 404
    r = runner.invoke(cli, ["stop", "ghost", "--reason", "x", "--token", "reader-secret"])
    assert isinstance(r.exception, ApiError) and r.exception.status == 403
    bad = tmp_path / "bad.yaml"
    bad.write_text("key: x\narms: []\n")
    r = runner.invoke(cli, ["experiments", "create", "-f", str(bad)])
    assert isinstance(r.exception, ApiError) and r.exception.status == 422
    assert "arms" in r.exception.message
    r = runner.invoke(cli, ["stop", "ghost"])  # --reason is required
    assert r.exit_code == 2


HOSTILE = "[/x] [link=https://evil.example/]click me[/link] [bold red]loud[/] :thumbs_up: \\[esc]"


def test_cli_prints_stored_text_as_text(cli: typer.Typer, tmp_path: Path) -> None:
    """A name, description, metric, variant config and reasons holding Rich markup and emoji
    codes: `experiments show`, `list` and `audit` print them exactly as stored (no MarkupError,
    no link, no emoji, no style)."""
    spec = {"key": "hostile", "name": HOSTILE, "description": "[/x] " + HOSTILE,
            "reward": {"kind": "binary", "metric": "[/m]"},
            "arms": [{"key": "control", "control": True, "variant": {"kind": "popularity"}},
                     {"key": "t1", "variant": {"kind": "bi_encoder", "model": "[/model]",
                                               "item_template": HOSTILE}}]}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    runner = CliRunner()
    assert runner.invoke(cli, ["experiments", "create", "-f", str(path)]).exit_code == 0
    r = runner.invoke(cli, ["start", "hostile", "--reason", HOSTILE])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["experiments", "show", "hostile"], env={"COLUMNS": "400"})
    assert r.exit_code == 0, r.output
    assert r.exception is None
    assert HOSTILE in r.output  # the name, the description, the item template
    assert "[/x] " + HOSTILE in r.output
    assert "binary ([/m])" in r.output and "[/model]" in r.output
    assert "\x1b]8;" not in r.output and "\N{THUMBS UP SIGN}" not in r.output
    r = runner.invoke(cli, ["experiments", "audit", "hostile"], env={"COLUMNS": "400"})
    assert r.exit_code == 0, r.output
    assert HOSTILE in r.output
    r = runner.invoke(cli, ["experiments", "list"], env={"COLUMNS": "400"})
    assert r.exit_code == 0 and "hostile" in r.output


def test_renderers_print_hostile_keys_reasons_and_messages_as_text() -> None:
    """The renderers on data the API never sends today (arm keys and guardrail metrics with
    markup, decision reasons, warnings, errors): still text, never markup."""
    import io

    from armlab.entrypoints.cli import render

    out = io.StringIO()
    con = render.console()
    con.file = out
    con.width = 400  # type: ignore[misc]
    arms = [{"key": "[/a]", "control": True, "impressions": 1, "reward_sum": 0, "weight": 1,
             "variant": {"kind": "[/k]"}}]
    render.render_experiment_list(con, [{"key": "[/e]", "status": "running", "policy": "[/p]",
                                         "unit": "request", "arms": ["[/a]"],
                                         "control_arm_key": "[/a]", "version": 1}])
    render.render_results(con, {
        "status": "[/s]", "arms": arms, "snapshot": None,
        "sequential": {"error": HOSTILE},
        "guardrails": [{"metric": "[/g]", "arm": "[/a]", "harm": "[/h]", "state": "[/st]"}],
        "recommendation": {"action": "ship", "arm": "[/a]", "reasons": [HOSTILE]}})
    render.render_audit(con, "[/e]", [{"at": "now", "actor": "[/u]", "action": "stop",
                                      "reason": HOSTILE, "before": {"r": "[/b]"},
                                      "after": None, "evidence": None}])
    text = out.getvalue()
    for piece in ("[/e]", "[/p]", "[/a]", "[/s]", "[/g]", "[/h]", "[/st]", "[/u]", '"[/b]"',
                  "sequential test unavailable: " + HOSTILE, "  - " + HOSTILE,
                  "recommendation: ship [/a]"):
        assert piece in text, piece
    assert "\x1b" not in text
