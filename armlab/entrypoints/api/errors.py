"""Domain errors to HTTP in one place. Every error body is JSON ``{type, title, detail}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from armlab.errors import ArmlabError

log = logging.getLogger("armlab.api")


def problem(status: int, type_: str, title: str, detail: str, **extra: object) -> JSONResponse:
    body: dict[str, object] = {"type": type_, "title": title, "detail": detail}
    body.update(extra)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(status_code=status, content=body, headers=headers)


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
        return problem(exc.status, type(exc).__name__, exc.title, exc.message, **extra)

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

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, "HTTPError", str(exc.detail), str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return problem(500, "InternalError", "Internal server error", type(exc).__name__)
