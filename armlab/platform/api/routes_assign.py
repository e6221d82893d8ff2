"""``POST /v1/experiments/{key}/assign``: which arm serves this unit, and with what propensity.

The route is ``async`` and answers from the :class:`~armlab.platform.assignment.Assigner`'s
in-memory cache, so the hot path never touches the database or the thread pool; only the first
request for an experiment that is not cached yet loads it (in the thread pool).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from armlab.platform.api.auth import Authenticator, Principal
from armlab.platform.assignment import Assigner
from armlab.platform.bootstrap import Services

router = APIRouter(tags=["assignment"])


class AssignRequest(BaseModel):
    unit_id: str = Field(
        ...,
        min_length=1,
        max_length=128,
        description="Request id (unit 'request') or user id (unit 'user', sticky).",
    )
    context: dict[str, Any] | None = Field(None, description="Optional request context.")


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
    principal = auth.authenticate(request.headers.get("authorization"))
    auth.require(principal, "producer")
    return principal


@router.post(
    "/v1/experiments/{key}/assign",
    response_model=AssignResponse,
    responses={404: {"description": "Unknown experiment"}, 409: {"description": "Draft"}},
)
async def assign(
    key: str, body: AssignRequest, request: Request, _: Principal = Depends(_producer)
) -> Response:
    """Pick the arm for ``unit_id`` from the latest allocation snapshot.

    Unit ``request``: a fresh draw per call. Unit ``user``: sticky (hash of salt and unit id at
    first exposure; the user keeps the arm and its original propensity). Stopped experiments
    serve the control and shipped ones the shipped arm, with propensity 1; drafts answer 409.
    """
    assigner: Assigner = request.app.state.services.extras["assigner"]
    result = assigner.try_assign(key, body.unit_id, body.context)
    if result is None:
        result = await run_in_threadpool(assigner.assign, key, body.unit_id, body.context)
    return Response(content=orjson.dumps(result.as_dict()), media_type="application/json")


def on_startup(services: Services) -> None:
    """Build the assigner (or reuse one the embedding process made) and start its threads."""
    if "assigner" not in services.extras:
        services.extras["assigner"] = Assigner(services)
    services.extras["assigner"].start()


def on_shutdown(services: Services) -> None:
    assigner = services.extras.get("assigner")
    if assigner is not None:
        assigner.close()
