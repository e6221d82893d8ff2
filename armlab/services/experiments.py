"""The experiment use cases the API, the dashboard and the CLI call: each opens its own unit
of work, commits what it changed, tells the rest of the process (``on_change``: the
assignment cache, wired in :mod:`armlab.bootstrap`) and returns a typed record.

The domain steps inside one transaction (the state machine, the audit row, the ship guard)
are :mod:`armlab.services.registry`'s; entry points call :class:`ExperimentUseCases` and
never a unit of work or an ORM class.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from armlab.core.records import ExperimentRecord
from armlab.core.specs import ExperimentSpec
from armlab.services import registry
from armlab.services.ports import UnitOfWorkPort
from armlab.services.results import build_results


@dataclass(frozen=True, slots=True)
class ArmDetails:
    key: str
    control: bool
    position: int
    variant: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ExperimentDetails:
    """One experiment as the use cases return it (the API's ``ExperimentOut`` fields)."""

    key: str
    name: str
    description: str
    status: str
    unit: str
    reward: dict[str, str]
    policy: dict[str, Any]
    exploration_floor: float
    burn_in: int
    attribution_window_s: int
    control_arm_key: str
    sequential: dict[str, Any]
    salt: str | None
    shipped_arm: str | None
    version: int
    created_at: datetime | None
    updated_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    arms: list[ArmDetails] = field(default_factory=list)
    guardrails: list[dict[str, Any]] = field(default_factory=list)
    rolled_back: dict[str, Any] = field(default_factory=dict)
    design: str = "ab"
    interleaving: dict[str, Any] | None = None

    def without_salt(self) -> ExperimentDetails:
        """The record without its salt (readers: with it, anyone could compute which arm
        each user is, or will be, stuck to)."""
        return replace(self, salt=None)


@dataclass(frozen=True, slots=True)
class ExperimentSummaryRecord:
    key: str
    name: str
    status: str
    unit: str
    policy: str
    control_arm_key: str
    shipped_arm: str | None
    arms: list[str]
    version: int
    created_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    at: datetime | None
    actor: str
    action: str
    reason: str
    before: dict[str, Any]
    after: dict[str, Any]
    evidence: dict[str, Any]


def experiment_details(exp: ExperimentRecord) -> ExperimentDetails:
    """A stored experiment as the use cases return it (with its salt)."""
    return ExperimentDetails(
        key=exp.key, name=exp.name, description=exp.description, status=exp.status,
        unit=exp.unit, reward={"kind": exp.reward_kind, "metric": exp.reward_metric},
        policy={"name": exp.policy_name, "params": dict(exp.policy_params or {})},
        exploration_floor=exp.exploration_floor, burn_in=exp.burn_in,
        attribution_window_s=exp.attribution_window_s, control_arm_key=exp.control_arm_key,
        sequential=dict(exp.sequential or {}), salt=exp.salt,
        shipped_arm=exp.shipped_arm_key, version=exp.version, created_at=exp.created_at,
        updated_at=exp.updated_at, started_at=exp.started_at, ended_at=exp.ended_at,
        arms=[ArmDetails(key=a.key, control=a.is_control, position=a.position,
                         variant=dict(a.variant)) for a in exp.arms],
        guardrails=list(exp.guardrails or []), rolled_back=dict(exp.rolled_back or {}),
        design=str(exp.design or "ab"),
        interleaving=dict(exp.interleaving) if exp.interleaving else None,
    )


def summary_record(exp: Any) -> ExperimentSummaryRecord:
    return ExperimentSummaryRecord(
        key=exp.key, name=exp.name, status=exp.status, unit=exp.unit, policy=exp.policy_name,
        control_arm_key=exp.control_arm_key, shipped_arm=exp.shipped_arm_key,
        arms=[a.key for a in exp.arms], version=exp.version, created_at=exp.created_at,
        started_at=exp.started_at, ended_at=exp.ended_at,
    )


def audit_record(row: Any) -> AuditRecord:
    return AuditRecord(id=row.id, at=row.at, actor=row.actor, action=row.action,
                       reason=row.reason, before=dict(row.before or {}),
                       after=dict(row.after or {}), evidence=dict(row.evidence or {}))


class ExperimentUseCases:
    """Register, read and move experiments through their life cycle (see the module doc).

    ``uow_factory`` opens a unit of work (the database in production, memory in tests);
    ``on_change(key)`` runs after each committed change."""

    def __init__(self, uow_factory: Callable[[], Any],
                 on_change: Callable[[str], None] | None = None) -> None:
        self._uow = uow_factory
        self._on_change = on_change or (lambda key: None)

    def _write(self, key: str, step: Callable[[UnitOfWorkPort], Any]) -> ExperimentDetails:
        with self._uow() as uow:
            record = experiment_details(step(uow))
            uow.commit()
        self._on_change(key)
        return record

    # -- writes ------------------------------------------------------------------------------
    def create(self, spec: ExperimentSpec, *, actor: str) -> ExperimentDetails:
        """Register ``spec`` as a draft (one ``create`` audit row)."""
        return self._write(spec.key, lambda uow: registry.create_experiment(
            uow, spec=spec, actor=actor))

    def start(self, key: str, *, actor: str, reason: str = "") -> ExperimentDetails:
        """draft -> running."""
        return self._write(key, lambda uow: registry.start_experiment(
            uow, key=key, actor=actor, reason=reason))

    def stop(self, key: str, *, actor: str, reason: str,
             evidence: dict[str, Any] | None = None) -> ExperimentDetails:
        """running -> stopped: the control serves from now on (``evidence`` goes into the
        audit row)."""
        return self._write(key, lambda uow: registry.stop_experiment(
            uow, key=key, actor=actor, reason=reason, evidence=evidence))

    def ship(self, key: str, *, arm: str, actor: str, reason: str,
             force: bool = False) -> ExperimentDetails:
        """running|stopped -> shipped, guarded by the sequential evidence unless ``force``."""
        return self._write(key, lambda uow: registry.ship_experiment(
            uow, key=key, arm=arm, actor=actor, reason=reason, force=force))

    # -- reads -------------------------------------------------------------------------------
    def unique_key(self, base: str) -> str:
        """``base`` or ``base-2``, ``base-3``... whichever is not registered yet."""
        with self._uow() as uow:
            return registry.unique_key(uow, base)

    def get(self, key: str) -> ExperimentDetails:
        with self._uow() as uow:
            return experiment_details(registry.get_experiment(uow, key=key))

    def list(self, status: str | None = None) -> list[ExperimentSummaryRecord]:
        with self._uow() as uow:
            return [summary_record(e) for e in registry.list_experiments(uow, status=status)]

    def audit(self, key: str) -> builtins.list[AuditRecord]:
        with self._uow() as uow:
            return [audit_record(r) for r in registry.list_audit(uow, key=key)]

    def results(self, key: str) -> dict[str, Any]:
        """Per-arm evidence, weights and the shown sequential evaluation."""
        with self._uow() as uow:
            return build_results(uow, registry.get_experiment(uow, key=key))
