"""The API's request bodies and response models (pydantic v2).

The registration body itself is :class:`armlab.core.specs.ExperimentSpec`; these are the
lifecycle requests and everything the API answers with. They live apart from the services'
records (:mod:`armlab.services.experiments`); the routes convert.

Every response model declares its fields and refuses any other (``extra="forbid"``): a field
the services start returning must be declared here first. The results endpoint's models
(:class:`ResultsOut`) have optional fields that some evaluations lack (rows stored before
whole evaluations were, arms the test has not looked at yet); the route serializes with
``response_model_exclude_unset`` so that an absent field stays absent rather than ``null``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool

from armlab.core.clock import as_utc_or_none
from armlab.core.decisions import Decision
from armlab.core.specs import Key, RewardSpec, StrictModel
from armlab.core.status import ExperimentStatus
from armlab.entrypoints.api.schemas_contextual import ContextualResultsOut
from armlab.entrypoints.api.schemas_interleaving import InterleavingResultsOut

UtcDatetime = Annotated[datetime | None, AfterValidator(as_utc_or_none)]


# --- request bodies of the lifecycle routes --------------------------------------------------


class StartRequest(StrictModel):
    reason: str = Field("", max_length=2000)


class StopRequest(StrictModel):
    reason: str = Field(..., min_length=1, max_length=2000, description="Why it stops.")


class ShipRequest(StrictModel):
    arm: Key = Field(..., description="Key of the arm that gets all traffic from now on.")
    reason: str = Field(..., min_length=1, max_length=2000)
    force: StrictBool = Field(
        False, description="Ship even when the sequential evidence does not support it."
    )


# --- responses --------------------------------------------------------------------------------

#: A count or sum as the services hand it over (an int stays an int in the JSON).
Number = int | float


class OutModel(BaseModel):
    """A response model: the declared fields and no other."""

    model_config = ConfigDict(extra="forbid")


class ArmOut(OutModel):
    key: str
    control: bool
    position: int
    variant: dict[str, Any]


class ExperimentSummary(OutModel):
    key: str
    name: str
    status: ExperimentStatus
    unit: str
    policy: str
    control_arm_key: str
    shipped_arm: str | None
    arms: list[str]
    version: int
    created_at: UtcDatetime
    started_at: UtcDatetime
    ended_at: UtcDatetime


class ExperimentOut(OutModel):
    key: str
    name: str
    description: str
    status: ExperimentStatus
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
    design: Literal["ab", "interleaving"] = Field(
        "ab", description="ab (one arm per request) or interleaving (rankers merged).")
    interleaving: dict[str, Any] | None = Field(
        None, description="Interleaving settings (design interleaving), defaults filled in.")


class ExperimentList(OutModel):
    experiments: list[ExperimentSummary]


class ArmResult(OutModel):
    key: str
    control: bool
    impressions: int
    feedback: int = 0
    reward_sum: float
    mean: float | None
    weight: float
    rolled_back: bool = Field(False, description="A guardrail breach took it out.")


class SnapshotOut(OutModel):
    """The allocation snapshot the served weights come from."""

    id: int | None
    created_at: str | None
    policy_name: str
    policy_version: str
    weights: dict[str, Number]
    stats: dict[str, Any]


class RecommendationOut(OutModel):
    action: Literal["ship", "keep_control", "continue"]
    arm: str | None
    reasons: list[str]


class ArmLookOut(OutModel):
    """One treatment arm's look (:class:`armlab.core.decisions.ArmLook`) with the entries of
    its guardrails. ``p_now``, ``log_lambda`` and ``cs_empty`` only once the test has looked
    at the arm; a null side of the confidence sequence is unbounded."""

    arm: str
    control: str
    n_control: Number
    n_treatment: Number
    mean_control: float | None = None
    mean_treatment: float | None = None
    decision: Decision
    reason: str
    estimate: float | None
    p_value: float
    p_adjusted: float | None
    p_now: float | None = None
    ci_low: float | None
    ci_high: float | None
    log_lambda: float | None = None
    valid: bool
    looks: int
    cs_empty: bool | None = None
    guardrails: list[dict[str, Any]] = Field(default_factory=list)
    rolled_back: bool = False


class HorizonPlanOut(OutModel):
    impressions: Number
    info: float
    share: float


class SrmOut(OutModel):
    """The always-valid sample-ratio-mismatch check (older rows keep p_value, mismatch and
    ratio only)."""

    t: Number | None = None
    ratio: dict[str, Number] = Field(default_factory=dict)
    p_values: dict[str, Number] = Field(default_factory=dict)
    p_value: float | None = None
    alpha: float | None = None
    mismatch: bool = False
    checked: bool = True
    reason: str = ""
    observed: dict[str, Number] = Field(default_factory=dict)
    expected: dict[str, Number] = Field(default_factory=dict)


class CupedOut(OutModel):
    """CUPED of the look (``sequential.cuped``, unit user): the test ran on Y - theta X, X
    each user's pre-period covariate; ``variance_ratio`` = Var(Y - theta X) / Var(Y) within
    arms (1 - rho²). Not ``applied`` before the experiment started (``reason``)."""

    applied: bool
    covariate: Literal["reward", "feedback", "impressions"]
    pre_period_days: int
    reason: str | None = None
    pre_from: str | None = None
    pre_to: str | None = None
    theta: float | None = None
    rho: float | None = None
    variance_ratio: float | None = None
    units: Number | None = None
    pre_units: Number | None = None


class SequentialOut(OutModel):
    """The sequential test's evaluation (:class:`armlab.core.decisions.Evaluation`) as the
    results endpoint shows it: the last recorded look (``recorded``), or before the first one
    the test's design with every arm at ``continue``; with the analysis unit and cutoff, and
    the guardrails, rolled-back arms and recommendation of the same look. Rows recorded
    before whole evaluations were stored lack some of the fields."""

    method: Literal["ipw", "plain"] | None = None
    alpha: float | None = None
    cs_alpha: float | None = None
    tau2: float | None = None
    tau2_source: Literal["experiment", "frozen", "horizon"] | None = None
    theta0: float | None = None
    correction: Literal["holm", "bonferroni"] | None = None
    min_samples: int | None = None
    min_events: int | None = None
    alternative: Literal["two-sided", "greater"] | None = None
    boundary: Literal["mixture", "horizon"] | None = None
    horizon_plan: HorizonPlanOut | None = None
    max_n: int | None = None
    impressions: Number | None = None
    control: str | None = None
    srm: SrmOut | None = None
    stop: bool = False
    stop_reason: str = ""
    warnings: list[str] = Field(default_factory=list)
    evaluated_at: str | None = None
    unit: str | None = None
    cutoff: str | None = None
    cuped: CupedOut | None = None
    arms: list[ArmLookOut] = Field(default_factory=list)
    guardrails: list[dict[str, Any]] = Field(default_factory=list)
    rolled_back: dict[str, Any] = Field(default_factory=dict)
    recommendation: RecommendationOut | None = None
    recorded: bool = False
    recorded_at: str | None = None


class SequentialUnavailable(OutModel):
    error: str = Field(..., description="Why the sequential evaluation is unavailable.")


class ResultsOut(OutModel):
    """Per-arm evidence and the sequential test's evaluation (``sequential``); for an
    interleaving experiment (``design: interleaving``) the ``interleaving`` block instead."""

    key: str
    status: ExperimentStatus
    design: Literal["ab", "interleaving"] = "ab"
    shipped_arm: str | None
    control_arm: str
    arms: list[ArmResult]
    snapshot: SnapshotOut | None
    sequential: SequentialOut | SequentialUnavailable | None = None
    guardrails: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Per guardrail and treatment arm: state (ok / breached / non_inferior / "
        "not_informative), estimate, confidence sequence, p-value, alpha.")
    recommendation: RecommendationOut | None = Field(
        None, description="ship <arm> / keep control / continue, with the reasons: the "
        "primary test and the guardrails combined.")
    interleaving: InterleavingResultsOut | None = Field(
        None, description="Interleaving experiments: per pair of rankers the always-valid "
        "test (estimate, confidence sequence, p, Holm p, decision), compared impressions, "
        "wins and clicks per side; the Condorcet winner; the rankers' choice probabilities.")
    contextual: ContextualResultsOut | None = Field(
        None, description="Contextual policies: per-segment weights and always-valid effects "
        "(multiplicity-controlled), SRM per segment, and the value of personalisation over "
        "the best single arm; null otherwise.")


class AuditEntry(OutModel):
    id: int
    at: UtcDatetime
    actor: str
    action: str
    reason: str
    before: dict[str, Any]
    after: dict[str, Any]
    evidence: dict[str, Any]


class AuditList(OutModel):
    key: str
    entries: list[AuditEntry]


class Health(OutModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


# --- errors -----------------------------------------------------------------------------------


class ProblemFieldOut(OutModel):
    field: str
    message: str


class Problem(OutModel):
    """Every error body (``application/json``): ``{type, title, detail}``, plus ``field`` when
    one field is at fault and ``errors`` (one entry per field) when the request failed
    validation (:mod:`armlab.entrypoints.api.errors`)."""

    type: str = Field(..., description="The error's class: ExperimentNotFound, "
                      "ValidationFailed, Unauthorized, TooManyRequests, ...")
    title: str
    detail: str
    field: str | None = Field(None, description="The field at fault, when one is.")
    errors: list[ProblemFieldOut] | None = Field(
        None, description="Each invalid field and its message (request validation).")


_ERROR_DESCRIPTIONS: dict[int, str] = {
    401: "Missing or invalid bearer token",
    403: "The token's role does not allow this",
    404: "Unknown experiment, arm or catalog",
    409: "Illegal transition, concurrent modification, existing key, or an experiment not "
         "serving yet (draft)",
    413: "Request body over ARMLAB_MAX_BODY_BYTES (refused before it is read)",
    422: "Invalid input; the body names the field",
    429: "Too many failed authentication attempts from this client: retry after Retry-After "
         "seconds",
    500: "Unexpected server error",
    503: "A dependency (the database, Kafka, a model) is unavailable: retry after Retry-After "
         "seconds",
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.",
                                "schema": {"type": "integer"}}}


def error_responses(*statuses: int, html_route: bool = False) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses an operation can answer, each with the
    :class:`Problem` body as ``application/json`` (and ``Retry-After`` on 429 and 503).
    ``html_route``: the operation answers HTML on success (FastAPI would give its errors the
    route's media type), so the body is referenced explicitly."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"description": _ERROR_DESCRIPTIONS[status]}
        if html_route:
            entry["content"] = {"application/json": {
                "schema": {"$ref": "#/components/schemas/Problem"}}}
        else:
            entry["model"] = Problem
        if status in (429, 503):
            entry["headers"] = _RETRY_AFTER
        out[status] = entry
    return out


#: Every operation: a body over the limit, an unexpected error.
ANY = (413, 500)
#: An operation behind a bearer token that reads the database.
AUTHED = (401, 403, 413, 422, 429, 500, 503)
