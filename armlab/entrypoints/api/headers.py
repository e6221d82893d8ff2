"""The browser-facing security headers: every HTML page armlab serves gets them.

That is the dashboard (everything under ``/ui``) and the experiment report
(``GET /v1/experiments/{key}/report``); the JSON API's hot paths are left untouched.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: No inline script may run (everything is in static files; the report has none); styles may be
#: inline (uPlot positions its legend and cursor with style attributes, the report carries its
#: stylesheet inline).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
       "form-action 'self'")
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]

_REPORT_PREFIX = "/v1/experiments/"
_REPORT_SUFFIX = "/report"


def wants_headers(path: str) -> bool:
    """True for the paths that serve HTML: the dashboard and the report."""
    return path.startswith("/ui") or (
        path.endswith(_REPORT_SUFFIX) and path.startswith(_REPORT_PREFIX))


class SecurityHeaders:
    """Pure ASGI middleware adding :data:`HEADERS` to every response of a path
    :func:`wants_headers` accepts (and only those)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not wants_headers(str(scope.get("path", ""))):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)
