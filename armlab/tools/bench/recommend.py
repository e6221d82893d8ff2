"""``armlab bench recommend``: ``POST /v1/experiments/{key}/recommend`` on MovieLens, from a
separate process, on loopback.

1. A temporary SQLite database (or ``ARMLAB_DATABASE_URL`` when it is PostgreSQL) gets the
   MovieLens-100k catalogue (popularity = ratings before the demo's time split) and a running
   experiment whose arms are the demo's default arms (popularity, MiniLM with the history-mean
   user tower with and without a popularity prior), equal weights.
2. The API runs in its own process (uvicorn, one worker), and every arm is warmed (models
   loaded, catalogue encoded) before the clock starts.
3. The demo's replayed requests (history = recent liked movies, every rated movie excluded)
   are sent ``concurrency`` at a time; the baseline is the same requests one at a time
   (single-request serving, no batching possible), measured in the same run.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from armlab.adapters.data.movielens import load_movielens
from armlab.adapters.db import migrate
from armlab.adapters.db.models import AllocationSnapshot
from armlab.adapters.db.uow import UnitOfWork
from armlab.bootstrap import bootstrap
from armlab.core.specs import ExperimentSpec
from armlab.errors import ConfigurationError
from armlab.services import registry
from armlab.services.catalog import load_catalog
from armlab.settings import Settings
from armlab.tools.bench.assign import _free_port
from armlab.tools.movielens_replay import (
    CATALOG,
    arm_specs,
    build_requests,
    catalog_payload,
    popularity_before,
    split_time,
)


def _prepare(url: str, arms: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Catalogue + running experiment; returns (key, request bodies)."""
    migrate.upgrade(url)
    ml = load_movielens()
    t0 = split_time(ml, 0.5)
    catalog = catalog_payload(ml.items(), popularity_before(ml, t0))
    reqs = build_requests(ml, t0=t0, every=2, window_s=3 * 3600, history_len=5, min_history=5)
    key = f"bench-recommend-{secrets.token_hex(3)}"
    svc = bootstrap(Settings(database_url=url))
    try:
        with UnitOfWork(svc.session_factory) as uow:
            load_catalog(uow, name=CATALOG, items=catalog)
            spec = ExperimentSpec.model_validate({"key": key, "unit": "request", "arms": arms})
            exp = registry.create_experiment(uow, spec=spec, actor="bench")
            registry.start_experiment(uow, key=key, actor="bench")
            uow.flush()
            uow.session.add(AllocationSnapshot(
                experiment_id=exp.id, policy_name="thompson", policy_version="1",
                weights={a["key"]: 1 / len(arms) for a in arms}, stats={}))
            uow.commit()
    finally:
        svc.close()
    bodies = [{"unit_id": f"user-{r.user}", "user": {"history": list(r.history)},
               "catalog": CATALOG, "k": 10, "exclude": sorted(r.seen)} for r in reqs]
    return key, bodies


async def _drive(base: str, key: str, token: str, bodies: list[dict[str, Any]],
                 concurrency: int, max_seconds: float) -> dict[str, Any]:
    """Send ``bodies`` with ``concurrency`` in flight; every response must be a 200 with
    items. Stops at ``max_seconds``."""
    url = f"{base}/v1/experiments/{key}/recommend"
    headers = {"Authorization": f"Bearer {token}"}
    lat: list[float] = []
    errors = 0
    it = iter(bodies)
    deadline = time.perf_counter() + max_seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        for body in it:
            if time.perf_counter() > deadline:
                return
            t = time.perf_counter()
            r = await client.post(url, json=body, headers=headers)
            if r.status_code != 200 or not r.json().get("items"):
                errors += 1
            lat.append(time.perf_counter() - t)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    ms = np.asarray(lat) * 1000
    return {"requests": len(lat), "errors": errors, "seconds": round(wall, 2),
            "requests_per_s": round(len(lat) / wall, 1) if wall else None,
            "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None,
            "concurrency": concurrency}


def run_recommend_bench(*, requests: int = 2000, concurrency: int = 16,
                        max_seconds: float = 60.0, threads: int = 0,
                        tiny_models: dict[str, str] | None = None,
                        progress: Any = None) -> dict[str, Any]:
    """Figures of the batched run with the single-request baseline (module doc).
    ``tiny_models`` replaces MiniLM with tiny random models (tests)."""
    say = progress or (lambda msg: None)
    arms = arm_specs(include_lm=False, tiny_models=tiny_models)
    env_url = os.environ.get("ARMLAB_DATABASE_URL", "")
    tmp = Path(tempfile.mkdtemp(prefix="armlab-bench-recommend-"))
    url = env_url if env_url.startswith("postgresql") else f"sqlite:///{tmp / 'bench.db'}"
    say("preparing the catalogue and the experiment")
    key, bodies = _prepare(url, arms)
    token = secrets.token_hex(16)
    port = _free_port()
    env = {**os.environ, "ARMLAB_DATABASE_URL": url,
           "ARMLAB_AUTH_TOKENS": f"bench:producer:{token}", "ARMLAB_AUTH_DISABLED": "false",
           "ARMLAB_LOG_LEVEL": "WARNING", "ARMLAB_TRANSPORT": "memory",
           "ARMLAB_SCORING_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "armlab.entrypoints.api.app:create_app", "--factory",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
         "--no-access-log"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        say("starting the API and warming every arm (models, catalogue vectors)")
        _warm(base, key, token, bodies, server, {a["key"] for a in arms})
        n = min(requests, len(bodies))
        # separate slices so neither run finds the other's cached user vectors
        say(f"batched: {n} requests, {concurrency} in flight")
        batched = asyncio.run(_drive(base, key, token, bodies[100:100 + n], concurrency,
                                     max_seconds))
        m = min(n, max(50, n // 4))
        say(f"baseline: {m} requests one at a time")
        single = asyncio.run(_drive(base, key, token, bodies[100 + n:100 + n + m], 1,
                                    max_seconds))
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
    ratio = (round(batched["requests_per_s"] / single["requests_per_s"], 2)
             if batched.get("requests_per_s") and single.get("requests_per_s") else None)
    return {
        "benchmark": "recommend", **batched, "baseline_single_request": single,
        "ratio_requests_per_s": ratio,
        "arms": [a["key"] for a in arms],
        "models": "tiny random (test)" if tiny_models else "all-MiniLM-L6-v2",
        "catalog_items": 1682,
        "database": "postgresql" if url.startswith("postgresql") else "sqlite",
        "server": "uvicorn 1 worker, auth on, separate process; the batching scorer ranks "
                  "concurrent requests for one arm together",
        "client": "httpx AsyncClient in the bench process",
        "machine": "2-core VM, no GPU (client and server share the cores)",
        "targets": {"requests_per_s": ">= 50"},
    }


def _warm(base: str, key: str, token: str, bodies: list[dict[str, Any]],
          server: subprocess.Popen[bytes], arms: set[str]) -> None:
    """Wait for the API, then send requests until every arm has served one."""
    seen: set[str] = set()
    deadline = time.monotonic() + 600
    n = 0
    while seen != arms:
        if time.monotonic() > deadline:
            raise ConfigurationError(f"warm-up did not reach every arm ({sorted(seen)})")
        if server.poll() is not None:
            err = server.stderr.read().decode()[-800:] if server.stderr else ""
            raise ConfigurationError(f"API process exited early: {err}")
        try:
            r = httpx.post(f"{base}/v1/experiments/{key}/recommend", json=bodies[n % 100],
                           headers={"Authorization": f"Bearer {token}"}, timeout=300)
        except httpx.HTTPError:
            time.sleep(0.3)
            continue
        if r.status_code == 503:  # the first catalogue encoding outlasted the scoring timeout
            time.sleep(2)
            continue
        if r.status_code != 200:
            raise ConfigurationError(f"warm-up request failed ({r.status_code}): {r.text[:300]}")
        seen.add(r.json()["arm"])
        n += 1
