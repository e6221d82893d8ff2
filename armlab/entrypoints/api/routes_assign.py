"""``POST /v1/experiments/{key}/assign``: which arm serves this unit, and with what propensity.

The route is ``async`` and answers from the :class:`~armlab.services.assignment.Assigner`'s
in-memory cache, so the hot path never touches the database or the thread pool; only the first
request for an experiment that is not cached yet loads it (in the thread pool).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, field_validator
from starlette.concurrency import run_in_threadpool

from armlab.core.events import MAX_UNIT_ID_LEN, json_value_problem, unit_id_problem
from armlab.entrypoints.api.auth import Authenticator, Principal
from armlab.entrypoints.api.errors import problem
from armlab.entrypoints.api.schemas import AUTHED, error_responses
from armlab.entrypoints.api.throttle import address_key
from armlab.errors import ArmlabError, TooManyRequests
from armlab.services.assignment import Assigner

router = APIRouter(tags=["assignment"])


class AssignRequest(BaseModel):
    unit_id: str = Field(
        ...,
        min_length=1,
        max_length=MAX_UNIT_ID_LEN,
        description="Request id (unit 'request') or user id (unit 'user', sticky): the event "
        "schema's rule, 1-128 characters without whitespace or control characters.",
    )
    context: dict[str, Any] | None = Field(
        None, description="Optional request context (JSON the event schema can store: finite "
        "numbers, 64-bit integers, no NUL characters, nesting at most 16).")

    @field_validator("unit_id")
    @classmethod
    def _unit_id(cls, v: str) -> str:
        return check_unit_id(v)

    @field_validator("context")
    @classmethod
    def _context(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return check_context(v)


def check_unit_id(v: str) -> str:
    """The event schema's unit-id rule as a pydantic validator (also used by /recommend)."""
    bad = unit_id_problem(v)
    if bad is not None:
        raise ValueError(bad)
    return v


def check_context(v: dict[str, Any] | None) -> dict[str, Any] | None:
    """The event schema's storable-JSON rule for a request context."""
    if v is not None:
        bad = json_value_problem(v, "context", 0)
        if bad is not None:
            raise ValueError(bad[1])
    return v


def _is_json(content_type: str | None) -> bool:
    """FastAPI's rule for a JSON body: no content type, application/json or */*+json."""
    if not content_type:
        return True
    main = content_type.split(";", 1)[0].strip().lower()
    return main == "application/json" or (main.startswith("application/")
                                          and main.endswith("+json"))


class AssignResponse(BaseModel):
    impression_id: str
    experiment_key: str
    arm: str
    variant: dict[str, Any]
    propensity: float = Field(..., gt=0, le=1, description="Probability this arm was chosen.")
    served_at: datetime
    snapshot_id: int | None = Field(None, description="Allocation snapshot the weights came from.")


async def _producer(request: Request) -> Principal:
    # async twin of deps.require_role("producer"): pure CPU, so no thread-pool hop per request
    auth: Authenticator = request.app.state.authenticator
    principal = auth.authenticate(request.headers.get("authorization"),
                                  request.client.host if request.client else None)
    auth.require(principal, "producer")
    return principal


@router.post(
    "/v1/experiments/{key}/assign",
    response_model=AssignResponse,
    responses=error_responses(*AUTHED, 404, 409),
)
async def assign(
    key: str, body: AssignRequest, request: Request, _: Principal = Depends(_producer)
) -> Response:
    """Pick the arm for ``unit_id`` from the latest allocation snapshot.

    Unit ``request``: a fresh draw per call. Unit ``user``: sticky (hash of salt and unit id at
    first exposure; the user keeps the arm and its original propensity). Stopped experiments
    serve the control and shipped ones the shipped arm, with propensity 1; drafts answer 409.
    """
    assigner: Assigner = request.app.state.services.assigner
    result = assigner.try_assign(key, body.unit_id, body.context)
    if result is None:
        result = await run_in_threadpool(assigner.assign, key, body.unit_id, body.context)
    return Response(content=orjson.dumps(result.as_dict()), media_type="application/json")


def _has_huge_float(value: Any) -> bool:
    """orjson reads an integer past 64 bits as a float; such a context goes to the route,
    whose parser keeps it an integer (and refuses it), so both paths answer alike."""
    if isinstance(value, float):
        return abs(value) >= 2.0**63
    if isinstance(value, dict):
        return any(_has_huge_float(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_huge_float(v) for v in value)
    return False


class AssignFastPath:
    """ASGI fast path for the happy case of ``POST /v1/experiments/{key}/assign``.

    FastAPI's routing and dependency resolution cost several hundred microseconds per request,
    more than the assignment itself. This middleware answers only a request that is fully
    valid: a producer token, a JSON content type (or none), a JSON body with a valid ``unit_id``
    (the event schema's rule) and an optional storable object ``context``, and an experiment
    already in the assigner's cache. Anything else (a bad body, an auth failure, a cache miss,
    a draft or unknown experiment) is passed to the FastAPI route with the body replayed, so
    errors, validation messages and the OpenAPI description come from exactly one place: the
    route above.
    """

    _PREFIX = "/v1/experiments/"
    _SUFFIX = "/assign"

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (
            scope.get("method") == "POST"
            and path.startswith(self._PREFIX)
            and path.endswith(self._SUFFIX)
        ):
            await self.app(scope, receive, send)
            return
        chunks = []
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, receive, send)  # disconnect: let the stack handle it
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        refusal = self._throttled(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        payload = self._answer(scope, path, body)
        if payload is None:
            replayed = False

            async def replay() -> dict[str, Any]:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    @staticmethod
    def _throttled(scope: dict[str, Any]) -> JSONResponse | None:
        """The route's 429 for a bearer request from a client address the authentication
        throttle blocks, without FastAPI's cost (a guesser's requests stay cheap); None
        otherwise. A valid client pays one lock-free read of the throttle's table."""
        client = scope.get("client")
        auth = getattr(getattr(scope.get("app"), "state", None), "authenticator", None)
        if not client or auth is None or auth.disabled:
            return None
        if auth.throttle.host_retry_after(client[0]) <= 0:
            return None
        header = next((v for n, v in scope.get("headers", ()) if n == b"authorization"), b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return None  # the route answers 401 for these, blocked or not
        try:
            auth.throttle.check((address_key(client[0]),))
        except TooManyRequests as exc:
            return problem(exc.status, type(exc).__name__, exc.title, exc.message,
                           retry_after_s=exc.retry_after_s)
        return None

    def _answer(self, scope: dict[str, Any], path: str, body: bytes) -> bytes | None:
        """The JSON response for a fully valid, cached request; None to defer to the route."""
        key = path[len(self._PREFIX) : -len(self._SUFFIX)]
        if not key or "/" in key:
            return None
        app = scope.get("app")
        services = getattr(getattr(app, "state", None), "services", None)
        if services is None or not services.settings.assign_fast_path:
            return None
        if not services.has("assigner"):
            return None
        assigner = services.assigner
        authorization = None
        content_type = None
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"content-type":
                content_type = value.decode("latin-1")
        if not _is_json(content_type):
            return None
        try:
            # Not throttled here: a blocked client was answered by _throttled, and a wrong
            # token is deferred to the route, which counts it (once).
            auth: Authenticator = app.state.authenticator  # type: ignore[union-attr]
            auth.require(auth.authenticate(authorization), "producer")
            data = orjson.loads(body)
        except (ArmlabError, orjson.JSONDecodeError):
            return None
        if not isinstance(data, dict) or set(data) - {"unit_id", "context"}:
            return None
        unit_id, context = data.get("unit_id"), data.get("context")
        if unit_id_problem(unit_id) is not None:
            return None
        if context is not None and (not isinstance(context, dict)
                                    or json_value_problem(context, "context", 0) is not None
                                    or _has_huge_float(context)):
            return None
        try:
            result = assigner.try_assign(key, unit_id, context)
        except ArmlabError:
            return None
        return None if result is None else orjson.dumps(result.as_dict())
