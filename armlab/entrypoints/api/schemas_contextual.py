"""Response models of the ``contextual`` block of an experiment's results (contextual
policies only), as :func:`armlab.services.contextual_results.contextual_block` builds it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Number = int | float


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SegmentOut(_Out):
    """One segment with matured impressions: traffic, plain means and the learned weights."""

    segment_index: int
    segment: dict[str, str] = Field(..., description="feature -> level ('other' included).")
    label: str
    impressions: int
    share: float
    means: dict[str, float | None] = Field(..., description="Plain mean reward per arm.")
    impressions_by_arm: dict[str, int]
    weights: dict[str, float] | None = Field(
        ..., description="Mean P(arm | context) of the latest snapshot over the segment's "
        "matured contexts (its row for segment_thompson); null before a snapshot.")
    source: str | None = Field(None, description="segment_thompson: burn_in / pooled / "
                               "segment (which posterior serves the segment).")


class SegmentEffectOut(_Out):
    """One (segment, treatment) always-valid IPW test against the control at this look."""

    segment_index: int
    segment: dict[str, str]
    arm: str
    n_control: Number
    n_treatment: Number
    mean_control: float | None
    mean_treatment: float | None
    estimate: float | None = Field(..., description="IPW estimate of the segment's effect.")
    p_value: float = Field(..., description="Always-valid p at this look.")
    p_adjusted: float = Field(..., description="Holm (or Bonferroni) over declared "
                              "segments x treatments.")
    ci_low: float | None = Field(..., description="Confidence sequence at cs_alpha "
                                 "(Bonferroni over all hypotheses); null = unbounded.")
    ci_high: float | None
    significant: bool
    valid: bool
    reason: str


class SegmentEffectsOut(_Out):
    hypotheses: int = Field(..., description="Declared segments x treatments.")
    cs_alpha: float
    correction: str
    rows: list[SegmentEffectOut]


class SegmentSrmOut(_Out):
    segment_index: int
    segment: dict[str, str]
    checked: bool
    reason: str
    p_value: float
    p_adjusted: float = Field(..., description="Bonferroni over the declared segments.")
    mismatch: bool
    observed: dict[str, float]
    expected: dict[str, float]


class ArmGainOut(_Out):
    arm: str
    gain: float
    cs_low: float
    cs_high: float


class PersonalisationOut(_Out):
    """Off-policy value of the learned policy (greedy per context) minus the best single
    arm's, with a time-uniform confidence sequence (Bonferroni over the arms)."""

    available: bool
    reason: str
    target: Literal["greedy", "stochastic"] | None = None
    value_policy: float | None = None
    value_arms: dict[str, float] | None = None
    best_arm: str | None = None
    gain: float | None = None
    cs_low: float | None = None
    cs_high: float | None = None
    alpha: float | None = None
    n: int | None = None
    per_arm: list[ArmGainOut] | None = None
    policy_share: dict[str, float] | None = Field(
        None, description="Share of the matured impressions the learned policy would send "
        "to each arm.")
    summary: str | None = Field(None, description="'serving by segment gains +x [lo, hi] "
                                "...'")


class ContextualResultsOut(_Out):
    """Per-segment weights and effects, SRM per segment, the value of personalisation."""

    policy: str
    error: str | None = None
    features: list[dict[str, Any]] = Field(default_factory=list)
    matured_impressions: int = 0
    skipped_rows: int = 0
    per_user: dict[str, int] | None = Field(
        None, description="unit user: the analyses have one term per user (total reward, "
        "sticky propensity, segment of the first impression); impressions, users and users "
        "whose impressions span several segments. The segments' and tests' counts are then "
        "users.")
    declared_segments: int = 0
    segments: list[SegmentOut] = Field(default_factory=list)
    effects: SegmentEffectsOut | None = None
    srm: list[SegmentSrmOut] = Field(default_factory=list)
    personalisation: PersonalisationOut | None = None
    warnings: list[str] = Field(default_factory=list)
