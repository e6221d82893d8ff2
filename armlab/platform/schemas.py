"""API schemas (pydantic v2): the registration body and the response models.

These live apart from the ORM classes in :mod:`armlab.platform.models`. Every validation rule
of a registration is here, so a bad spec is a 422 that names the field before any database
work happens. Cross-field rules are written as field validators on the *later* field (pydantic
validates fields in declaration order and ``info.data`` holds the earlier ones), which keeps
the error location on the field at fault (``exploration_floor``, ``arms``...) instead of on
the whole body.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from armlab.errors import ValidationFailed

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

PolicyName = Literal["thompson", "epsilon_greedy", "uniform", "top_two_thompson"]


class _Strict(BaseModel):
    """Unknown fields are errors: a typo such as ``aplha`` must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


# --- policy parameters, one model per policy ------------------------------------------------
# Names and ranges mirror armlab.policies (ThompsonSettings, EpsilonGreedySettings,
# UniformSettings); PolicySpec also asks armlab.policies.make_policy, so the allocator can
# always build what the registry accepted.


class _ParamsBase(_Strict):
    pass


class ThompsonParams(_ParamsBase):
    """Thompson sampling (Thompson 1933; Chapelle & Li 2011).

    Beta(prior_alpha, prior_beta) for binary rewards; Normal-Inverse-Gamma(prior_mean,
    prior_kappa, prior_shape, prior_rate) for continuous ones. P(best) by quadrature on
    ``grid`` nodes or by Monte Carlo with ``n_draws`` draws.
    """

    prior_alpha: float = Field(1.0, gt=0)
    prior_beta: float = Field(1.0, gt=0)
    prior_mean: float = Field(0.0, allow_inf_nan=False)
    prior_kappa: float = Field(1.0, gt=0)
    prior_shape: float = Field(1.0, gt=0)
    prior_rate: float = Field(1.0, gt=0)
    method: Literal["quadrature", "monte_carlo"] = "quadrature"
    n_draws: int = Field(20_000, ge=100, le=10_000_000)
    grid: int = Field(257, ge=17, le=10_001)


class TopTwoThompsonParams(ThompsonParams):
    """Top-two Thompson sampling (Russo 2016): top_two_beta = probability of the leader."""

    top_two_beta: float = Field(0.5, gt=0, lt=1)


class EpsilonGreedyParams(_ParamsBase):
    """Fixed epsilon, or a decaying schedule with constant ``decay_c`` (see armlab.policies)."""

    epsilon: float = Field(0.1, ge=0, le=1)
    schedule: Literal["fixed", "decay"] = "fixed"
    decay_c: float = Field(100.0, gt=0)


class UniformParams(_ParamsBase):
    """The classic A/B(/n) split: no parameters."""


POLICY_PARAM_MODELS: dict[str, type[_ParamsBase]] = {
    "thompson": ThompsonParams,
    "top_two_thompson": TopTwoThompsonParams,
    "epsilon_greedy": EpsilonGreedyParams,
    "uniform": UniformParams,
}


def _flatten_errors(exc: ValidationError, prefix: str = "") -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e.get("loc", ()))
        name = f"{prefix}{loc}" if loc else prefix.rstrip(".")
        parts.append(f"{name}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


# --- the registration body -------------------------------------------------------------------


class RewardSpec(_Strict):
    kind: Literal["binary", "continuous"] = "binary"
    metric: str = Field(
        "click", min_length=1, max_length=64,
        description="Feedback kind that counts as reward (click, conversion, rating, dwell...).",
    )


class PolicySpec(_Strict):
    name: PolicyName = "thompson"
    params: dict[str, Any] = Field(
        default_factory=dict,
        validate_default=True,
        description="Policy parameters (omitted ones take the policy's defaults). "
        "thompson: prior_alpha, prior_beta (binary), prior_mean, prior_kappa, prior_shape, "
        "prior_rate (continuous), method quadrature|monte_carlo, n_draws, grid; "
        "top_two_thompson: + top_two_beta in (0,1); epsilon_greedy: epsilon in [0,1], "
        "schedule fixed|decay, decay_c > 0; uniform: none.",
    )

    @field_validator("params")
    @classmethod
    def _check_params(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        name = info.data.get("name")
        model = POLICY_PARAM_MODELS.get(name) if isinstance(name, str) else None
        if model is None:  # the name itself failed; that error is reported on policy.name
            return v
        try:
            parsed = model.model_validate(v)
        except ValidationError as exc:
            raise ValueError(_flatten_errors(exc, "params.")) from None
        # Store only what the caller set: the policy's own defaults apply to the rest.
        params = parsed.model_dump(exclude_unset=True)
        _check_with_policies(str(name), params)
        return params


def _check_with_policies(name: str, params: dict[str, Any]) -> None:
    """Ask armlab.policies to build the policy, so registry and allocator never disagree."""
    try:
        from armlab.policies import make_policy
    except ModuleNotFoundError as exc:  # policies area absent: the models above suffice
        if exc.name not in ("armlab.policies",):
            raise
        return
    from armlab.errors import PolicyError

    try:
        make_policy(name, params)
    except PolicyError as exc:
        raise ValueError(f"params: {exc.message}") from None


class SequentialSpec(_Strict):
    """mSPRT settings (Johari, Koomen, Pekelis & Walsh, 'Always Valid Inference', 2022)."""

    alpha: float = Field(0.05, gt=0, lt=1, description="Type-I error level.")
    tau2: float | None = Field(
        None, gt=0, description="Mixing variance tau^2; None = chosen from the data."
    )
    theta0: float = Field(0.0, description="Null difference of means.")
    min_samples: int = Field(100, ge=0, description="Per-arm samples before any decision.")
    max_n: int | None = Field(None, gt=0, description="Optional horizon (total impressions).")
    auto_stop: bool = Field(False, description="Stop the experiment when the test decides.")
    correction: Literal["holm", "bonferroni"] = "holm"


class ArmSpec(_Strict):
    key: Key
    control: bool = False
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


def validate_variant(v: dict[str, Any]) -> dict[str, Any]:
    """Validate one arm's variant with the scoring area's rules (returns it normalised).

    Imported lazily so importing the registry never imports the scoring package.
    """
    from armlab.scoring.variants import validate_variant as scoring_validate

    return scoring_validate(v)


class ExperimentSpec(_Strict):
    """The registration body of ``POST /v1/experiments``."""

    model_config = ConfigDict(
        extra="forbid",
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
    burn_in: int = Field(0, ge=0, description="Impressions served uniformly before adapting.")
    attribution_window_s: int = Field(
        3600, gt=0, le=90 * 86_400, description="Feedback later than this is not attributed."
    )
    sequential: SequentialSpec = Field(default_factory=lambda: SequentialSpec.model_validate({}))
    salt: str | None = Field(
        None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
        description="Hash salt for sticky assignment; random hex when omitted.",
    )

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

    @property
    def control_arm_key(self) -> str:
        return next(a.key for a in self.arms if a.control)


# --- request bodies of the lifecycle routes --------------------------------------------------


class StartRequest(_Strict):
    reason: str = Field("", max_length=2000)


class StopRequest(_Strict):
    reason: str = Field(..., min_length=1, max_length=2000, description="Why it stops.")


class ShipRequest(_Strict):
    arm: Key = Field(..., description="Key of the arm that gets all traffic from now on.")
    reason: str = Field(..., min_length=1, max_length=2000)
    force: bool = Field(
        False, description="Ship even when the sequential evidence does not support it."
    )


# --- responses --------------------------------------------------------------------------------


def _as_utc(v: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything armlab stores is UTC."""
    if v is not None and v.tzinfo is None:
        return v.replace(tzinfo=UTC)
    return v


UtcDatetime = Annotated[datetime | None, AfterValidator(_as_utc)]


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
    salt: str
    shipped_arm: str | None
    version: int
    created_at: UtcDatetime
    updated_at: UtcDatetime
    started_at: UtcDatetime
    ended_at: UtcDatetime
    arms: list[ArmOut]


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
    """Per-arm evidence. Other areas may add keys (``sequential`` is filled by armlab.stats)."""

    model_config = ConfigDict(extra="allow")

    key: str
    status: str
    shipped_arm: str | None
    control_arm: str
    arms: list[ArmResult]
    snapshot: dict[str, Any] | None
    sequential: Any = None


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
