"""Experiment specs (pydantic v2): what an experiment is, as registered.

One definition each, used by the API's registration body, the CLI, the demo, the allocator and
the sequential test alike: :class:`ExperimentSpec` with its :class:`ArmSpec`,
:class:`RewardSpec`, :class:`PolicySpec` and :class:`SequentialSpec`. Policy parameters are
declared once, in :mod:`armlab.core.policies` (``POLICY_PARAMS``), and variant configs in
:mod:`armlab.core.variants`; this module validates with those classes.

Every validation rule of a registration is here, so a bad spec is a 422 that names the field
before any database work happens. Cross-field rules are written as field validators on the
*later* field (pydantic validates fields in declaration order and ``info.data`` holds the
earlier ones), which keeps the error location on the field at fault (``exploration_floor``,
``arms``...) instead of on the whole body.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationInfo,
    field_validator,
)

from armlab.core.events import FeedbackKind
from armlab.core.policies import POLICY_PARAMS
from armlab.core.variants import validate_variant
from armlab.errors import PolicyError, ValidationFailed

KEY_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_KEY_RE = re.compile(KEY_PATTERN)

Key = Annotated[
    str,
    Field(
        pattern=KEY_PATTERN,
        description="Lower-case letters, digits, '_' and '-'; 1-64 characters, "
        "starting with a letter or digit.",
        examples=["home-recs"],
    ),
]

PolicyName = Literal["thompson", "top_two_thompson", "epsilon_greedy", "uniform"]


#: Integers stored in 32-bit columns (burn_in, attribution_window_s) or compared with them.
INT32_MAX = 2**31 - 1
#: Integers stored in JSON columns stay exactly representable as doubles.
JSON_INT_MAX = 2**53


class StrictModel(BaseModel):
    """Unknown fields are errors: a typo such as ``aplha`` must not be silently ignored.
    NaN and Infinity are errors too (JSON columns cannot store them, and no parameter means
    anything at infinity)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# --- the registration body -------------------------------------------------------------------


class RewardSpec(StrictModel):
    kind: Literal["binary", "continuous"] = "binary"
    metric: str = Field(
        "click", min_length=1, max_length=64,
        description="Feedback kind that counts as reward (click, conversion, rating, dwell...).",
    )


class PolicySpec(StrictModel):
    name: PolicyName = "thompson"
    params: dict[str, Any] = Field(
        default_factory=dict,
        validate_default=True,
        description="Policy parameters (omitted ones take the policy's defaults). "
        + "; ".join(f"{name}: {', '.join(model.model_fields) or 'none'}"
                    for name, model in POLICY_PARAMS.items()),
    )

    @field_validator("params")
    @classmethod
    def _check_params(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        name = info.data.get("name")
        model = POLICY_PARAMS.get(name) if isinstance(name, str) else None
        if model is None:  # the name itself failed; that error is reported on policy.name
            return v
        try:
            parsed = model.model_validate(v)
        except PolicyError as exc:
            pairs = exc.errors or [("", exc.message)]
            raise ValueError("; ".join(f"params.{loc}: {msg}" if loc else f"params: {msg}"
                                       for loc, msg in pairs)) from None
        # Store only what the caller set: the policy's own defaults apply to the rest.
        return parsed.model_dump(exclude_unset=True)


class SequentialSpec(StrictModel):
    """Sequential-test settings: the mSPRT of Johari, Koomen, Pekelis & Walsh ("Always Valid
    Inference", Operations Research 2022), or its inverse-propensity-weighted form under a
    bandit (see :mod:`armlab.core.decisions`)."""

    alpha: float = Field(0.05, gt=0, lt=1, description="Type-I error level.")
    tau2: float | None = Field(
        None, gt=0, description="Mixing variance tau^2; None = chosen from the data."
    )
    theta0: float = Field(0.0, description="Null difference of means.")
    min_samples: int = Field(100, ge=0, le=INT32_MAX,
                             description="Per-arm samples before any decision.")
    min_events: int = Field(
        30, ge=0, le=INT32_MAX,
        description="Per-arm events before a look carries evidence: for binary rewards the "
        "rarer outcome (successes at low click rates), for continuous rewards the feedback "
        "events. Keeps the test valid at low base rates.",
    )
    max_n: int | None = Field(
        None, gt=0, le=JSON_INT_MAX,
        description="Optional horizon in the unit of analysis: impressions for unit request, "
        "users for unit user (all arms together). When it is reached an arm that is neither "
        "decided nor futile is `inconclusive` (with auto_stop the experiment stops); the "
        "horizon boundary is planned for it.")
    auto_stop: StrictBool = Field(
        False, description="Stop the experiment when the test decides (true or false only).")
    correction: Literal["holm", "bonferroni"] = "holm"
    method: Literal["auto", "ipw", "plain"] = Field(
        "auto",
        description="auto: the IPW (adaptive-valid) test unless the policy is uniform, where "
        "plain mSPRT on the arm means applies; ipw / plain force one.",
    )
    alternative: Literal["two-sided", "greater"] = Field(
        "two-sided",
        description="two-sided: either direction, alpha shared by the two directions of one "
        "normal mixture; greater: only 'treatment better than control' is tested (one-sided "
        "half-normal mixture, all of alpha on that direction, more power; a worse arm is "
        "never declared worse).",
    )
    boundary: Literal["mixture", "horizon"] = Field(
        "mixture",
        description="mixture: the normal-mixture boundary alone (valid at any sample size, "
        "tuned for the planned horizon); horizon: a flat boundary on the summed evidence up to "
        "the planned information at max_n (or 20,000 impressions) with 80% of alpha, the "
        "mixture with the other 20% (valid at any sample size; more power up to the horizon, "
        "less beyond it).",
    )
    min_effect: float | None = Field(
        None, gt=0, allow_inf_nan=False,
        description="Futility rule: an arm is futile once its confidence sequence lies inside "
        "(-min_effect, +min_effect).",
    )


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


class InterleavingSpec(StrictModel):
    """How an interleaving experiment (``design: interleaving``) merges and tests its rankers.

    Every arm is a ranker. Each request shows one list merged by team draft (two rankers) or
    team-draft multileaving (three or more; Schuth et al. 2014), the draft order drawn per
    request; a click is credited to the team of the clicked item. The test is per pair of
    rankers on the unit's mean (or summed) credit difference, always valid, Holm across pairs
    (:mod:`armlab.core.stats.interleaving`); ``sequential.alpha`` and ``sequential.auto_stop``
    apply. With ``rankers_per_request`` below the number of arms a multi-dueling Thompson
    bandit chooses the rankers of each request (:mod:`armlab.core.policies.dueling`) and every
    impression logs the probability of each pair being compared (the test weights by it)."""

    rankers_per_request: int | None = Field(
        None, ge=2, le=256,
        description="Rankers merged into each list; omitted = every arm. Below the number of "
        "arms a dueling bandit chooses them per request.")
    pair_floor: float = Field(
        0.02, gt=0, lt=1,
        description="Smallest probability of any pair being compared when the bandit chooses "
        "(must be reachable: at most m(m-1)/(K(K-1)) for m of K rankers).")
    aggregate: Literal["mean", "sum"] = Field(
        "mean", description="A unit's preference: the mean (default) or the sum of its "
        "impressions' credit differences.")
    planned_units: int = Field(
        1000, ge=1, le=JSON_INT_MAX,
        description="Units the confidence sequence is tuned for (valid before and after).")
    min_units: int = Field(30, ge=2, le=INT32_MAX,
                           description="Units before a look carries evidence.")
    stop_on: Literal["condorcet", "all_pairs", "never"] = Field(
        "condorcet", description="condorcet: one ranker decided better than every other (or "
        "every pair decided); all_pairs: every pair decided; never: monitor only. Applies "
        "with sequential.auto_stop.")


class ArmSpec(StrictModel):
    key: Key
    control: StrictBool = False
    variant: dict[str, Any] = Field(
        ...,
        description="Variant config (kind bi_encoder|cross_encoder|lm_yes_no|popularity, "
        "model, templates...). Immutable once the experiment runs.",
        examples=[{"kind": "popularity"}],
    )

    @field_validator("variant")
    @classmethod
    def _check_variant(cls, v: dict[str, Any]) -> dict[str, Any]:
        try:
            return validate_variant(v)
        except ValidationFailed as exc:
            msg = exc.message
            if exc.field and not msg.startswith(exc.field):
                msg = f"{exc.field}: {msg}"
            raise ValueError(msg) from None


class ExperimentSpec(StrictModel):
    """The registration body of ``POST /v1/experiments``."""

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        json_schema_extra={
            "examples": [
                {
                    "key": "home-recs",
                    "name": "Home page recommendations",
                    "unit": "request",
                    "reward": {"kind": "binary", "metric": "click"},
                    "policy": {"name": "thompson", "params": {}},
                    "exploration_floor": 0.02,
                    "burn_in": 100,
                    "attribution_window_s": 3600,
                    "sequential": {"alpha": 0.05, "auto_stop": False},
                    "arms": [
                        {"key": "control", "control": True, "variant": {"kind": "popularity"}},
                        {
                            "key": "minilm",
                            "variant": {"kind": "bi_encoder", "model": "all-MiniLM-L6-v2"},
                        },
                    ],
                }
            ]
        },
    )

    key: Key
    design: Literal["ab", "interleaving"] = Field(
        "ab", description="ab: each request is served by one arm (the bandit A/B test); "
        "interleaving: arms are rankers merged into one list per request, clicks credited "
        "to the ranker that placed the item (see `interleaving`).")
    name: str | None = Field(None, max_length=200, description="Defaults to the key.")
    description: str = Field("", max_length=10_000)
    unit: Literal["request", "user"] = Field(
        "request", description="request: a fresh draw per request; user: sticky per unit_id."
    )
    reward: RewardSpec = Field(default_factory=lambda: RewardSpec.model_validate({}))
    policy: PolicySpec = Field(default_factory=lambda: PolicySpec.model_validate({}))
    # arms comes before exploration_floor so the floor can be checked against 1/K.
    arms: list[ArmSpec] = Field(..., min_length=2, max_length=256)
    exploration_floor: float = Field(
        0.0, ge=0, lt=1, description="Minimum traffic share of every arm; must be < 1/K."
    )
    burn_in: int = Field(0, ge=0, le=INT32_MAX,
                         description="Impressions served uniformly before adapting.")
    attribution_window_s: int = Field(
        3600, gt=0, le=90 * 86_400, description="Feedback later than this is not attributed."
    )
    sequential: SequentialSpec = Field(default_factory=lambda: SequentialSpec.model_validate({}))
    salt: str | None = Field(
        None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
        description="Hash salt for sticky assignment; random hex when omitted.",
    )
    guardrails: list[GuardrailSpec] = Field(
        default_factory=list, max_length=16,
        description="Guardrail metrics (keys unique); immutable once the experiment runs.")
    interleaving: InterleavingSpec | None = Field(
        None, validate_default=True,
        description="Interleaving settings (design interleaving only; defaults filled in).")

    @field_validator("arms")
    @classmethod
    def _check_arms(cls, arms: list[ArmSpec]) -> list[ArmSpec]:
        seen: dict[str, int] = {}
        for i, arm in enumerate(arms):
            if arm.key in seen:
                raise ValueError(
                    f"arms.{i}.key: duplicate arm key {arm.key!r} (also arms.{seen[arm.key]}.key)"
                )
            seen[arm.key] = i
        controls = [i for i, a in enumerate(arms) if a.control]
        if len(controls) != 1:
            where = ", ".join(f"arms.{i}" for i in controls) or "none"
            raise ValueError(
                f"exactly one arm must have control=true; found {len(controls)} ({where})"
            )
        return arms

    @field_validator("exploration_floor")
    @classmethod
    def _check_floor(cls, floor: float, info: ValidationInfo) -> float:
        arms = info.data.get("arms")
        if arms:
            k = len(arms)
            if floor * k >= 1.0:
                raise ValueError(
                    f"exploration_floor {floor} must be below 1/K = {1.0 / k:.6g} for K={k} arms"
                )
        return floor

    @field_validator("guardrails")
    @classmethod
    def _check_guardrails(cls, gs: list[GuardrailSpec], info: ValidationInfo
                          ) -> list[GuardrailSpec]:
        seen: dict[str, int] = {}
        reward = info.data.get("reward")
        for i, g in enumerate(gs):
            if g.key in seen:
                raise ValueError(f"guardrails.{i}.key: duplicate guardrail key {g.key!r} "
                                 f"(also guardrails.{seen[g.key]}.key)")
            seen[g.key] = i
            if (isinstance(reward, RewardSpec) and g.source.feedback is not None
                    and g.source.feedback == reward.metric):
                raise ValueError(f"guardrails.{i}.source.feedback: {g.source.feedback!r} is the "
                                 "primary reward metric; a guardrail watches another metric")
        return gs

    @field_validator("interleaving")
    @classmethod
    def _check_interleaving(cls, v: InterleavingSpec | None, info: ValidationInfo
                            ) -> InterleavingSpec | None:
        design = info.data.get("design")
        if design != "interleaving":
            if v is not None:
                raise ValueError("interleaving settings need design: interleaving")
            return None
        spec = v or InterleavingSpec.model_validate({})
        arms = info.data.get("arms") or []
        m = spec.rankers_per_request
        if m is not None and arms and m > len(arms):
            raise ValueError(f"rankers_per_request: {m} is more than the {len(arms)} arms")
        if m is not None and arms and m < len(arms):
            k = len(arms)
            top = m * (m - 1) / (k * (k - 1))
            if spec.pair_floor > top:
                raise ValueError(f"pair_floor: {spec.pair_floor} is above what uniform choices "
                                 f"of {m} of {k} rankers give ({top:.4g})")
        if info.data.get("guardrails"):
            raise ValueError("guardrails are not tested in an interleaving experiment (one "
                             "list mixes every ranker); run them in the A/B stage")
        reward = info.data.get("reward")
        if isinstance(reward, RewardSpec) and reward.kind != "binary":
            raise ValueError("an interleaving experiment credits clicks: reward.kind must be "
                             "binary")
        return spec

    @property
    def control_arm_key(self) -> str:
        return next(a.key for a in self.arms if a.control)


