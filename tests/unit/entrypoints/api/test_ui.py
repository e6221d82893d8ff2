"""The dashboard's server side on SQLite through TestClient: sign-in, cookies, CSRF, roles,
the register form's field errors (the API's own), escaping, security headers."""

from __future__ import annotations

import fnmatch
import html
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from starlette.responses import Response

from armlab.entrypoints.api.app import create_app
from armlab.entrypoints.api.auth import Authenticator, Principal
from armlab.entrypoints.api.ui.session import SESSION_COOKIE, SessionManager
from armlab.settings import Settings
from tests.unit.entrypoints.api.test_experiments_api import ADMIN, TOKENS, make_spec


@pytest.fixture()
def app(sqlite_url: str) -> Any:
    return create_app(Settings(database_url=sqlite_url, auth_tokens=TOKENS, transport="memory",
                               ui_secret="unit-test-secret"))


@pytest.fixture()
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no csrf field"
    return m.group(1)


def sign_in(client: TestClient, token: str) -> str:
    """Sign in; returns the session's CSRF token."""
    page = client.get("/ui/login")
    r = client.post("/ui/login", data={"token": token, "csrf": csrf_of(page.text),
                                       "next": "/ui/experiments"}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return csrf_of(client.get("/ui/experiments").text)


def test_pages_need_a_session_and_the_cookie_is_httponly_strict(client: TestClient) -> None:
    r = client.get("/ui/experiments/x?q=1", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/login?next=")
    page = client.get("/ui/login")
    assert "content-security-policy" in page.headers
    assert "script-src 'self'" in page.headers["content-security-policy"]
    r = client.post("/ui/login", data={"token": "admin-secret", "csrf": csrf_of(page.text)},
                    follow_redirects=False)
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert "admin-secret" not in cookie
    assert client.get("/ui/experiments").status_code == 200


def test_sign_in_needs_its_csrf_token_and_a_valid_token(client: TestClient) -> None:
    client.get("/ui/login")
    r = client.post("/ui/login", data={"token": "admin-secret", "csrf": "forged"})
    assert r.status_code == 403
    page = client.get("/ui/login")
    r = client.post("/ui/login", data={"token": "nope", "csrf": csrf_of(page.text)})
    assert r.status_code == 401 and "not valid" in r.text


def test_sign_out_needs_the_csrf_token_and_ends_the_session(client: TestClient) -> None:
    csrf = sign_in(client, "reader-secret")
    assert client.post("/ui/logout", data={}).status_code == 403
    assert client.get("/ui/experiments", follow_redirects=False).status_code == 200
    r = client.post("/ui/logout", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    assert client.get("/ui/experiments", follow_redirects=False).status_code == 303


def test_open_redirects_are_refused(client: TestClient) -> None:
    page = client.get("/ui/login")
    r = client.post("/ui/login", data={"token": "admin-secret", "csrf": csrf_of(page.text),
                                       "next": "//evil.example/x"}, follow_redirects=False)
    assert r.headers["location"] == "/ui/experiments"


def test_register_form_shows_the_same_field_errors_as_the_api(client: TestClient) -> None:
    bad = make_spec(exploration_floor=0.9, arms=make_spec()["arms"][:1], key="Bad Key!")
    api = client.post("/v1/experiments", json=bad, headers=ADMIN)
    assert api.status_code == 422
    api_errors = {(e["field"], e["message"]) for e in api.json()["errors"]}
    csrf = sign_in(client, "admin-secret")
    r = client.post("/ui/experiments", data={"spec": yaml.safe_dump(bad), "csrf": csrf})
    assert r.status_code == 422
    shown = set(re.findall(r'<code class="field">(.*?)</code> (.*?)</li>', r.text))
    assert {(f, html.unescape(m)) for f, m in shown} == api_errors
    r = client.post("/ui/experiments", data={"spec": "{not: [valid", "csrf": csrf})
    assert r.status_code == 422 and "not valid JSON or YAML" in r.text


def test_register_then_duplicate_key_is_shown_not_500(client: TestClient) -> None:
    csrf = sign_in(client, "admin-secret")
    spec = yaml.safe_dump(make_spec())
    r = client.post("/ui/experiments", data={"spec": spec, "csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303
    r = client.post("/ui/experiments", data={"spec": spec, "csrf": csrf})
    assert r.status_code == 409 and "already exists" in r.text


def test_actions_need_csrf_and_admin(client: TestClient) -> None:
    admin = sign_in(client, "admin-secret")
    client.post("/ui/experiments", data={"spec": yaml.safe_dump(make_spec()), "csrf": admin})
    assert client.post("/ui/experiments/home-recs/start", data={}).status_code == 403
    assert client.post("/ui/experiments/home-recs/start",
                       data={"csrf": admin + "x"}).status_code == 403
    r = client.post("/ui/experiments/home-recs/start", data={"csrf": admin},
                    follow_redirects=False)
    assert r.status_code == 303
    client.cookies.clear()
    reader = sign_in(client, "reader-secret")
    r = client.post("/ui/experiments/home-recs/stop", data={"csrf": reader, "reason": "r"})
    assert r.status_code == 403 and "needs role" in r.text
    page = client.get("/ui/experiments/home-recs")
    assert 'id="actions"' not in page.text
    assert client.get("/ui/experiments/home-recs?source=raw").status_code == 403
    client.cookies.clear()
    assert client.post("/ui/experiments/home-recs/stop",
                       data={"csrf": admin, "reason": "r"}).status_code == 403  # no session
    audit = client.get("/v1/experiments/home-recs/audit", headers=ADMIN).json()["entries"]
    assert [e["action"] for e in audit] == ["create", "start"]


def test_stop_needs_a_reason_and_illegal_transitions_are_shown(client: TestClient) -> None:
    csrf = sign_in(client, "admin-secret")
    client.post("/ui/experiments", data={"spec": yaml.safe_dump(make_spec()), "csrf": csrf})
    r = client.post("/ui/experiments/home-recs/stop", data={"csrf": csrf, "reason": " "})
    assert r.status_code == 422 and "needs a reason" in r.text
    r = client.post("/ui/experiments/home-recs/stop", data={"csrf": csrf, "reason": "why"})
    assert r.status_code == 409 and "cannot stop" in r.text
    assert client.get("/ui/experiments/nope").status_code == 404


def test_names_are_escaped_everywhere(client: TestClient) -> None:
    csrf = sign_in(client, "admin-secret")
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    spec = make_spec(name=evil, description=evil)
    client.post("/ui/experiments", data={"spec": yaml.safe_dump(spec), "csrf": csrf})
    for path in ("/ui/experiments", "/ui/experiments/home-recs",
                 "/ui/experiments/home-recs/live"):
        text = client.get(path).text
        assert "<script>alert" not in text and "<img src=x" not in text, path
    assert "&lt;script&gt;alert" in client.get("/ui/experiments").text


def test_revoked_or_tampered_sessions_end() -> None:
    auth = Authenticator("boss:admin:s1")
    mgr = SessionManager("k", ttl_s=60, max_s=3600, secure=False)

    class Req:
        def __init__(self, cookies: dict[str, str]) -> None:
            self.cookies = cookies

    resp = Response()
    session = mgr.start(resp, Principal("boss", "admin"), b"s1")
    value = re.search(rf"{SESSION_COOKIE}=([^;]+)", resp.headers["set-cookie"]).group(1)
    assert mgr.read(Req({SESSION_COOKIE: value}), auth) == session  # type: ignore[arg-type]
    assert mgr.read(Req({SESSION_COOKIE: value[:-2] + "xx"}), auth) is None  # type: ignore[arg-type]
    assert mgr.read(Req({SESSION_COOKIE: value}), Authenticator("boss:reader:s1")) is None  # type: ignore[arg-type]
    other = SessionManager("another key", ttl_s=60, max_s=3600, secure=False)
    assert other.read(Req({SESSION_COOKIE: value}), auth) is None  # type: ignore[arg-type]
    assert SessionManager.csrf_ok(session, session.csrf)
    assert not SessionManager.csrf_ok(session, None)
    assert not SessionManager.csrf_ok(session, session.csrf[:-1])


def test_every_dashboard_asset_is_package_data_with_its_licence() -> None:
    """The wheel carries every template, script, stylesheet and vendored library (and each
    library's licence): the dashboard never loads anything from the network."""
    root = Path(__file__).resolve().parents[4]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["armlab"]
    ui = root / "armlab" / "entrypoints" / "api" / "ui"
    assets = [p for p in ui.rglob("*") if p.is_file() and p.suffix != ".py"
              and "__pycache__" not in p.parts]
    assert assets
    for p in assets:
        rel = p.relative_to(root / "armlab").as_posix()
        assert any(fnmatch.fnmatch(rel, g) for g in globs), f"{rel} is not package data"
    vendor = {p.name for p in (ui / "static" / "vendor").iterdir()}
    assert {"htmx-LICENSE.txt", "uPlot-LICENSE.txt"} <= vendor
    for template in (ui / "templates").glob("*.html"):
        text = template.read_text()
        assert "http://" not in text and "https://" not in text, template.name
        assert "<script>" not in text, f"{template.name}: inline script (the CSP forbids it)"
