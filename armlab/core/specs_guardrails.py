"""Guardrail specs of an experiment (pydantic v2): what each guardrail metric watches, the
harm it tolerates and what a breach does. Part of the registration body
(:class:`armlab.core.specs.ExperimentSpec`, which re-exports these names); the test itself is
:mod:`armlab.core.stats.noninferiority`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from armlab.core.event_values import FeedbackKind
from armlab.core.spec_base import Key, StrictModel

#: A dotted path into an impression's ``context`` (``serving.latency_ms``).
FIELD_PATH_PATTERN = r"^[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,7}$"


class GuardrailSource(StrictModel):
    """Where a guardrail's per-impression value comes from: exactly one of a feedback kind
    (``{"feedback": "skip"}``) or a numeric field of the impression's context
    (``{"impression_field": "serving.latency_ms"}``)."""

    feedback: FeedbackKind | None = Field(
        None, description="Feedback kind whose events make the metric (a feedback.v1 kind).")
    impression_field: str | None = Field(
        None, pattern=FIELD_PATH_PATTERN, validate_default=True,
        description="Dotted path of a numeric field in the impression's context; read when "
        "the impression is ingested. An impression without a finite number there is not "
        "observed for this metric (it enters neither arm's sums for it).")

    @field_validator("impression_field")
    @classmethod
    def _exactly_one(cls, v: str | None, info: ValidationInfo) -> str | None:
        if (v is None) == (info.data.get("feedback") is None):
            raise ValueError("give exactly one of feedback (a feedback kind) or "
                             "impression_field (a context path)")
        return v


class GuardrailMargin(StrictModel):
    """The tolerated harm: exactly one of ``absolute`` (metric units) or ``relative`` (a
    fraction of the control's level)."""

    absolute: float | None = Field(None, ge=0, allow_inf_nan=False)
    relative: float | None = Field(None, ge=0, allow_inf_nan=False, validate_default=True)

    @field_validator("relative")
    @classmethod
    def _exactly_one(cls, v: float | None, info: ValidationInfo) -> float | None:
        if (v is None) == (info.data.get("absolute") is None):
            raise ValueError("give exactly one of absolute or relative")
        return v

    @property
    def value(self) -> float:
        return float(self.relative if self.relative is not None else self.absolute or 0.0)

    @property
    def is_relative(self) -> bool:
        return self.relative is not None


class GuardrailSpec(StrictModel):
    """A guardrail metric: a one-sided always-valid non-inferiority test per treatment arm
    (see :mod:`armlab.core.recommendation`); a breach takes the arm out of the allocation."""

    key: Key
    source: GuardrailSource
    aggregate: Literal["any", "first", "sum", "mean"] | None = Field(
        None, validate_default=True,
        description="Per impression, inside the attribution window: any = 1 once a feedback "
        "of the kind has a value > 0; first = 1 once the first feedback of the kind arrives "
        "(whatever its value); sum = sum of the values; mean = mean of the values (0 without "
        "any). Default any for a feedback source; an impression field is its value (sum or "
        "mean, the default).")
    harm: Literal["increase", "decrease"] = Field(
        ..., description="Which direction of the metric is harm.")
    margin: GuardrailMargin = Field(
        default_factory=lambda: GuardrailMargin(absolute=0.0),
        description="Harm tolerated: absolute (metric units) or relative (fraction of the "
        "control's level).")
    alpha: float = Field(0.05, gt=0, lt=0.5,
                         description="False-rollback level of this guardrail over all its "
                         "treatment arms (Bonferroni: alpha / treatments per arm).")
    on_breach: Literal["rollback", "stop"] = Field(
        "rollback", description="rollback: the arm leaves the allocation; stop: the whole "
        "experiment stops (the control serves).")

    @field_validator("aggregate")
    @classmethod
    def _check_aggregate(cls, v: str | None, info: ValidationInfo) -> str:
        source = info.data.get("source")
        field_source = isinstance(source, GuardrailSource) and source.impression_field
        if v is None:
            return "mean" if field_source else "any"
        if field_source and v not in ("sum", "mean"):
            raise ValueError(f"an impression_field guardrail is the field's value: aggregate "
                             f"must be sum or mean (or omitted), not {v!r}")
        return v

    @property
    def binary(self) -> bool:
        return self.aggregate in ("any", "first")
