"""Liveness and readiness probes (no authentication: orchestrators call them).

Neither needs a thread of the request thread pool (both routes and their dependencies are
``async``), so a pool held by slow requests cannot delay them.
``/readyz`` runs ``SELECT 1`` in its own thread (never the request thread pool) and waits at
most READY_TIMEOUT_S for it: a hung database gives a 503 within that time instead of a request
that never ends, and while one check is still stuck, later probes wait on the same check
instead of starting new ones, so a hung database cannot fill any thread pool. The answer never
names the database host, port or user (the probe is unauthenticated).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from fastapi import APIRouter, Depends, Request
from sqlalchemy import Engine, text

from armlab.bootstrap import Services
from armlab.entrypoints.api.deps import get_services
from armlab.entrypoints.api.schemas import ANY, Health, error_responses
from armlab.errors import ServiceUnavailable

log = logging.getLogger("armlab.api.health")
router = APIRouter(tags=["health"])

#: Longest a readiness probe waits for the database.
READY_TIMEOUT_S = 2.0


class DatabaseProbe:
    """At most one ``SELECT 1`` in flight; callers share it and wait with a deadline."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._done: threading.Event | None = None
        self._error: str | None = None

    def _run(self, done: threading.Event) -> None:
        error = None
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - any driver error means "not ready"
            error = type(exc).__name__
            log.warning("readiness check failed: %s", (str(exc).splitlines() or [""])[0][:300])
        self._error = error
        done.set()

    def start(self) -> threading.Event:
        with self._lock:
            if self._done is None or self._done.is_set():
                done = self._done = threading.Event()
                threading.Thread(target=self._run, args=(done,), name="armlab-readyz",
                                 daemon=True).start()
            return self._done

    async def check(self, timeout_s: float) -> str | None:
        """None when the database answered, else why not (no host names)."""
        done = self.start()
        deadline = time.monotonic() + timeout_s
        while not done.is_set():
            if time.monotonic() >= deadline:
                return f"the database did not answer within {timeout_s:g} s"
            await asyncio.sleep(0.01)
        return None if self._error is None else f"the database is not reachable ({self._error})"


@router.get("/healthz", response_model=Health, responses=error_responses(*ANY))
async def healthz() -> Health:
    """Liveness: the process is up and serving HTTP. Touches nothing else (``async``: no
    worker thread, so it never queues behind requests holding the thread pool)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses=error_responses(*ANY, 503))
async def readyz(request: Request, services: Services = Depends(get_services)) -> Health:
    """Readiness: the database answers ``SELECT 1`` within READY_TIMEOUT_S; 503 otherwise."""
    probe = getattr(request.app.state, "db_probe", None)
    if probe is None or probe.engine is not services.engine:
        probe = request.app.state.db_probe = DatabaseProbe(services.engine)
    problem = await probe.check(READY_TIMEOUT_S)
    if problem is not None:
        raise ServiceUnavailable(problem)
    return Health(status="ready", checks={"database": "ok"})
