"""Domain errors to HTTP in one place. Every error body is JSON ``{type, title, detail}``.

A database that cannot be reached (a transient driver error: refused, reset, restarting, out of
connections; or no pooled connection free within the pool timeout) is a 503 with
``Retry-After``, never a 500; so is every :class:`armlab.errors.ServiceUnavailable`. The body
never names the database host, port or user. Throttled authentication
(:class:`armlab.errors.TooManyRequests`) is a 429 with its own ``Retry-After``.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from armlab.bootstrap.database import is_transient
from armlab.errors import ArmlabError

#: Seconds a client should wait before retrying a 503.
RETRY_AFTER_S = 5

log = logging.getLogger("armlab.api")


def problem(status: int, type_: str, title: str, detail: str, *,
            retry_after_s: int | None = None, **extra: object) -> JSONResponse:
    body: dict[str, object] = {"type": type_, "title": title, "detail": detail}
    body.update(extra)
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_S)
    if retry_after_s is not None:
        headers["Retry-After"] = str(retry_after_s)
    return JSONResponse(status_code=status, content=body, headers=headers or None)


def database_unavailable() -> JSONResponse:
    return problem(503, "ServiceUnavailable", "Service unavailable",
                   "the database is unavailable; retry later")


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at the request's path, sorted."""
    routes = request.app.router.routes
    return [m for m in _METHODS
            if any(r.matches({**request.scope, "method": m})[0] == Match.FULL for r in routes)]


def _field_name(loc: tuple[object, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ArmlabError)
    async def _armlab(_: Request, exc: ArmlabError) -> JSONResponse:
        extra: dict[str, object] = {}
        field = getattr(exc, "field", None)
        if field:
            extra["field"] = field
        return problem(exc.status, type(exc).__name__, exc.title, exc.message,
                       retry_after_s=getattr(exc, "retry_after_s", None), **extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        fields = [_field_name(tuple(e.get("loc", ()))) for e in errors]
        detail = "; ".join(
            f"{f}: {e.get('msg', 'invalid')}" for f, e in zip(fields, errors, strict=False)
        )
        return problem(
            422, "ValidationFailed", "Validation failed", detail or "invalid request",
            errors=[
                {"field": f, "message": e.get("msg", "")}
                for f, e in zip(fields, errors, strict=False)
            ],
        )

    @app.exception_handler(DBAPIError)
    async def _database(_: Request, exc: DBAPIError) -> JSONResponse:
        if is_transient(exc):
            log.warning("database unavailable: %s", type(exc.orig).__name__)
            return database_unavailable()
        log.exception("database error")
        return problem(500, "InternalError", "Internal server error", type(exc).__name__)

    @app.exception_handler(PoolTimeout)
    async def _pool(_: Request, exc: PoolTimeout) -> JSONResponse:
        log.warning("no database connection free: %s", exc)
        return database_unavailable()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = problem(exc.status_code, "HTTPError", str(exc.detail), str(exc.detail))
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        if exc.status_code == 405:
            # Starlette names only the methods of the first route that matched the path; a
            # path served by several routes (GET and POST /v1/experiments) allows them all.
            response.headers["Allow"] = ", ".join(allowed_methods(request))
        return response

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return problem(500, "InternalError", "Internal server error", type(exc).__name__)
