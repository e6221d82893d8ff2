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

from typing import Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    StrictBool,
    ValidationInfo,
    field_validator,
)

from armlab.core.policies import CONTEXTUAL_POLICY_NAMES, POLICY_PARAMS, make_contextual_policy
from armlab.core.spec_base import (
    INT32_MAX,
    JSON_INT_MAX,
    Key,
    StrictModel,
)
from armlab.core.specs_guardrails import (
    FIELD_PATH_PATTERN,
    GuardrailMargin,
    GuardrailSource,
    GuardrailSpec,
)
from armlab.core.specs_interleaving import InterleavingSpec
from armlab.core.variants import validate_variant
from armlab.errors import PolicyError, ValidationFailed

__all__ = ["FIELD_PATH_PATTERN", "INT32_MAX", "JSON_INT_MAX", "ArmSpec", "CupedSpec",
           "ExperimentSpec", "GuardrailMargin", "GuardrailSource", "GuardrailSpec",
           "InterleavingSpec", "Key", "PolicyName", "PolicySpec", "RewardSpec", "SequentialSpec",
           "StrictModel"]

PolicyName = Literal["thompson", "top_two_thompson", "epsilon_greedy", "uniform",
                     "segment_thompson", "linear_thompson"]


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
            if name in CONTEXTUAL_POLICY_NAMES:  # segments: categorical features, not too many
                make_contextual_policy(name, v)
        except PolicyError as exc:
            pairs = exc.errors or [("", exc.message)]
            raise ValueError("; ".join(f"params.{loc}: {msg}" if loc else f"params: {msg}"
                                       for loc, msg in pairs)) from None
        # Store only what the caller set: the policy's own defaults apply to the rest.
        return parsed.model_dump(exclude_unset=True)


class CupedSpec(StrictModel):
    """CUPED (``sequential.cuped``, ``unit: user`` only): the IPW test runs on
    Y' = Y - theta X, X = the user's behaviour in the pre-period before the experiment started
    (see :mod:`armlab.services.cuped_evidence`)."""

    pre_period_days: int = Field(
        28, ge=1, le=365,
        description="The pre-period: the days before the experiment's start whose impressions "
        "(of any experiment) give each user's covariate X.")
    covariate: Literal["reward", "feedback", "impressions"] = Field(
        "reward",
        description="X per user over the pre-period: reward = the sum of the impressions' "
        "rewards (clicks in A/B experiments; interleaved impressions carry none); feedback = "
        "the feedback events applied to them (any kind, interleaved clicks included); "
        "impressions = how many were served.")


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
    cuped: CupedSpec | None = Field(
        None,
        description="Variance reduction with a pre-period covariate (unit user only; off when "
        "null): the test and its confidence sequence run on Y - theta X, X each user's "
        "behaviour before the experiment started. Off by default because it needs users seen "
        "before the start; with none it changes nothing.",
    )


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

    @field_validator("policy")
    @classmethod
    def _check_policy(cls, policy: PolicySpec, info: ValidationInfo) -> PolicySpec:
        """Contextual policies: A/B design only; segment_thompson needs binary rewards."""
        if policy.name not in CONTEXTUAL_POLICY_NAMES:
            return policy
        if info.data.get("design") == "interleaving":
            raise ValueError(f"name: {policy.name} allocates arms per request context; an "
                             "interleaving experiment merges every ranker into one list "
                             "(use design: ab)")
        reward = info.data.get("reward")
        if (policy.name == "segment_thompson" and isinstance(reward, RewardSpec)
                and reward.kind != "binary"):
            raise ValueError("name: segment_thompson has Beta-Bernoulli posteriors: it needs "
                             "reward.kind binary (linear_thompson takes continuous rewards)")
        return policy

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

    @field_validator("sequential")
    @classmethod
    def _check_sequential(cls, seq: SequentialSpec, info: ValidationInfo) -> SequentialSpec:
        """CUPED needs one term per user: its covariate is a user's pre-period behaviour."""
        if seq.cuped is not None and info.data.get("unit") != "user":
            raise ValueError("cuped: needs unit: user (the covariate is each user's behaviour "
                             "before the experiment; a request has none)")
        if seq.cuped is not None and info.data.get("design") == "interleaving":
            raise ValueError("cuped: adjusts the A/B test's per-user outcome; an interleaving "
                             "experiment compares rankers within each list (use design: ab)")
        return seq

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


