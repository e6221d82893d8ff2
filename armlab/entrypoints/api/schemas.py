"""The API's request bodies and response models (pydantic v2).

The registration body itself is :class:`armlab.core.specs.ExperimentSpec`; these are the
lifecycle requests and everything the API answers with. They live apart from the services'
records (:mod:`armlab.services.experiments`); the routes convert.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from armlab.core.clock import as_utc_or_none
from armlab.core.specs import Key, RewardSpec, StrictModel

UtcDatetime = Annotated[datetime | None, AfterValidator(as_utc_or_none)]


# --- request bodies of the lifecycle routes --------------------------------------------------


class StartRequest(StrictModel):
    reason: str = Field("", max_length=2000)


class StopRequest(StrictModel):
    reason: str = Field(..., min_length=1, max_length=2000, description="Why it stops.")


class ShipRequest(StrictModel):
    arm: Key = Field(..., description="Key of the arm that gets all traffic from now on.")
    reason: str = Field(..., min_length=1, max_length=2000)
    force: bool = Field(
        False, description="Ship even when the sequential evidence does not support it."
    )


# --- responses --------------------------------------------------------------------------------


class ArmOut(BaseModel):
    key: str
    control: bool
    position: int
    variant: dict[str, Any]


class ExperimentSummary(BaseModel):
    key: str
    name: str
    status: str
    unit: str
    policy: str
    control_arm_key: str
    shipped_arm: str | None
    arms: list[str]
    version: int
    created_at: UtcDatetime
    started_at: UtcDatetime
    ended_at: UtcDatetime


class ExperimentOut(BaseModel):
    key: str
    name: str
    description: str
    status: str
    unit: str
    reward: RewardSpec
    policy: dict[str, Any]
    exploration_floor: float
    burn_in: int
    attribution_window_s: int
    control_arm_key: str
    sequential: dict[str, Any]
    salt: str | None = Field(
        None, description="Sticky-assignment hash salt; null unless the token is an admin's.")
    shipped_arm: str | None
    version: int
    created_at: UtcDatetime
    updated_at: UtcDatetime
    started_at: UtcDatetime
    ended_at: UtcDatetime
    arms: list[ArmOut]
    guardrails: list[dict[str, Any]] = Field(
        default_factory=list, description="Guardrail metrics as registered.")
    rolled_back: dict[str, Any] = Field(
        default_factory=dict,
        description="Arms a guardrail breach took out of the allocation, with the evidence.")


class ExperimentList(BaseModel):
    experiments: list[ExperimentSummary]


class ArmResult(BaseModel):
    model_config = ConfigDict(extra="allow")

    key: str
    control: bool
    impressions: int
    feedback: int = 0
    reward_sum: float
    mean: float | None
    weight: float


class ResultsOut(BaseModel):
    """Per-arm evidence and the sequential test's evaluation (``sequential``)."""

    model_config = ConfigDict(extra="allow")

    key: str
    status: str
    shipped_arm: str | None
    control_arm: str
    arms: list[ArmResult]
    snapshot: dict[str, Any] | None
    sequential: Any = None
    guardrails: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Per guardrail and treatment arm: state (ok / breached / non_inferior / "
        "not_informative), estimate, confidence sequence, p-value, alpha.")
    recommendation: dict[str, Any] | None = Field(
        None, description="ship <arm> / keep control / continue, with the reasons: the "
        "primary test and the guardrails combined.")


class AuditEntry(BaseModel):
    id: int
    at: UtcDatetime
    actor: str
    action: str
    reason: str
    before: dict[str, Any]
    after: dict[str, Any]
    evidence: dict[str, Any]


class AuditList(BaseModel):
    key: str
    entries: list[AuditEntry]


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
