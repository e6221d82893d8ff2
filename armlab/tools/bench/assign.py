"""``armlab bench assign``: the assign endpoint under load, from a separate process, on loopback.

1. A database (``ARMLAB_DATABASE_URL`` if it is PostgreSQL, else a temporary SQLite file) is
   migrated and gets a running experiment with an allocation snapshot.
2. The API runs in its own process (uvicorn, uvloop + httptools, one worker, auth on).
3. A load process (:mod:`armlab.tools.loadgen`) drives ``POST /v1/experiments/{key}/assign``
   with ``concurrency`` keep-alive HTTP/1.1 connections (a minimal asyncio client),
   bounded by a request count and a time limit, and reports throughput and latency percentiles.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from armlab.adapters.db import migrate
from armlab.adapters.db.models import AllocationSnapshot
from armlab.adapters.db.uow import UnitOfWork
from armlab.bootstrap import bootstrap
from armlab.core.specs import ExperimentSpec
from armlab.errors import ConfigurationError
from armlab.services import registry
from armlab.settings import Settings

KEY = "bench-assign"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prepare(url: str, unit: str) -> str:
    migrate.upgrade(url)
    svc = bootstrap(Settings(database_url=url))
    try:
        key = f"{KEY}-{unit}-{secrets.token_hex(3)}"
        spec = ExperimentSpec.model_validate(
            {
                "key": key,
                "unit": unit,
                "arms": [
                    {"key": "control", "control": True, "variant": {"kind": "popularity"}},
                    {"key": "a", "variant": {"kind": "popularity"}},
                    {"key": "b", "variant": {"kind": "popularity"}},
                ],
            }
        )
        with UnitOfWork(svc.session_factory) as uow:
            exp = registry.create_experiment(uow, spec=spec, actor="bench")
            registry.start_experiment(uow, key=key, actor="bench")
            uow.flush()
            uow.session.add(
                AllocationSnapshot(
                    experiment_id=exp.id,
                    policy_name="thompson",
                    policy_version="1",
                    weights={"control": 0.2, "a": 0.5, "b": 0.3},
                    stats={},
                )
            )
            uow.commit()
    finally:
        svc.close()
    return key


@contextmanager
def api_server(url: str, key: str, token: str, fast_path: bool = True,
               env: dict[str, str] | None = None) -> Iterator[str]:
    """The API in its own process (uvicorn, one worker, auth on) on a free loopback port,
    ready (``key`` cached); yields its base URL and stops it afterwards."""
    port = _free_port()
    server_env = {
        **os.environ,
        "ARMLAB_DATABASE_URL": url,
        "ARMLAB_AUTH_TOKENS": f"bench:producer:{token}",
        "ARMLAB_AUTH_DISABLED": "false",
        "ARMLAB_LOG_LEVEL": "WARNING",
        "ARMLAB_TRANSPORT": "memory",  # /v1/events is not under test
        "ARMLAB_ASSIGN_FAST_PATH": "true" if fast_path else "false",
        **(env or {}),
    }
    server = subprocess.Popen(
        [
            sys.executable, "-m", "uvicorn", "armlab.entrypoints.api.app:create_app", "--factory",
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
            "--no-access-log", "--loop", "uvloop", "--http", "httptools",
        ],
        env=server_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(base, key, token, server)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()


def run_load(base: str, key: str, token: str, requests: int, concurrency: int,
             max_seconds: float, unit: str, contexts: str | None = None) -> dict[str, Any]:
    """Drive the assign endpoint from a load process (:mod:`armlab.tools.loadgen`);
    ``contexts``: a JSON file of request contexts to send (cycled)."""
    load = subprocess.run(
        [
            sys.executable, "-m", "armlab.tools.loadgen", base, key, token,
            str(requests), str(concurrency), str(max_seconds), unit,
            *([contexts] if contexts else []),
        ],
        capture_output=True,
        text=True,
        timeout=max_seconds + 120,
        check=False,
    )
    if load.returncode != 0:
        raise ConfigurationError(f"load process failed: {load.stderr.strip()[-500:]}")
    return dict(json.loads(load.stdout.strip().splitlines()[-1]))


def _run_server_and_load(
    url: str, key: str, token: str, fast_path: bool, requests: int, concurrency: int,
    max_seconds: float, unit: str,
) -> dict[str, Any]:
    """Start the API in its own process, drive it from a load process, return the figures."""
    with api_server(url, key, token, fast_path) as base:
        return run_load(base, key, token, requests, concurrency, max_seconds, unit)


def run_assign_bench(
    *,
    requests: int = 20_000,
    concurrency: int = 8,
    max_seconds: float = 30.0,
    unit: str = "request",
) -> dict[str, Any]:
    if unit not in ("request", "user"):
        raise ConfigurationError(f"--unit must be request or user, got {unit!r}")
    env_url = os.environ.get("ARMLAB_DATABASE_URL", "")
    tmp = Path(tempfile.mkdtemp(prefix="armlab-bench-assign-"))
    url = env_url if env_url.startswith("postgresql") else f"sqlite:///{tmp / 'bench.db'}"
    key = _prepare(url, unit)
    token = secrets.token_hex(16)
    fast = _run_server_and_load(url, key, token, True, requests, concurrency, max_seconds, unit)
    route = _run_server_and_load(url, key, token, False, requests, concurrency, max_seconds, unit)
    result = dict(fast)
    result["baseline_route_only"] = route
    result["ratio_requests_per_s"] = (
        round(fast["requests_per_s"] / route["requests_per_s"], 2)
        if fast.get("requests_per_s") and route.get("requests_per_s")
        else None
    )
    result.update(
        {
            "benchmark": "assign",
            "database": "postgresql" if url.startswith("postgresql") else "sqlite",
            "server": "uvicorn 1 worker (uvloop, httptools), auth on, separate process; "
            "figure = with the ASGI fast path, baseline_route_only = the plain FastAPI route "
            "(ARMLAB_ASSIGN_FAST_PATH=false), same run",
            "client": f"minimal HTTP/1.1 keep-alive client (asyncio streams), {concurrency} "
            "connections, separate process",
            "machine": "shared 2-core CI VM, no GPU (client and server share the cores)",
            "targets": {"requests_per_s": ">= 2000", "p99_ms": "<= 10"},
            "unit": unit,
        }
    )
    return result


def _wait_ready(base: str, key: str, token: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            err = server.stderr.read().decode()[-800:] if server.stderr else ""
            raise ConfigurationError(f"API process exited early: {err}")
        try:
            r = httpx.post(
                f"{base}/v1/experiments/{key}/assign",
                json={"unit_id": "warm"},
                headers={"Authorization": f"Bearer {token}"},
                timeout=2,
            )
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise ConfigurationError("API did not become ready within 60 s")
