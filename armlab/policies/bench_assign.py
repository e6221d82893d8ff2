"""``armlab bench assign``: the assign endpoint under load, from a separate process, on loopback.

1. A database (``ARMLAB_DATABASE_URL`` if it is PostgreSQL, else a temporary SQLite file) is
   migrated and gets a running experiment with an allocation snapshot.
2. The API runs in its own process (uvicorn, uvloop + httptools, one worker, auth on).
3. A load process (this module's ``__main__``) drives ``POST /v1/experiments/{key}/assign``
   with ``concurrency`` keep-alive HTTP/1.1 connections (a minimal asyncio client),
   bounded by a request count and a time limit, and reports throughput and latency percentiles.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

KEY = "bench-assign"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prepare(url: str, unit: str) -> None:
    from armlab.platform import migrate, service
    from armlab.platform.bootstrap import bootstrap
    from armlab.platform.models import AllocationSnapshot
    from armlab.platform.schemas import ExperimentSpec
    from armlab.platform.uow import UnitOfWork
    from armlab.settings import Settings

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
            exp = service.create_experiment(uow, spec=spec, actor="bench")
            service.start_experiment(uow, key=key, actor="bench")
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
    return key  # type: ignore[return-value]


def _run_server_and_load(
    url: str, key: str, token: str, fast_path: bool, requests: int, concurrency: int,
    max_seconds: float, unit: str,
) -> dict[str, Any]:
    """Start the API in its own process, drive it from a load process, return the figures."""
    from armlab.errors import ConfigurationError

    port = _free_port()
    env = {
        **os.environ,
        "ARMLAB_DATABASE_URL": url,
        "ARMLAB_AUTH_TOKENS": f"bench:producer:{token}",
        "ARMLAB_AUTH_DISABLED": "false",
        "ARMLAB_LOG_LEVEL": "WARNING",
        "ARMLAB_TRANSPORT": "memory",  # /v1/events is not under test
        "ARMLAB_ASSIGN_FAST_PATH": "true" if fast_path else "false",
    }
    server = subprocess.Popen(
        [
            sys.executable, "-m", "uvicorn", "armlab.platform.api.app:create_app", "--factory",
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
            "--no-access-log", "--loop", "uvloop", "--http", "httptools",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(base, key, token, server)
        load = subprocess.run(
            [
                sys.executable, "-m", "armlab.policies.bench_assign", base, key, token,
                str(requests), str(concurrency), str(max_seconds), unit,
            ],
            capture_output=True,
            text=True,
            timeout=max_seconds + 120,
            check=False,
        )
        if load.returncode != 0:
            raise ConfigurationError(f"load process failed: {load.stderr.strip()[-500:]}")
        return json.loads(load.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()


def run_assign_bench(
    *,
    requests: int = 20_000,
    concurrency: int = 8,
    max_seconds: float = 30.0,
    unit: str = "request",
) -> dict[str, Any]:
    from armlab.errors import ConfigurationError

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
    import httpx

    from armlab.errors import ConfigurationError

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


async def _load(
    base: str, key: str, token: str, total: int, conc: int, max_s: float, unit: str
) -> dict[str, Any]:
    """Drive the endpoint from ``conc`` keep-alive connections with a minimal HTTP/1.1 client.

    A general-purpose client (httpx) costs several hundred microseconds of CPU per request,
    which on a 2-core box is taken from the server under test; this one writes a prebuilt
    request and reads the status line, Content-Length and body, so nearly all the CPU left is
    the server's. Every response is checked (status 200 and a propensity in the body).
    """
    from urllib.parse import urlsplit

    parts = urlsplit(base)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = f"/v1/experiments/{key}/assign".encode()
    head = (
        b"POST " + path + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
    )
    lat: list[float] = []
    errors = 0
    counter = iter(range(total))

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, uid: str) -> bool:
        body = b'{"unit_id":"' + uid.encode() + b'"}'
        writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
        hdr = await reader.readuntil(b"\r\n\r\n")
        lower = hdr.lower()
        i = lower.find(b"content-length:")
        if i < 0:
            raise RuntimeError(f"response without Content-Length: {hdr[:200]!r}")
        n = int(lower[i + 15 : lower.find(b"\r\n", i)])
        payload = await reader.readexactly(n)
        return hdr[9:12] == b"200" and b'"propensity"' in payload

    conns = [await asyncio.open_connection(host, port) for _ in range(conc)]
    for r, w in conns:  # warm-up: connections open, experiment cached
        await one(r, w, "warm")
    t_end = time.perf_counter() + max_s

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal errors
        for i in counter:
            if time.perf_counter() > t_end:
                return
            uid = f"user{i % 5000}" if unit == "user" else f"r{i}"
            t0 = time.perf_counter()
            ok = await one(reader, writer, uid)
            lat.append(time.perf_counter() - t0)
            if not ok:
                errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(r, w) for r, w in conns))
    wall = time.perf_counter() - t0
    for _, w in conns:
        w.close()
    arr = sorted(lat)

    def pct(q: float) -> float:
        return round(arr[min(len(arr) - 1, int(q * len(arr)))] * 1e3, 3) if arr else float("nan")

    return {
        "requests": len(arr),
        "errors": errors,
        "wall_s": round(wall, 3),
        "requests_per_s": round(len(arr) / wall, 1) if wall > 0 else None,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
        "concurrency": conc,
    }


if __name__ == "__main__":  # the load process
    b, k, tok, n, c, m, u = sys.argv[1:8]
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    print(json.dumps(asyncio.run(_load(b, k, tok, int(n), int(c), float(m), u))))
