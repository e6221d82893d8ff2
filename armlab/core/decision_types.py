"""The values of the sequential decision (:mod:`armlab.core.decisions`): what goes in
(:class:`Design`, each arm's :class:`PriorLook`), what one look shares
(:class:`LookPlan`, :class:`HorizonPlan`) and what comes out (:class:`ArmLook` per treatment
arm with its :class:`Decision`, the whole :class:`Evaluation`), with their stored and served
forms (``as_dict`` / ``from_dict``).

Re-exported by :mod:`armlab.core.decisions`, whose names callers use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum
from typing import Any

from armlab.core.specs import SequentialSpec
from armlab.core.stats.msprt import HorizonBoundary


class Decision(StrEnum):
    """A treatment arm's decision against the control (each member is its string)."""

    CONTINUE = "continue"
    TREATMENT_BETTER = "treatment_better"
    TREATMENT_WORSE = "treatment_worse"
    FUTILE = "futile"
    INCONCLUSIVE = "inconclusive"


TERMINAL = (Decision.TREATMENT_BETTER, Decision.TREATMENT_WORSE, Decision.FUTILE,
            Decision.INCONCLUSIVE)


@dataclass(frozen=True)
class Design:
    """What the evaluation needs to know about an experiment."""

    arm_keys: tuple[str, ...]
    control: str
    binary: bool
    policy_name: str
    exploration_floor: float
    sequential: SequentialSpec
    #: the unit of analysis (``request`` or ``user``): what the evidence counts, ``max_n`` too
    unit: str = "request"

    @property
    def units(self) -> str:
        """The plural of the unit, for reasons and labels."""
        return "users" if self.unit == "user" else "impressions"

    @property
    def treatments(self) -> list[str]:
        return [k for k in self.arm_keys if k != self.control]


@dataclass(frozen=True)
class PriorLook:
    """What an arm's last stored evaluation carries into the next one."""

    p_value: float | None
    ci_low: float | None
    ci_high: float | None
    method: str | None
    tau2: float | None
    looks: int
    srm_p: float | None = None
    alternative: str = "two-sided"
    decision: str | None = None
    boundary: str = "mixture"


#: An arm's fields that exist only once the test has looked at it (absent from ``as_dict``
#: before; ``p_now`` is also set on the placeholder shown before the first recorded look).
_LOOK_ONLY = frozenset({"p_now", "log_lambda", "cs_empty"})


@dataclass(frozen=True)
class ArmLook:
    """One treatment arm's look against the control.

    Before the test has looked at the arm (no tau² yet, too few samples, a degenerate look)
    it is at ``continue`` with p = 1, no estimate and no confidence sequence, and ``p_now``,
    ``log_lambda`` and ``cs_empty`` are None (and absent from :meth:`as_dict`). Unbounded
    sides of the confidence sequence are None (JSON has no infinity)."""

    arm: str
    control: str
    n_control: float
    n_treatment: float
    mean_control: float | None = None
    mean_treatment: float | None = None
    decision: Decision = Decision.CONTINUE
    reason: str = ""
    estimate: float | None = None
    p_value: float = 1.0
    p_adjusted: float | None = 1.0
    p_now: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    log_lambda: float | None = None
    valid: bool = False
    looks: int = 0
    cs_empty: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        """The stored and served entry (key order and presence as it has always been)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if not (f.name in _LOOK_ONLY and getattr(self, f.name) is None)}
        out["decision"] = self.decision.value
        return out

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> ArmLook:
        """An entry as stored or served. Keys that are not an arm's look (``guardrails``,
        ``rolled_back``) are ignored; missing ones (rows written before whole evaluations
        were stored) take the defaults of an arm not looked at."""
        names = {f.name for f in fields(cls)}
        known = {k: v for k, v in entry.items() if k in names}
        known["decision"] = Decision(known.get("decision") or Decision.CONTINUE)
        known.setdefault("control", "")
        known.setdefault("n_control", 0.0)
        known.setdefault("n_treatment", 0.0)
        return cls(**known)


@dataclass(frozen=True)
class HorizonPlan:
    """The horizon boundary's plan (``sequential.boundary: horizon``): the planned
    impressions, the planned information on the sum scale and the share of alpha it spends."""

    impressions: float
    info: float
    share: float

    def as_dict(self) -> dict[str, float]:
        return {"impressions": self.impressions, "info": self.info, "share": self.share}


@dataclass(frozen=True)
class Evaluation:
    """One look of the always-valid test over every treatment arm (see the module doc).

    ``srm`` is the sample-ratio-mismatch check as a dict (:meth:`SrmResult.as_dict`);
    ``stop`` is True when every arm is decided and the SRM check found no mismatch;
    ``tau2_source``: experiment / frozen / horizon (None while tau² is unknown)."""

    method: str
    alpha: float
    cs_alpha: float
    tau2: float | None
    tau2_source: str | None
    theta0: float
    correction: str
    min_samples: int
    min_events: int
    alternative: str
    boundary: str
    horizon_plan: HorizonPlan | None
    max_n: int | None
    impressions: float
    control: str
    arms: tuple[ArmLook, ...]
    srm: Mapping[str, Any]
    stop: bool
    stop_reason: str
    warnings: tuple[str, ...]
    evaluated_at: datetime | None

    def arm(self, key: str) -> ArmLook | None:
        """The look of treatment arm ``key`` (None for the control or an unknown arm)."""
        return next((a for a in self.arms if a.arm == key), None)

    def as_dict(self) -> dict[str, Any]:
        """The stored and served evaluation (fresh containers: callers may extend it)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(
            horizon_plan=None if self.horizon_plan is None else self.horizon_plan.as_dict(),
            arms=[a.as_dict() for a in self.arms], srm=dict(self.srm),
            warnings=list(self.warnings),
            evaluated_at=None if self.evaluated_at is None else self.evaluated_at.isoformat())
        return out

    @classmethod
    def from_dict(cls, ev: Mapping[str, Any]) -> Evaluation:
        """An evaluation as stored or served. Keys the services add (guardrails,
        recommendation, unit, ...) are ignored; missing ones (rows written before whole
        evaluations were stored, an ``{"error": ...}`` placeholder) take the defaults of
        :class:`SequentialSpec` and of an evaluation with no arms."""
        spec = SequentialSpec()
        plan, at = ev.get("horizon_plan"), ev.get("evaluated_at")
        return cls(
            method=ev.get("method") or "", alpha=ev.get("alpha", spec.alpha),
            cs_alpha=ev.get("cs_alpha", spec.alpha), tau2=ev.get("tau2"),
            tau2_source=ev.get("tau2_source"), theta0=ev.get("theta0", spec.theta0),
            correction=ev.get("correction", spec.correction),
            min_samples=ev.get("min_samples", spec.min_samples),
            min_events=ev.get("min_events", spec.min_events),
            alternative=ev.get("alternative", spec.alternative),
            boundary=ev.get("boundary", spec.boundary),
            horizon_plan=HorizonPlan(**plan) if isinstance(plan, Mapping) else None,
            max_n=ev.get("max_n"), impressions=ev.get("impressions", 0.0),
            control=ev.get("control") or "",
            arms=tuple(ArmLook.from_dict(a) for a in ev.get("arms") or ()),
            srm=dict(ev.get("srm") or {}), stop=bool(ev.get("stop", False)),
            stop_reason=ev.get("stop_reason") or "", warnings=tuple(ev.get("warnings") or ()),
            evaluated_at=datetime.fromisoformat(at) if isinstance(at, str) else None,
        )


@dataclass(frozen=True)
class LookPlan:
    """What every arm's test shares in one look: the method, tau² (None until it is known)
    and where it came from, the planned horizon (impressions), the horizon boundary (with
    ``boundary: horizon``) and the per-arm alpha of the confidence sequences."""

    method: str
    tau2: float | None
    tau2_source: str | None
    horizon: float
    boundary: HorizonBoundary | None
    cs_alpha: float

    @property
    def horizon_plan(self) -> HorizonPlan | None:
        if self.boundary is None:
            return None
        return HorizonPlan(self.horizon, self.boundary.info, self.boundary.share)
