"""The API through PostgreSQL outages, on a real server: stopped (refused connections) and hung
(every server process stopped with SIGSTOP). Routes that need the database answer 503 with
Retry-After, never 500; /readyz answers within its timeout and names no host or port; /healthz
stays up; /assign keeps serving experiments it has cached."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from armlab.adapters.db.engine import CONNECT_TIMEOUT_S
from armlab.adapters.db.uow import UnitOfWork
from armlab.bootstrap import bootstrap
from armlab.core.specs import ExperimentSpec
from armlab.entrypoints.api.app import create_app
from armlab.entrypoints.api.routes_health import READY_TIMEOUT_S
from armlab.services import registry
from armlab.settings import Settings
from tests.builders import experiment_spec

H = {"Authorization": "Bearer p-secret"}
ADMIN = {"Authorization": "Bearer a-secret"}


def _spec(key: str) -> ExperimentSpec:
    return experiment_spec(key, treatments=("b",))


@pytest.fixture()
def client(pg_url: str) -> Iterator[tuple[TestClient, Any]]:
    settings = Settings(database_url=pg_url, transport="memory", snapshot_refresh_s=0.2,
                        auth_tokens=SecretStr("app:producer:p-secret,ad:admin:a-secret"))
    services = bootstrap(settings)
    for key in ("cached",):
        with UnitOfWork(services.session_factory) as uow:
            registry.create_experiment(uow, spec=_spec(key), actor="t")
            registry.start_experiment(uow, key=key, actor="t")
            uow.commit()
    with TestClient(create_app(settings, services)) as c:
        assert c.post("/v1/experiments/cached/assign", json={"unit_id": "u0"},
                      headers=H).status_code == 200
        yield c, services
    services.close()


def _family(pid: int) -> list[int]:
    """The postmaster and its children (the test's own server processes)."""
    pids = [pid]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            pids.append(int(stat.parent.name))
    return pids


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:  # a backend that ended meanwhile
            pass


def _outage_answers(c: TestClient, port: int) -> None:
    for method, url, kw in (
        ("get", "/v1/experiments", {"headers": ADMIN}),
        ("get", "/v1/experiments/cached", {"headers": ADMIN}),
        ("get", "/v1/experiments/cached/results", {"headers": ADMIN}),
        ("post", "/v1/experiments/not-cached/assign", {"headers": H, "json": {"unit_id": "u"}}),
        ("post", "/v1/experiments", {"headers": ADMIN, "json": _spec("new").model_dump()}),
    ):
        r = getattr(c, method)(url, **kw)
        assert r.status_code == 503, (url, r.status_code, r.text)
        assert r.headers["Retry-After"].isdigit(), url
        assert str(port) not in r.text and "127.0.0.1" not in r.text, r.text
    t0 = time.monotonic()
    r = c.get("/readyz")
    assert r.status_code == 503 and time.monotonic() - t0 < READY_TIMEOUT_S + 2.0
    assert r.headers["Retry-After"]
    assert str(port) not in r.text and "127.0.0.1" not in r.text and "armlab@" not in r.text
    assert c.get("/healthz").status_code == 200
    # cached experiments are still served from memory
    r = c.post("/v1/experiments/cached/assign", json={"unit_id": "u1"}, headers=H)
    assert r.status_code == 200, r.text


def test_postgres_stopped_gives_503_with_retry_after(
    client: tuple[TestClient, Any], pg_server: Any
) -> None:
    c, services = client
    pg_server.stop("immediate")
    try:
        services.engine.dispose()
        _outage_answers(c, pg_server.port)
    finally:
        pg_server.start()
    deadline = time.monotonic() + 30
    while c.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "not ready again after the restart"
        time.sleep(0.2)
    assert c.get("/v1/experiments", headers=ADMIN).status_code == 200


def test_postgres_hung_readyz_answers_within_its_timeout(
    client: tuple[TestClient, Any], pg_server: Any
) -> None:
    c, services = client
    services.engine.dispose()  # new connections: the stopped postmaster never answers them
    family = _family(pg_server.pid)
    _signal(family, signal.SIGSTOP)
    try:
        for _ in range(3):  # repeated probes neither hang nor pile up threads
            t0 = time.monotonic()
            r = c.get("/readyz")
            assert r.status_code == 503 and time.monotonic() - t0 < READY_TIMEOUT_S + 1.0
            assert "the database" in r.json()["detail"]  # timed out, or its connect timed out
            assert str(pg_server.port) not in r.text
        assert c.get("/healthz").status_code == 200
        r = c.post("/v1/experiments/cached/assign", json={"unit_id": "u2"}, headers=H)
        assert r.status_code == 200
    finally:
        _signal(family, signal.SIGCONT)
    deadline = time.monotonic() + 30
    while c.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "not ready again after SIGCONT"
        time.sleep(0.2)


def test_postgres_hung_with_pooled_connections_gives_503_within_seconds(
    pg_url: str, pg_server: Any
) -> None:
    """A hung server with connections already pooled: without the call watchdog the pool's
    pre-ping (and any query) blocks in recv for good; with it every database route answers
    503 within the call timeout plus one connect timeout."""
    timeout_s = 2.0
    settings = Settings(database_url=pg_url, transport="memory", snapshot_refresh_s=0.2,
                        auth_tokens=SecretStr("app:producer:p-secret,ad:admin:a-secret"))
    services = bootstrap(settings, db_call_timeout_s=timeout_s)
    with UnitOfWork(services.session_factory) as uow:
        registry.create_experiment(uow, spec=_spec("cached"), actor="t")
        registry.start_experiment(uow, key="cached", actor="t")
        uow.commit()
    try:
        with TestClient(create_app(settings, services)) as c:
            assert c.post("/v1/experiments/cached/assign", json={"unit_id": "u0"},
                          headers=H).status_code == 200
            for _ in range(3):  # pooled, checked-in connections
                assert c.get("/v1/experiments", headers=ADMIN).status_code == 200
            family = _family(pg_server.pid)
            _signal(family, signal.SIGSTOP)
            try:
                for method, url, kw in (
                    ("get", "/v1/experiments", {"headers": ADMIN}),
                    ("get", "/v1/experiments/cached/results", {"headers": ADMIN}),
                    ("post", "/v1/experiments/not-cached/assign",
                     {"headers": H, "json": {"unit_id": "u"}}),
                ):
                    t0 = time.monotonic()
                    r = getattr(c, method)(url, **kw)
                    took = time.monotonic() - t0
                    assert r.status_code == 503, (url, r.status_code, r.text)
                    assert r.headers["Retry-After"].isdigit()
                    assert took < timeout_s + CONNECT_TIMEOUT_S + 3.0, (url, took)
                assert c.get("/healthz").status_code == 200
                r = c.post("/v1/experiments/cached/assign", json={"unit_id": "u1"}, headers=H)
                assert r.status_code == 200
            finally:
                _signal(family, signal.SIGCONT)
            deadline = time.monotonic() + 30
            while c.get("/v1/experiments", headers=ADMIN).status_code != 200:
                assert time.monotonic() < deadline, "not serving again after SIGCONT"
                time.sleep(0.2)
    finally:
        services.close()
