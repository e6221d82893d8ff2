"""Experiment registry routes: register, list, show, start/stop/ship, results, audit.

Thin by design: parse the body, call one use case of
:class:`armlab.services.experiments.ExperimentUseCases` (it owns the transaction and its side
effects) and render its record. Errors are armlab.errors raised by the service and mapped to
HTTP in armlab.entrypoints.api.errors.
"""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Body, Depends, Path, Query

from armlab.bootstrap import Services
from armlab.core.specs import ExperimentSpec
from armlab.core.status import ExperimentStatus
from armlab.entrypoints.api.auth import Principal
from armlab.entrypoints.api.deps import get_services, require_role
from armlab.entrypoints.api.schemas import (
    AUTHED,
    AuditList,
    ExperimentList,
    ExperimentOut,
    ResultsOut,
    ShipRequest,
    StartRequest,
    StopRequest,
    error_responses,
)
from armlab.services.experiments import ExperimentDetails

router = APIRouter(prefix="/v1/experiments", tags=["experiments"])

_LIST = error_responses(*AUTHED)
_CREATE = error_responses(*AUTHED, 409)
_READ = error_responses(*AUTHED, 404)
_CHANGE = error_responses(*AUTHED, 404, 409)

KeyPath = Path(..., description="Experiment key.", max_length=64)


def experiment_out(rec: ExperimentDetails, *, show_salt: bool = True) -> ExperimentOut:
    """The API view of ``rec``. ``salt`` only for admins: with it, anyone could compute which
    arm each user is (or will be) stuck to."""
    return ExperimentOut.model_validate(asdict(rec if show_salt else rec.without_salt()))


@router.post("", status_code=201, response_model=ExperimentOut, responses=_CREATE)
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
    return experiment_out(services.experiments.create(spec, actor=principal.name))


@router.get("", response_model=ExperimentList, responses=_LIST)
def list_experiments(
    status: ExperimentStatus | None = Query(
        None, description="Only experiments in this status."
    ),
    services: Services = Depends(get_services),
    _: Principal = Depends(require_role("reader")),
) -> ExperimentList:
    """List experiments, newest first. Needs role ``reader``."""
    return ExperimentList.model_validate(
        {"experiments": [asdict(r) for r in services.experiments.list(status)]})


@router.get("/{key}", response_model=ExperimentOut, responses=_READ)
def get_experiment(
    key: str = KeyPath,
    services: Services = Depends(get_services),
    principal: Principal = Depends(require_role("reader")),
) -> ExperimentOut:
    """One experiment: settings, arms with their variants, status and version (``salt``
    only for admin tokens)."""
    return experiment_out(services.experiments.get(key), show_salt=principal.role == "admin")


@router.post("/{key}/start", response_model=ExperimentOut, responses=_CHANGE)
def start_experiment(
    key: str = KeyPath,
    body: StartRequest | None = Body(None),
    services: Services = Depends(get_services),
    principal: Principal = Depends(require_role("admin")),
) -> ExperimentOut:
    """draft -> running. Traffic starts flowing once the allocator has a snapshot."""
    return experiment_out(services.experiments.start(
        key, actor=principal.name, reason=body.reason if body else ""))


@router.post("/{key}/stop", response_model=ExperimentOut, responses=_CHANGE)
def stop_experiment(
    body: StopRequest,
    key: str = KeyPath,
    services: Services = Depends(get_services),
    principal: Principal = Depends(require_role("admin")),
) -> ExperimentOut:
    """running -> stopped: allocation ends and the control arm serves from now on."""
    return experiment_out(services.experiments.stop(key, actor=principal.name,
                                                     reason=body.reason))


@router.post("/{key}/ship", response_model=ExperimentOut, responses=_CHANGE)
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
    return experiment_out(services.experiments.ship(
        key, arm=body.arm, actor=principal.name, reason=body.reason, force=body.force))


@router.get("/{key}/results", response_model=ResultsOut, responses=_READ,
            response_model_exclude_unset=True)
def experiment_results(
    key: str = KeyPath,
    services: Services = Depends(get_services),
    _: Principal = Depends(require_role("reader")),
) -> ResultsOut:
    """Per-arm impressions, reward sums, means and current traffic weights."""
    return ResultsOut.model_validate(services.experiments.results(key))


@router.get("/{key}/audit", response_model=AuditList, responses=_READ)
def experiment_audit(
    key: str = KeyPath,
    services: Services = Depends(get_services),
    _: Principal = Depends(require_role("reader")),
) -> AuditList:
    """The audit trail: who changed what, when, why, before/after and the evidence."""
    return AuditList.model_validate(
        {"key": key, "entries": [asdict(r) for r in services.experiments.audit(key)]})
