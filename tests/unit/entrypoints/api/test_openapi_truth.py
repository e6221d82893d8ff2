"""The OpenAPI document tells the truth (issue 22): every operation documents its error
statuses with the error body's schema, booleans are booleans, and a method a path does not
have answers 405 with ``Allow``. (The schemathesis suite, tests/integration/entrypoints/
test_api_fuzz.py, checks every response against the document.)"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from armlab.entrypoints.api.app import create_app
from armlab.settings import Settings
from tests.unit.entrypoints.api.test_experiments_api import ADMIN, TOKENS, make_spec

PROBLEM = "#/components/schemas/Problem"


@pytest.fixture()
def client(sqlite_url: str) -> Iterator[TestClient]:
    app = create_app(Settings(database_url=sqlite_url, auth_tokens=TOKENS, transport="memory"))
    with TestClient(app) as c:
        yield c


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            yield f"{method.upper()} {path}", op


def test_every_operation_documents_its_errors_with_the_error_body(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in doc["components"]["schemas"]  # not what a 422 sends
    problem = doc["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "detail"}
    seen = 0
    for label, op in _operations(doc):
        errors = {int(s): r for s, r in op["responses"].items() if int(s) >= 400}
        assert {413, 500} <= set(errors), label  # any request: a body too large, a bug
        for status, response in errors.items():
            content = response.get("content", {})
            assert list(content) == ["application/json"], (label, status)
            assert content["application/json"]["schema"] == {"$ref": PROBLEM}, (label, status)
            if status in (429, 503):
                assert "Retry-After" in response.get("headers", {}), (label, status)
        if label not in ("GET /healthz", "GET /readyz"):
            assert {401, 403, 422, 429, 503} <= set(errors), label
            seen += 1
        if "{key}" in label and label != "GET /v1/experiments/{key}/report":
            assert 404 in errors, label
    assert seen >= 10


def test_error_bodies_match_the_documented_schema(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()["components"]["schemas"]["Problem"]
    allowed = set(schema["properties"])
    bodies = [
        client.get("/v1/experiments").json(),  # 401
        client.get("/v1/experiments/nope", headers=ADMIN).json(),  # 404
        client.post("/v1/experiments", json={"key": "x"}, headers=ADMIN).json(),  # 422
    ]
    for body in bodies:
        assert set(body) <= allowed and {"type", "title", "detail"} <= set(body), body


@pytest.mark.parametrize(("path", "allowed"), [
    ("/v1/experiments", {"GET", "POST"}),
    ("/v1/experiments/home-recs", {"GET"}),
    ("/v1/experiments/home-recs/stop", {"POST"}),
    ("/healthz", {"GET"}),
])
def test_a_method_the_path_lacks_answers_405_with_allow(client: TestClient, path: str,
                                                        allowed: set[str]) -> None:
    for method in ("TRACE", "DELETE", "PATCH", "PUT", "OPTIONS", "HEAD", "GET", "POST"):
        if method in allowed:
            continue
        r = client.request(method, path, headers=ADMIN)
        assert r.status_code == 405, (method, path)
        assert {m.strip() for m in r.headers["allow"].split(",")} == allowed, (method, path)
        if method != "HEAD":
            assert r.json()["type"] == "HTTPError"


@pytest.mark.parametrize("value", [0, 1, "true", "false", "yes"])
def test_booleans_are_booleans(client: TestClient, value: Any) -> None:
    """Where the API is strict, 0 is not false: a bool field takes true or false only."""
    spec = make_spec(sequential={"alpha": 0.05, "auto_stop": value})
    r = client.post("/v1/experiments", json=spec, headers=ADMIN)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "sequential.auto_stop"
    spec = make_spec()
    spec["arms"][1]["control"] = value
    r = client.post("/v1/experiments", json=spec, headers=ADMIN)
    assert r.status_code == 422, value
    assert client.post("/v1/experiments", json=make_spec(), headers=ADMIN).status_code == 201
    client.post("/v1/experiments/home-recs/start", json={}, headers=ADMIN)
    r = client.post("/v1/experiments/home-recs/ship",
                    json={"arm": "minilm", "reason": "r", "force": value}, headers=ADMIN)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "force"
    ok = make_spec(key="strict-ok", sequential={"alpha": 0.05, "auto_stop": True})
    assert client.post("/v1/experiments", json=ok, headers=ADMIN).status_code == 201
