"""Experiment registry routes: register, list, show, start/stop/ship, results, audit.

Thin by design: parse the body, call :mod:`armlab.services.registry` inside one unit of work,
commit, and return a response schema. Errors are armlab.errors raised by the service and
mapped to HTTP in armlab.entrypoints.api.errors.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Body, Depends, Path, Query

from armlab.adapters.db.models import AuditLog, Experiment
from armlab.adapters.db.uow import UnitOfWork
from armlab.bootstrap import Services
from armlab.core.specs import ExperimentSpec, RewardSpec
from armlab.entrypoints.api.auth import Principal
from armlab.entrypoints.api.deps import get_services, get_uow, require_role
from armlab.entrypoints.api.schemas import (
    ArmOut,
    AuditEntry,
    AuditList,
    ExperimentList,
    ExperimentOut,
    ExperimentSummary,
    ResultsOut,
    ShipRequest,
    StartRequest,
    StopRequest,
)
from armlab.services import registry
from armlab.services.results import build_results

router = APIRouter(prefix="/v1/experiments", tags=["experiments"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid bearer token"},
    403: {"description": "The token's role does not allow this"},
    404: {"description": "Unknown experiment or arm"},
    409: {"description": "Illegal transition, concurrent modification or existing key"},
    422: {"description": "Invalid input; the body names the field"},
}

KeyPath = Path(..., description="Experiment key.", max_length=64)


def experiment_out(exp: Experiment, *, show_salt: bool = True) -> ExperimentOut:
    """The API view of ``exp``. ``salt`` only for admins: with it, anyone could compute which
    arm each user is (or will be) stuck to."""
    return ExperimentOut(
        key=exp.key,
        name=exp.name,
        description=exp.description,
        status=exp.status,
        unit=exp.unit,
        reward=RewardSpec(kind=exp.reward_kind, metric=exp.reward_metric),
        policy={"name": exp.policy_name, "params": dict(exp.policy_params or {})},
        exploration_floor=exp.exploration_floor,
        burn_in=exp.burn_in,
        attribution_window_s=exp.attribution_window_s,
        control_arm_key=exp.control_arm_key,
        sequential=dict(exp.sequential or {}),
        salt=exp.salt if show_salt else None,
        shipped_arm=exp.shipped_arm_key,
        version=exp.version,
        created_at=exp.created_at,
        updated_at=exp.updated_at,
        started_at=exp.started_at,
        ended_at=exp.ended_at,
        arms=[
            ArmOut(key=a.key, control=a.is_control, position=a.position, variant=dict(a.variant))
            for a in exp.arms
        ],
        guardrails=list(exp.guardrails or []),
        rolled_back=dict(exp.rolled_back or {}),
    )


def experiment_summary(exp: Experiment) -> ExperimentSummary:
    return ExperimentSummary(
        key=exp.key,
        name=exp.name,
        status=exp.status,
        unit=exp.unit,
        policy=exp.policy_name,
        control_arm_key=exp.control_arm_key,
        shipped_arm=exp.shipped_arm_key,
        arms=[a.key for a in exp.arms],
        version=exp.version,
        created_at=exp.created_at,
        started_at=exp.started_at,
        ended_at=exp.ended_at,
    )


def audit_entry(row: AuditLog) -> AuditEntry:
    return AuditEntry(
        id=row.id,
        at=row.at,
        actor=row.actor,
        action=row.action,
        reason=row.reason,
        before=dict(row.before or {}),
        after=dict(row.after or {}),
        evidence=dict(row.evidence or {}),
    )


@router.post("", status_code=201, response_model=ExperimentOut, responses=_ERRORS)
def create_experiment(
    spec: ExperimentSpec,
    services: Services = Depends(get_services),
    principal: Principal = Depends(require_role("admin")),
) -> ExperimentOut:
    """Register an experiment (status ``draft``). Needs role ``admin``.

    Validation: at least two arms, exactly one control, unique arm keys, exploration_floor
    below 1/K, policy parameters in range, every variant valid. Each violation is a 422 that
    names the field. The salt is random when omitted.
    """
    with services.uow() as uow:
        exp = registry.create_experiment(uow, spec=spec, actor=principal.name)
        out = experiment_out(exp)
        uow.commit()
    _forget_cached(services, exp.key)
    return out


@router.get("", response_model=ExperimentList, responses=_ERRORS)
def list_experiments(
    status: Literal["draft", "running", "stopped", "shipped"] | None = Query(
        None, description="Only experiments in this status."
    ),
    uow: UnitOfWork = Depends(get_uow),
    _: Principal = Depends(require_role("reader")),
) -> ExperimentList:
    """List experiments, newest first. Needs role ``reader``."""
    exps = registry.list_experiments(uow, status=status)
    return ExperimentList(experiments=[experiment_summary(e) for e in exps])


@router.get("/{key}", response_model=ExperimentOut, responses=_ERRORS)
def get_experiment(
    key: str = KeyPath,
    uow: UnitOfWork = Depends(get_uow),
    principal: Principal = Depends(require_role("reader")),
) -> ExperimentOut:
    """One experiment: settings, arms with their variants, status and version (``salt``
    only for admin tokens)."""
    return experiment_out(registry.get_experiment(uow, key=key),
                          show_salt=principal.role == "admin")


def _forget_cached(services: Services, key: str) -> None:
    """The state changed: this process's assignment cache must not serve the old one."""
    if services.has("assigner"):
        services.assigner.invalidate(key)


@router.post("/{key}/start", response_model=ExperimentOut, responses=_ERRORS)
def start_experiment(
    key: str = KeyPath,
    body: StartRequest | None = Body(None),
    services: Services = Depends(get_services),
    principal: Principal = Depends(require_role("admin")),
) -> ExperimentOut:
    """draft -> running. Traffic starts flowing once the allocator has a snapshot."""
    with services.uow() as uow:
        exp = registry.start_experiment(
            uow, key=key, actor=principal.name, reason=body.reason if body else ""
        )
        out = experiment_out(exp)
        uow.commit()
    _forget_cached(services, key)
    return out


@router.post("/{key}/stop", response_model=ExperimentOut, responses=_ERRORS)
def stop_experiment(
    body: StopRequest,
    key: str = KeyPath,
    services: Services = Depends(get_services),
    principal: Principal = Depends(require_role("admin")),
) -> ExperimentOut:
    """running -> stopped: allocation ends and the control arm serves from now on."""
    with services.uow() as uow:
        exp = registry.stop_experiment(uow, key=key, actor=principal.name, reason=body.reason)
        out = experiment_out(exp)
        uow.commit()
    _forget_cached(services, key)
    return out


@router.post("/{key}/ship", response_model=ExperimentOut, responses=_ERRORS)
def ship_experiment(
    body: ShipRequest,
    key: str = KeyPath,
    services: Services = Depends(get_services),
    principal: Principal = Depends(require_role("admin")),
) -> ExperimentOut:
    """running|stopped -> shipped: the named arm gets all traffic (propensity 1).

    ``force`` ships even when the sequential evidence does not support the arm; the audit
    row records it.
    """
    with services.uow() as uow:
        exp = registry.ship_experiment(
            uow, key=key, arm=body.arm, actor=principal.name, reason=body.reason,
            force=body.force,
        )
        out = experiment_out(exp)
        uow.commit()
    _forget_cached(services, key)
    return out


@router.get("/{key}/results", response_model=ResultsOut, responses=_ERRORS)
def experiment_results(
    key: str = KeyPath,
    uow: UnitOfWork = Depends(get_uow),
    _: Principal = Depends(require_role("reader")),
) -> ResultsOut:
    """Per-arm impressions, reward sums, means and current traffic weights."""
    exp = registry.get_experiment(uow, key=key)
    return ResultsOut.model_validate(build_results(uow, exp))


@router.get("/{key}/audit", response_model=AuditList, responses=_ERRORS)
def experiment_audit(
    key: str = KeyPath,
    uow: UnitOfWork = Depends(get_uow),
    _: Principal = Depends(require_role("reader")),
) -> AuditList:
    """The audit trail: who changed what, when, why, before/after and the evidence."""
    rows = registry.list_audit(uow, key=key)
    return AuditList(key=key, entries=[audit_entry(r) for r in rows])
