"""The assign fast path answers valid cached requests itself and defers everything else."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from armlab.entrypoints.api.app import create_app
from armlab.entrypoints.api.routes_assign import AssignFastPath
from armlab.settings import Settings
from armlab.tools.bench.assign import _prepare

TOKEN = "prod-secret"
READER = "read-secret"


@pytest.fixture()
def client_and_key(tmp_path) -> Iterator[tuple[TestClient, str]]:
    url = f"sqlite:///{tmp_path / 'fast.db'}"
    key = _prepare(url, "request")
    settings = Settings(
        database_url=url,
        transport="memory",
        auth_tokens=f"app:producer:{TOKEN},dash:reader:{READER}",
    )
    with TestClient(create_app(settings)) as client:
        yield client, key


def _auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _asgi(fast: AssignFastPath, app, path: str, body: bytes, token: str = TOKEN):
    """Call the middleware over ASGI; return (status, body) it sent."""
    import asyncio

    scope = {
        "type": "http", "method": "POST", "path": path, "app": app,
        "headers": [(b"authorization", f"Bearer {token}".encode())],
    }
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(msg):
        sent.append(msg)

    asyncio.run(fast(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_valid_request_is_answered_by_the_fast_path(client_and_key) -> None:
    client, key = client_and_key
    path = f"/v1/experiments/{key}/assign"
    assert client.post(path, json={"unit_id": "u0"}, headers=_auth()).status_code == 200  # cached
    deferred: list[bytes] = []

    async def downstream(scope, receive, send):  # stands in for the FastAPI route
        deferred.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 599, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    fast = AssignFastPath(downstream)
    status, payload = _asgi(fast, client.app, path, b'{"unit_id": "u1"}')
    assert status == 200 and deferred == []
    import orjson

    body = orjson.loads(payload)
    assert body["arm"] in {"control", "a", "b"}
    assert body["propensity"] == pytest.approx({"control": 0.2, "a": 0.5, "b": 0.3}[body["arm"]])
    assert body["experiment_key"] == key and len(body["impression_id"]) >= 16
    # a request it must not answer goes downstream with its body replayed intact
    assert _asgi(fast, client.app, path, b'{"unit_id": ""}')[0] == 599
    assert _asgi(fast, client.app, path, b'{"unit_id": "x"}', token=READER)[0] == 599
    assert deferred == [b'{"unit_id": ""}', b'{"unit_id": "x"}']


def test_answer_is_none_for_everything_but_the_happy_path(client_and_key) -> None:
    client, key = client_and_key
    client.post(f"/v1/experiments/{key}/assign", json={"unit_id": "warm"}, headers=_auth())
    fast = AssignFastPath(app=None)
    scope = {"app": client.app, "headers": [(b"authorization", f"Bearer {TOKEN}".encode())]}
    path = f"/v1/experiments/{key}/assign"
    assert fast._answer(scope, path, b'{"unit_id": "x"}') is not None
    assert fast._answer(scope, path, b'{"unit_id": ""}') is None
    assert fast._answer(scope, path, b'{"unit_id": 5}') is None
    assert fast._answer(scope, path, b'{"unit_id": "x", "extra": 1}') is None
    assert fast._answer(scope, path, b"not json") is None
    assert fast._answer(scope, "/v1/experiments/nope/assign", b'{"unit_id": "x"}') is None
    bad = {"app": client.app, "headers": [(b"authorization", f"Bearer {READER}".encode())]}
    assert fast._answer(bad, path, b'{"unit_id": "x"}') is None


@pytest.mark.parametrize(
    ("body", "headers", "status", "needle"),
    [
        ({"context": {}}, _auth(), 422, "unit_id"),
        ({"unit_id": ""}, _auth(), 422, "unit_id"),
        ({"unit_id": "x", "context": 3}, _auth(), 422, "context"),
        ({"unit_id": "x"}, {}, 401, "Authorization"),
        ({"unit_id": "x"}, _auth("wrong"), 401, "invalid token"),
        ({"unit_id": "x"}, _auth(READER), 403, "producer"),
    ],
)
def test_deferred_requests_get_the_routes_errors(client_and_key, body, headers, status, needle):
    client, key = client_and_key
    r = client.post(f"/v1/experiments/{key}/assign", json=body, headers=headers)
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]


def test_unknown_experiment_is_404_through_the_route(client_and_key) -> None:
    client, _ = client_and_key
    r = client.post("/v1/experiments/missing/assign", json={"unit_id": "x"}, headers=_auth())
    assert r.status_code == 404
    assert r.json()["type"] == "ExperimentNotFound"


def test_fast_path_can_be_switched_off(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'off.db'}"
    key = _prepare(url, "request")
    settings = Settings(database_url=url, transport="memory", assign_fast_path=False,
                        auth_tokens=f"app:producer:{TOKEN}")
    with TestClient(create_app(settings)) as client:
        path = f"/v1/experiments/{key}/assign"
        assert client.post(path, json={"unit_id": "u0"}, headers=_auth()).status_code == 200
        scope = {"app": client.app, "headers": [(b"authorization", f"Bearer {TOKEN}".encode())]}
        assert AssignFastPath(app=None)._answer(scope, path, b'{"unit_id": "x"}') is None
