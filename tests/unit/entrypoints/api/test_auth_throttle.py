"""Guessing is not free (issue 22): failed authentication is throttled per client address (the
API's bearer tokens) and per address and name typed (the sign-in form), with exponential
back-off capped at a minute, 429 + Retry-After, a success resetting the name's count, and the
valid-token path (the /assign fast path included) never taking the throttle's lock."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from armlab.entrypoints.api.app import create_app
from armlab.entrypoints.api.throttle import Throttle
from armlab.settings import Settings
from armlab.tools.bench.assign import _prepare

TOKENS = "ops:admin:admin-secret,app:producer:producer-secret"
ATTACKER = ("203.0.113.7", 40000)
OTHER = ("203.0.113.8", 40000)
LEGIT = ("198.51.100.1", 40000)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def setup(tmp_path: Any) -> Iterator[tuple[Any, str, Clock]]:
    url = f"sqlite:///{tmp_path / 'throttle.db'}"
    key = _prepare(url, "request")  # a running experiment with a snapshot
    app = create_app(Settings(database_url=url, transport="memory", auth_tokens=TOKENS,
                              ui_secret="s"))
    clock = Clock()
    auth = app.state.authenticator
    auth.throttle = Throttle(free=auth.throttle.free, max_s=auth.throttle.max_s, clock=clock)
    with TestClient(app, client=LEGIT):  # runs the lifespan
        yield app, key, clock


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_wrong_bearer_tokens_back_off_per_address(setup: tuple[Any, str, Clock]) -> None:
    app, key, clock = setup
    attacker = TestClient(app, client=ATTACKER)
    legit = TestClient(app, client=LEGIT)
    assign = f"/v1/experiments/{key}/assign"
    for i in range(5):  # the free failures: plain 401s
        r = attacker.get("/v1/experiments", headers=bearer(f"guess-{i}"))
        assert r.status_code == 401, i
    assert attacker.get("/v1/experiments", headers=bearer("guess-5")).status_code == 401
    r = attacker.get("/v1/experiments", headers=bearer("guess-6"))  # blocked for 1 s now
    assert r.status_code == 429
    assert r.headers["retry-after"] == "1"
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["type"] == "TooManyRequests" and "retry in 1 s" in r.json()["detail"]
    # while blocked, even the right token from that address is refused without being checked
    assert attacker.get("/v1/experiments", headers=bearer("admin-secret")).status_code == 429
    r = attacker.post(assign, json={"unit_id": "u"}, headers=bearer("producer-secret"))
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    r = attacker.post(assign, json={"unit_id": "u"}, headers=bearer("wrong"))
    assert r.status_code == 429  # answered by the fast path: the same problem as the route's
    assert r.json() == attacker.get("/v1/experiments", headers=bearer("y")).json()
    # another address is not affected
    assert legit.get("/v1/experiments", headers=bearer("admin-secret")).status_code == 200
    assert legit.post(assign, json={"unit_id": "u"},
                      headers=bearer("producer-secret")).status_code == 200
    # the back-off doubles with each further failure (1, 2, 4, ... s) and stops at 60 s
    waits = []
    for _ in range(10):
        clock.now += 61
        assert attacker.get("/v1/experiments", headers=bearer("again")).status_code == 401
        waits.append(int(attacker.get("/v1/experiments",
                                      headers=bearer("x")).headers["retry-after"]))
    assert waits == [2, 4, 8, 16, 32, 60, 60, 60, 60, 60]
    clock.now += 61  # the block is over: the right token works again from there
    assert attacker.get("/v1/experiments", headers=bearer("admin-secret")).status_code == 200


def test_the_sign_in_form_backs_off_per_address_and_per_name(
        setup: tuple[Any, str, Clock]) -> None:
    app, _, clock = setup

    def try_sign_in(client_addr: tuple[str, int], token: str, name: str = "") -> Any:
        client = TestClient(app, client=client_addr)
        page = client.get("/ui/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        return client.post("/ui/login", data={"token": token, "name": name, "csrf": csrf},
                           follow_redirects=False)

    # per address
    for i in range(6):
        assert try_sign_in(ATTACKER, f"guess-{i}").status_code == 401
    r = try_sign_in(ATTACKER, "admin-secret")  # the right token, but the address is blocked
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert "Too many failed sign-ins" in r.text and "text/html" in r.headers["content-type"]
    assert "armlab_session" not in r.headers.get("set-cookie", "")
    assert try_sign_in(LEGIT, "admin-secret").status_code == 303

    # per name: guesses for "ops" spread over many addresses still block the name ...
    for i in range(6):
        r = try_sign_in((f"192.0.2.{i}", 1), f"guess-{i}", name="ops")
        assert r.status_code == 401
    r = try_sign_in(OTHER, "admin-secret", name="ops")
    assert r.status_code == 429 and "Retry-After" in r.headers
    # ... but not for long: at most the cap, and a success resets the name's count
    clock.now += 61
    assert try_sign_in(OTHER, "admin-secret", name="ops").status_code == 303
    for i in range(5):  # the full free allowance again
        assert try_sign_in((f"192.0.2.{50 + i}", 1), f"g-{i}", name="ops").status_code == 401
    assert try_sign_in(OTHER, "admin-secret", name="ops").status_code == 303
    # a valid token under another name counts as a failure for the name typed
    assert try_sign_in(LEGIT, "producer-secret", name="ops").status_code == 401


def test_a_valid_token_never_takes_the_throttles_lock(setup: tuple[Any, str, Clock]) -> None:
    """With an attack on record (another address blocked), valid tokens from other addresses
    (the /assign fast path, the route, a reader route) and a valid sign-in never enter the
    throttle's lock."""
    app, key, _ = setup
    attacker = TestClient(app, client=ATTACKER)
    for i in range(8):
        attacker.get("/v1/experiments", headers=bearer(f"guess-{i}"))
    throttle = app.state.authenticator.throttle
    assert len(throttle) == 1

    class NoLock:
        def __enter__(self) -> None:
            raise AssertionError("the throttle's lock was taken on a valid request")

        def __exit__(self, *exc: object) -> None:
            return None

    throttle._lock = NoLock()
    legit = TestClient(app, client=LEGIT)
    assign = f"/v1/experiments/{key}/assign"
    for i in range(20):
        r = legit.post(assign, json={"unit_id": f"u{i}"}, headers=bearer("producer-secret"))
        assert r.status_code == 200
    assert legit.get("/v1/experiments", headers=bearer("admin-secret")).status_code == 200
    page = legit.get("/ui/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    assert legit.post("/ui/login", data={"token": "admin-secret", "csrf": csrf},
                      follow_redirects=False).status_code == 303


def test_the_throttle_forgets_and_stays_bounded() -> None:
    clock = Clock()
    throttle = Throttle(free=2, max_s=60, forget_s=600, max_keys=100, clock=clock)
    assert throttle.retry_after(["addr:a"]) == 0
    for _ in range(3):
        throttle.failed(["addr:a", "name:x"])
    assert throttle.retry_after(["addr:a"]) == 1 and throttle.retry_after(["name:x"]) == 1
    assert throttle.retry_after(["addr:b"]) == 0
    throttle.succeeded("name:x")
    assert throttle.retry_after(["name:x"]) == 0 and throttle.retry_after(["addr:a"]) == 1
    clock.now += 601  # forgotten: the next failure starts a fresh count, and prunes the table
    throttle.failed(["addr:c"])
    assert len(throttle) == 1
    throttle.failed(["addr:a"])
    assert throttle.retry_after(["addr:a"]) == 0
    for i in range(150):
        throttle.failed([f"addr:{i}"])
    assert len(throttle) <= 100
    off = Throttle(free=0, clock=clock)
    for _ in range(50):
        off.failed(["addr:a"])
    assert off.retry_after(["addr:a"]) == 0
