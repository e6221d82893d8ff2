"""Dashboard sessions end with their credential (issue 22): a rotated or removed token secret,
a sign-out (for every copy of the cookie), the idle timeout and the absolute lifetime."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from armlab.entrypoints.api.app import create_app
from armlab.entrypoints.api.ui import session as session_module
from armlab.entrypoints.api.ui.session import SESSION_COOKIE
from armlab.settings import Settings
from tests.unit.entrypoints.api.test_experiments_api import make_spec

UI_SECRET = "a-fixed-ui-secret"


def settings(sqlite_url: str, tokens: str, **extra: Any) -> Settings:
    return Settings(database_url=sqlite_url, auth_tokens=tokens, transport="memory",
                    ui_secret=UI_SECRET, **extra)


def csrf_of(text: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', text)
    assert m, "no csrf field"
    return m.group(1)


def sign_in(client: TestClient, token: str) -> tuple[str, str]:
    """Sign in; returns (the session cookie's value, the session's CSRF token)."""
    page = client.get("/ui/login")
    r = client.post("/ui/login", data={"token": token, "csrf": csrf_of(page.text)},
                    follow_redirects=False)
    assert r.status_code == 303, r.text
    return client.cookies[SESSION_COOKIE], csrf_of(client.get("/ui/experiments").text)


def with_cookie(app: Any, cookie: str) -> TestClient:
    client = TestClient(app)
    client.cookies.set(SESSION_COOKIE, cookie, domain="testserver.local", path="/ui")
    return client


def running_experiment(client: TestClient, token: str) -> None:
    bearer = {"Authorization": f"Bearer {token}"}
    assert client.post("/v1/experiments", json=make_spec(), headers=bearer).status_code == 201
    assert client.post("/v1/experiments/home-recs/start", json={},
                       headers=bearer).status_code == 200


def status_of(client: TestClient, token: str) -> str:
    r = client.get("/v1/experiments/home-recs", headers={"Authorization": f"Bearer {token}"})
    return str(r.json()["status"])


def test_a_rotated_secret_ends_its_sessions_across_a_restart(sqlite_url: str) -> None:
    """The operator rotates ops's secret (same name, same role) and restarts: the old secret
    is refused by the API and the form, and so is every cookie it signed in."""
    old = create_app(settings(sqlite_url, "ops:admin:old-secret"))
    with TestClient(old) as client:
        running_experiment(client, "old-secret")
        cookie, csrf = sign_in(client, "old-secret")

    restarted_same = create_app(settings(sqlite_url, "ops:admin:old-secret"))
    with with_cookie(restarted_same, cookie) as client:  # nothing rotated: the session lives
        assert client.get("/ui/experiments", follow_redirects=False).status_code == 200

    rotated = create_app(settings(sqlite_url, "ops:admin:new-secret"))
    with with_cookie(rotated, cookie) as client:
        assert client.get("/v1/experiments",
                          headers={"Authorization": "Bearer old-secret"}).status_code == 401
        r = client.get("/ui/experiments", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")
        r = client.post("/ui/experiments/home-recs/stop",
                        data={"csrf": csrf, "reason": "with a dead credential"},
                        follow_redirects=False)
        assert r.status_code == 403
        assert status_of(client, "new-secret") == "running"
        new_cookie, _ = sign_in(client, "new-secret")  # the new secret signs in
        assert new_cookie != cookie

    removed = create_app(settings(sqlite_url, "other:admin:other-secret"))
    with with_cookie(removed, cookie) as client:
        assert client.get("/ui/experiments", follow_redirects=False).status_code == 303


def test_a_cookie_copied_before_sign_out_is_dead_after_it(sqlite_url: str) -> None:
    app = create_app(settings(sqlite_url, "ops:admin:admin-secret"))
    with TestClient(app) as client:
        running_experiment(client, "admin-secret")
        cookie, csrf = sign_in(client, "admin-secret")
        with with_cookie(app, cookie) as thief:  # the copy works while the session lives
            assert thief.get("/ui/experiments", follow_redirects=False).status_code == 200
        r = client.post("/ui/logout", data={"csrf": csrf}, follow_redirects=False)
        assert r.status_code == 303
        with with_cookie(app, cookie) as thief:
            r = thief.get("/ui/experiments", follow_redirects=False)
            assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")
            r = thief.post("/ui/experiments/home-recs/stop",
                           data={"csrf": csrf, "reason": "after sign-out"},
                           follow_redirects=False)
            assert r.status_code == 403
        assert status_of(client, "admin-secret") == "running"
        again, _ = sign_in(client, "admin-secret")  # signing in again gives a new session
        assert again != cookie
        assert client.get("/ui/experiments", follow_redirects=False).status_code == 200


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    import time

    fake = Clock(time.time())
    monkeypatch.setattr(session_module, "_now", fake, raising=False)
    yield fake


def test_an_active_session_still_ends_at_its_absolute_lifetime(sqlite_url: str,
                                                               clock: Clock) -> None:
    """Idle timeout 10 min, absolute lifetime 30 min: a request every ~8 min keeps the
    session (each renews the idle clock) until 30 min after sign-in, then it ends."""
    app = create_app(settings(sqlite_url, "ops:admin:admin-secret",
                              ui_session_ttl_s=600, ui_session_max_s=1800))
    with TestClient(app) as client:
        sign_in(client, "admin-secret")
        start = clock.now
        for minutes in (8, 16, 24, 29):
            clock.now = start + minutes * 60
            r = client.get("/ui/experiments", follow_redirects=False)
            assert r.status_code == 200, f"ended after {minutes} min of activity"
        clock.now = start + 30 * 60 + 5
        r = client.get("/ui/experiments", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")


def test_an_idle_session_ends_after_the_idle_timeout(sqlite_url: str, clock: Clock) -> None:
    app = create_app(settings(sqlite_url, "ops:admin:admin-secret",
                              ui_session_ttl_s=600, ui_session_max_s=1800))
    with TestClient(app) as client:
        sign_in(client, "admin-secret")
        clock.now += 590
        assert client.get("/ui/experiments", follow_redirects=False).status_code == 200
        clock.now += 601  # no request for longer than the idle timeout
        assert client.get("/ui/experiments", follow_redirects=False).status_code == 303


def test_the_cookie_holds_no_secret_and_renewal_keeps_the_session(sqlite_url: str,
                                                                  clock: Clock) -> None:
    """The cookie carries a keyed fingerprint, never the secret; a renewal re-signs the same
    session (same CSRF token) with a fresh idle clock."""
    app = create_app(settings(sqlite_url, "ops:admin:admin-secret"))
    with TestClient(app) as client:
        cookie, csrf = sign_in(client, "admin-secret")
        assert "admin-secret" not in cookie
        clock.now += 120
        r = client.get("/ui/experiments")
        assert SESSION_COOKIE in r.headers.get("set-cookie", "")
        assert client.cookies[SESSION_COOKIE] != cookie
        assert csrf_of(r.text) == csrf
