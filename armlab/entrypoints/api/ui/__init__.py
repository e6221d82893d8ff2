"""The experimenter's dashboard, served by ``armlab serve`` under ``/ui``.

Server-rendered pages (Jinja2 templates in ``templates/``) with htmx for the live parts and
uPlot for the charts; both libraries are vendored in ``static/vendor/`` with their licences,
so nothing is fetched from the network at run time. :func:`install_dashboard` adds the
routes, the static files, the error pages and the security headers to the API application.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from armlab.entrypoints.api.ui.routes import STATIC_DIR, LoginRequired, PageError, render, router
from armlab.entrypoints.api.ui.session import SessionManager
from armlab.settings import Settings

#: No inline script may run (everything is in static files); styles may be inline (uPlot
#: positions its legend and cursor with style attributes).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
       "form-action 'self'")
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


class SecurityHeaders:
    """Pure ASGI middleware adding :data:`HEADERS` to every ``/ui`` response (and only
    those: the JSON API's hot paths are untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith("/ui"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install_dashboard(app: FastAPI, settings: Settings) -> None:
    """Serve the dashboard from ``app`` under ``/ui``."""
    app.state.ui_sessions = SessionManager(
        settings.ui_secret.get_secret_value(), ttl_s=settings.ui_session_ttl_s,
        secure=settings.ui_cookie_secure,
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

    app.add_middleware(SecurityHeaders)
