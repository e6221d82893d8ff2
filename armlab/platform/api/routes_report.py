"""``GET /v1/experiments/{key}/report``: the experiment's self-contained HTML report."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from armlab.platform.api.auth import Principal
from armlab.platform.api.deps import get_session, require_role

router = APIRouter(tags=["report"])


@router.get(
    "/v1/experiments/{key}/report",
    response_class=HTMLResponse,
    responses={200: {"content": {"text/html": {}}, "description": "The HTML report."}},
)
def get_report(
    key: str,
    session: Session = Depends(get_session),
    _: Principal = Depends(require_role("reader")),
) -> HTMLResponse:
    """One HTML page with inline SVG charts: allocation weights over time, cumulative reward
    per arm, the always-valid confidence sequences with the stopping point, and the audit
    trail. Same output as ``armlab report KEY``."""
    from armlab.sim.report import build_report

    return HTMLResponse(build_report(session, key))
