"""Registry use cases: register experiments and move them through their life cycle.

Every function is keyword-only after the unit of work, works inside the caller's unit of work
(:class:`~armlab.services.ports.UnitOfWorkPort`: the database in production, memory in tests;
it flushes, it never commits: the caller decides where the transaction ends), raises
:mod:`armlab.errors`, and writes one audit row per change.

State machine::

    draft --start--> running --stop--> stopped
                        |                 |
                        +------ship-------+--> shipped

Anything else is :class:`~armlab.errors.IllegalTransition` (HTTP 409) and changes nothing.
Concurrent writers are serialised by optimistic locking on ``experiments.version``
(SQLAlchemy ``version_id_col``): every UPDATE carries ``WHERE version = <version read>``, so of
two requests that both read ``running`` only the first UPDATE matches a row; the second raises
StaleDataError, which the unit of work turns into ConcurrentModification (409) and rolls back
together with the loser's audit row.

Stop and ship also lock the experiment's row (``SELECT ... FOR NO KEY UPDATE`` on PostgreSQL)
before they read its state, as the allocator does before each look: the ship guard of a running
experiment reads the last recorded look of the sequential test and records the next one, and two
looks that both read the same previous state would record one computed from the older state
after the newer one. With the lock a second stop/ship waits for the first and then sees its
result (IllegalTransition for a terminal status); an object loaded earlier in the same session
keeps its stale version and the version check still refuses its UPDATE.
"""

from __future__ import annotations

import json
import math
import secrets
from datetime import datetime
from typing import Any

from armlab.core.clock import utcnow
from armlab.core.policies.base import POLICY_VERSION
from armlab.core.records import (
    AuditRecord,
    ExperimentRecord,
    NewArm,
    NewAuditEntry,
    NewExperiment,
    NewSnapshot,
)
from armlab.core.serving import fixed_arm
from armlab.core.specs import ExperimentSpec
from armlab.core.status import ENDED, STATUS_VALUES, ExperimentStatus
from armlab.errors import (
    ArmNotFound,
    ExperimentExists,
    ExperimentNotFound,
    IllegalTransition,
    ValidationFailed,
)
from armlab.services.decisions import ship_guard
from armlab.services.interleaving_evaluation import interleaving_ship_guard, is_interleaving
from armlab.services.ports import UnitOfWorkPort

# action -> (statuses it may start from, status it leads to)
TRANSITIONS: dict[str, tuple[frozenset[ExperimentStatus], ExperimentStatus]] = {
    "start": (frozenset({ExperimentStatus.DRAFT}), ExperimentStatus.RUNNING),
    "stop": (frozenset({ExperimentStatus.RUNNING}), ExperimentStatus.STOPPED),
    "ship": (frozenset({ExperimentStatus.RUNNING, ExperimentStatus.STOPPED}),
             ExperimentStatus.SHIPPED),
}
TERMINAL_ACTIONS = frozenset({"stop", "ship"})


def _jsonable(value: Any) -> Any:
    """Make evidence storable as JSON on every backend.

    numpy scalars become Python numbers, datetimes ISO strings, and non-finite floats None
    (PostgreSQL's json type rejects NaN/Infinity).
    """

    def default(o: Any) -> Any:
        tolist = getattr(o, "tolist", None)  # numpy arrays and scalars alike
        if callable(tolist):
            return tolist()
        if isinstance(o, datetime):
            return o.isoformat()
        if isinstance(o, (set, frozenset, tuple)):
            return list(o)
        return str(o)

    def clean(o: Any) -> Any:
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, list):
            return [clean(v) for v in o]
        return o

    return clean(json.loads(json.dumps(value, default=default)))


def _state(exp: ExperimentRecord) -> dict[str, Any]:
    return {"status": exp.status, "shipped_arm": exp.shipped_arm_key, "version": exp.version}


def record_audit(
    uow: UnitOfWorkPort,
    *,
    experiment: ExperimentRecord,
    actor: str,
    action: str,
    reason: str,
    before: dict[str, Any],
    after: dict[str, Any],
    evidence: dict[str, Any] | None,
) -> NewAuditEntry:
    """Append one audit row (in the caller's transaction) and return it."""
    row = NewAuditEntry(
        experiment_id=experiment.id,
        at=utcnow(),
        actor=actor,
        action=action,
        reason=reason or "",
        before=_jsonable(before),
        after=_jsonable(after),
        evidence=_jsonable(evidence or {}),
    )
    uow.audit.add(row)
    return row


# --- reads ------------------------------------------------------------------------------------


def get_experiment(uow: UnitOfWorkPort, *, key: str, for_update: bool = False) -> ExperimentRecord:
    """Load one experiment with its arms; ExperimentNotFound (404) when the key is unknown.
    ``for_update`` locks its row until the caller's transaction ends (see the module doc)."""
    exp = uow.experiments.get(key, for_update=True) if for_update else uow.experiments.get(key)
    if exp is None:
        raise ExperimentNotFound(f"no experiment with key {key!r}")
    return exp


def list_experiments(uow: UnitOfWorkPort, *, status: str | None = None) -> list[ExperimentRecord]:
    """All experiments (newest first), optionally only those with ``status``."""
    if status is not None and status not in STATUS_VALUES:
        raise ValidationFailed(
            f"status {status!r} is not one of {', '.join(STATUS_VALUES)}",
            field="status",
        )
    return list(uow.experiments.list(status))


def list_audit(uow: UnitOfWorkPort, *, key: str) -> list[AuditRecord]:
    """The experiment's audit trail, oldest first."""
    return list(uow.audit.for_experiment(get_experiment(uow, key=key).id))


def unique_key(uow: UnitOfWorkPort, base: str) -> str:
    """``base`` or ``base-2``, ``base-3``... whichever is not registered yet."""
    taken = uow.experiments.keys_starting_with(base)
    if base not in taken:
        return base
    i = 2
    while f"{base}-{i}" in taken:
        i += 1
    return f"{base}-{i}"


# --- writes -----------------------------------------------------------------------------------


def create_experiment(uow: UnitOfWorkPort, *, spec: ExperimentSpec, actor: str) -> ExperimentRecord:
    """Register a draft experiment with its arms; ExperimentExists (409) on a taken key."""
    if uow.experiments.get(spec.key) is not None:
        raise ExperimentExists(f"an experiment with key {spec.key!r} already exists")
    new = NewExperiment(
        key=spec.key,
        name=spec.name or spec.key,
        description=spec.description,
        status=ExperimentStatus.DRAFT,
        unit=spec.unit,
        design=spec.design,
        interleaving=spec.interleaving.model_dump() if spec.interleaving else None,
        reward_kind=spec.reward.kind,
        reward_metric=spec.reward.metric,
        policy_name=spec.policy.name,
        policy_params=dict(spec.policy.params),
        exploration_floor=spec.exploration_floor,
        burn_in=spec.burn_in,
        attribution_window_s=spec.attribution_window_s,
        control_arm_key=spec.control_arm_key,
        sequential=spec.sequential.model_dump(),
        salt=spec.salt or secrets.token_hex(16),
        guardrails=[g.model_dump() for g in spec.guardrails],
        rolled_back={},
        arms=[
            NewArm(key=a.key, is_control=a.control, position=i, variant=dict(a.variant))
            for i, a in enumerate(spec.arms)
        ],
    )
    exp = uow.experiments.add(new)
    record_audit(
        uow,
        experiment=exp,
        actor=actor,
        action="create",
        reason="",
        before={},
        after=_state(exp) | {"arms": [a.key for a in exp.arms]},
        evidence=None,
    )
    uow.flush()
    return exp


def _assert_variants_frozen(uow: UnitOfWorkPort, exp: ExperimentRecord) -> None:
    """Arm variants and guardrails are immutable once an experiment has left draft.

    No endpoint edits a variant; this guards against any code path that tries: a change makes
    a new arm (a new experiment), never an edit of evidence already collected.
    """
    if exp.status == ExperimentStatus.DRAFT:
        return
    if uow.experiments.unflushed_change(exp, "guardrails"):
        raise IllegalTransition(
            f"experiment {exp.key!r} is {exp.status}: its guardrails are immutable; register a "
            "new experiment instead"
        )
    for arm in exp.arms:
        if uow.experiments.unflushed_change(arm, "variant"):
            raise IllegalTransition(
                f"arm {arm.key!r} of experiment {exp.key!r} is {exp.status}: its variant is "
                "immutable; register a new experiment (or a new arm) instead"
            )


def _transition(
    uow: UnitOfWorkPort,
    exp: ExperimentRecord,
    *,
    action: str,
    actor: str,
    reason: str,
    evidence: dict[str, Any] | None,
    shipped_arm: str | None = None,
) -> ExperimentRecord:
    allowed, target = TRANSITIONS[action]
    if exp.status not in allowed:
        raise IllegalTransition(
            f"cannot {action} experiment {exp.key!r}: it is {exp.status}; {action} needs "
            f"status {' or '.join(sorted(allowed))}"
        )
    _assert_variants_frozen(uow, exp)
    before = _state(exp)
    now = utcnow()
    exp.status = target
    if action == "start":
        exp.started_at = now
    else:
        exp.ended_at = exp.ended_at or now
    if shipped_arm is not None:
        exp.shipped_arm_key = shipped_arm
    # Flush the UPDATE first: the version check happens here, and after it exp.version holds
    # the new version for the audit row.
    uow.flush()
    record_audit(
        uow,
        experiment=exp,
        actor=actor,
        action=action,
        reason=reason,
        before=before,
        after=_state(exp),
        evidence=evidence,
    )
    uow.flush()
    if target in ENDED:
        _terminal_snapshot(uow, exp, now)
    return exp


def _terminal_snapshot(uow: UnitOfWorkPort, exp: ExperimentRecord, now: datetime) -> None:
    """The stopped/shipped allocation (one arm, weight 1) written in the transition's own
    transaction, so ``/assign`` never serves the fixed arm under the id of the last running
    snapshot. The allocator writes the same snapshot at most once (it skips an identical one)."""
    arm_keys = [a.key for a in exp.arms]
    target = fixed_arm(exp.status, control=exp.control_arm_key, shipped=exp.shipped_arm_key)
    uow.evidence.add_snapshot(NewSnapshot(
        experiment_id=exp.id, created_at=now, policy_name=exp.status,
        policy_version=POLICY_VERSION, weights={k: 1.0 if k == target else 0.0 for k in arm_keys},
        stats={"status": exp.status, "arm": target}))
    uow.flush()


def start_experiment(uow: UnitOfWorkPort, *, key: str, actor: str,
                     reason: str = "") -> ExperimentRecord:
    """draft -> running."""
    exp = get_experiment(uow, key=key)
    return _transition(uow, exp, action="start", actor=actor, reason=reason, evidence=None)


def stop_experiment(
    uow: UnitOfWorkPort,
    *,
    key: str,
    actor: str,
    reason: str,
    evidence: dict[str, Any] | None = None,
) -> ExperimentRecord:
    """running -> stopped: allocation ends and the control serves from now on."""
    exp = get_experiment(uow, key=key, for_update=True)
    return _transition(uow, exp, action="stop", actor=actor, reason=reason, evidence=evidence)


def _ship_guard(
    uow: UnitOfWorkPort,
    experiment: ExperimentRecord,
    arm: str,
    force: bool,
    evidence: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Decide whether shipping ``arm`` is supported by the evidence; return what to audit.

    :func:`armlab.services.decisions.ship_guard` raises Conflict (409) when the sequential
    evidence argues against ``arm`` and ``force`` is false; its evaluation goes into the audit
    row (merged over the caller's evidence) either way.
    """
    guard = interleaving_ship_guard if is_interleaving(experiment) else ship_guard
    return {**dict(evidence or {}), **guard(uow.evidence, experiment, arm, force)}


def ship_experiment(
    uow: UnitOfWorkPort,
    *,
    key: str,
    arm: str,
    actor: str,
    reason: str,
    evidence: dict[str, Any] | None = None,
    force: bool = False,
) -> ExperimentRecord:
    """running|stopped -> shipped: ``arm`` gets all traffic (propensity 1) from now on."""
    exp = get_experiment(uow, key=key, for_update=True)
    arm_keys = [a.key for a in exp.arms]
    if arm not in arm_keys:
        raise ArmNotFound(
            f"experiment {key!r} has no arm {arm!r}; its arms are {', '.join(arm_keys)}"
        )
    allowed, _ = TRANSITIONS["ship"]
    if exp.status not in allowed:  # checked before the guard so it never sees a bad state
        raise IllegalTransition(
            f"cannot ship experiment {key!r}: it is {exp.status}; ship needs status "
            f"{' or '.join(sorted(allowed))}"
        )
    audited = _ship_guard(uow, exp, arm, force, evidence)
    if force:
        audited = {**audited, "force": True}
    return _transition(
        uow, exp, action="ship", actor=actor, reason=reason, evidence=audited, shipped_arm=arm
    )

