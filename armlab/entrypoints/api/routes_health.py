"""Liveness and readiness probes (no authentication: orchestrators call them)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from sqlalchemy import text

from armlab.bootstrap import Services
from armlab.entrypoints.api.deps import get_services
from armlab.entrypoints.api.schemas import Health
from armlab.errors import ServiceUnavailable

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """Liveness: the process is up and serving HTTP. Touches nothing else."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"description": "Not ready"}})
def readyz(services: Services = Depends(get_services)) -> Health:
    """Readiness: the database answers ``SELECT 1``; 503 when it does not."""
    try:
        with services.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any driver error means "not ready"
        first_line = (str(exc).splitlines() or [""])[0][:200]
        raise ServiceUnavailable(
            f"database not reachable: {type(exc).__name__}: {first_line}"
        ) from exc
    return Health(status="ready", checks={"database": "ok"})
