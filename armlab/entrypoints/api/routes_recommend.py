"""``POST /v1/experiments/{key}/recommend``: assign an arm and rank items with its variant."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    field_validator,
    model_validator,
)

from armlab.bootstrap import Services
from armlab.entrypoints.api.auth import Principal
from armlab.entrypoints.api.deps import get_services, require_role
from armlab.entrypoints.api.routes_assign import check_context, check_unit_id
from armlab.entrypoints.api.schemas import AUTHED, error_responses
from armlab.services.recommend import recommend

router = APIRouter(prefix="/v1/experiments", tags=["recommend"])


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str | None = Field(None, max_length=10_000, description="Free text about the user.")
    history: list[str] = Field(
        default_factory=list, max_length=1000, description="Ids of items the user engaged with."
    )


class CandidateIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str = Field(..., min_length=1, max_length=128)
    title: str = Field("", max_length=2000)


class RecommendIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    unit_id: str = Field(..., min_length=1, max_length=128,
                         description="The event schema's unit-id rule (as /assign).")
    user: UserIn = Field(default_factory=lambda: UserIn())
    candidates: list[CandidateIn] | None = Field(None, min_length=1, max_length=10_000)
    catalog: str | None = Field(None, min_length=1, max_length=64)
    k: int = Field(10, ge=1, le=1000)
    exclude_history: StrictBool = True
    exclude: list[str] = Field(
        default_factory=list, max_length=10_000,
        description="Item ids never to return (for example items the user already has).")
    context: dict[str, Any] | None = None

    _unit = field_validator("unit_id")(classmethod(lambda cls, v: check_unit_id(v)))
    _ctx = field_validator("context")(classmethod(lambda cls, v: check_context(v)))

    @model_validator(mode="after")
    def _one_source(self) -> RecommendIn:
        if (self.candidates is None) == (self.catalog is None):
            raise ValueError("give exactly one of candidates or catalog")
        if not self.user.text and not self.user.history:
            raise ValueError("user needs text or history")
        return self


class ScoredItem(BaseModel):
    item_id: str
    score: float


class PairOut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    a: str
    b: str
    propensity: float = Field(..., description="P(a and b both merged into this list).")


class InterleavingOut(BaseModel):
    """The impression's ``interleaving`` log: send it unchanged in the impression event."""

    model_config = ConfigDict(extra="forbid")
    rankers: list[str] = Field(..., description="The rankers merged into this list (arm order).")
    teams: list[str] = Field(..., description="teams[i]: the ranker that placed items[i].")
    draft: list[list[str]] = Field(..., description="Per round, the rankers in draft order.")
    pairs: list[PairOut] = Field(..., description="Every compared pair with its probability.")


class RecommendOut(BaseModel):
    impression_id: str
    experiment_key: str
    arm: str = Field(..., description="The arm; interleaved: the team of the first item.")
    propensity: float = Field(
        ..., description="P(arm); interleaved: P(this set of rankers).")
    served_at: str
    items: list[ScoredItem]
    interleaving: InterleavingOut | None = Field(
        None, description="Design interleaving, running: how the list was merged (log it "
        "with the impression). Absent otherwise.")


@router.post(
    "/{key}/recommend",
    response_model=RecommendOut,
    response_model_exclude_none=True,
    responses=error_responses(*AUTHED, 404, 409),
)
def recommend_route(
    body: RecommendIn,
    key: str = Path(..., max_length=64),
    services: Services = Depends(get_services),
    _: Principal = Depends(require_role("producer")),
) -> dict[str, Any]:
    """Pick the arm for ``unit_id`` (logged propensity) and return its top-k items.

    Send the returned ``impression_id`` with the impression and feedback events. A running
    interleaving experiment merges the lists of a set of its rankers (team draft, the draft
    order drawn per request): ``arm`` is the team of the first item, ``propensity`` the
    probability of the set, and ``interleaving`` the log to send with the impression.
    """
    return recommend(
        assigner=services.assigner,
        scoring=services.scoring,
        catalogs=services.catalogs,
        key=key,
        unit_id=body.unit_id,
        user_text=body.user.text,
        history=body.user.history,
        candidates=[c.model_dump() for c in body.candidates] if body.candidates else None,
        catalog=body.catalog,
        k=body.k,
        exclude_history=body.exclude_history,
        exclude=body.exclude,
        context=body.context,
    )
