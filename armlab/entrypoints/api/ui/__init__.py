"""The experimenter's dashboard, served by ``armlab serve`` under ``/ui``.

Server-rendered pages (Jinja2 templates in ``templates/``) with htmx for the live parts and
uPlot for the charts; both libraries are vendored in ``static/vendor/`` with their licences,
so nothing is fetched from the network at run time. :func:`install_dashboard` adds the
routes, the static files and the error pages to the API application; the application adds
the security headers (:mod:`armlab.entrypoints.api.headers`).
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from armlab.entrypoints.api.ui.routes import STATIC_DIR, LoginRequired, PageError, render, router
from armlab.entrypoints.api.ui.session import SessionManager, SessionRenewal
from armlab.settings import Settings


def install_dashboard(app: FastAPI, settings: Settings) -> None:
    """Serve the dashboard from ``app`` under ``/ui``."""
    app.state.ui_sessions = sessions = SessionManager(
        settings.ui_secret.get_secret_value(), ttl_s=settings.ui_session_ttl_s,
        max_s=settings.ui_session_max_s, secure=settings.ui_cookie_secure,
    )
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=str(STATIC_DIR)), name="ui-static")

    @app.exception_handler(LoginRequired)
    async def _login(_: Request, exc: LoginRequired) -> Response:
        return RedirectResponse(f"/ui/login?next={quote(exc.next_url, safe='')}",
                                status_code=303)

    @app.exception_handler(PageError)
    async def _page(request: Request, exc: PageError) -> Response:
        return render(request, "error.html", {"status": exc.status, "message": exc.message},
                      exc.status)

    app.add_middleware(SessionRenewal, manager=sessions)

