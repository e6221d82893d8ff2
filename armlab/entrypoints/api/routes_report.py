"""``GET /v1/experiments/{key}/report``: the experiment's self-contained HTML report."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse

from armlab.bootstrap import Services
from armlab.entrypoints.api.auth import Principal
from armlab.entrypoints.api.deps import get_services, require_role
from armlab.entrypoints.api.schemas import AUTHED, error_responses
from armlab.entrypoints.report import build_report

router = APIRouter(tags=["report"])


@router.get(
    "/v1/experiments/{key}/report",
    response_class=HTMLResponse,
    responses={200: {"content": {"text/html": {"schema": {"type": "string"}}},
                     "description": "The HTML report."},
               **error_responses(*AUTHED, 404, html_route=True)},
)
def get_report(
    key: str,
    services: Services = Depends(get_services),
    _: Principal = Depends(require_role("reader")),
) -> HTMLResponse:
    """One HTML page with inline SVG charts: allocation weights over time, cumulative reward
    per arm, the always-valid confidence sequences with the stopping point, and the audit
    trail. Same output as ``armlab report KEY``."""
    return HTMLResponse(build_report(services.reports.collect(key)))
