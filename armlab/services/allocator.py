"""The allocator: turns arm statistics into allocation snapshots on a cadence.

One pass (:func:`run_allocation`) visits every running, stopped and shipped experiment:

* running: sum ``arm_stats`` over partitions, subtract the impressions that are still inside
  their attribution window (see :func:`matured_stats`), compute weights with the experiment's
  policy and write an ``allocation_snapshots`` row (weights, the statistics used, policy name
  and version, the RNG seed, the time);
* shipped: the shipped arm gets weight 1; stopped: the control gets weight 1 (the serving
  rule, :mod:`armlab.core.serving`). These terminal snapshots are written once (when the
  latest snapshot differs), not on every pass.

After a running experiment's snapshot, :func:`~armlab.services.allocation_looks.run_decisions`
evaluates the sequential test in the same unit of work (on matured, in-design data:
:func:`armlab.services.decisions.analysis_sums`), records the look and, with
``sequential.auto_stop``, stops the experiment and writes its control-only snapshot in the
same transaction. Interleaving experiments (``design:
interleaving``): :mod:`armlab.services.interleaving_allocation`. Contextual policies
(``segment_thompson``, ``linear_thompson``): :mod:`armlab.services.contextual_allocation`
(per-context weights from the matured impressions with their contexts).

Guardrail rollback: when the look finds a treatment arm that breached a guardrail
(:mod:`armlab.core.recommendation`), the allocator, in the same unit of work, either takes the arm
out of the allocation (``on_breach: rollback``, the default: the arm is recorded in
``experiments.rolled_back`` with its evidence, an audit row ``rollback`` is written, and a new
snapshot gives it weight 0; the exploration floor no longer applies to it and the policy shares
the traffic among the remaining arms), or stops the whole experiment (``on_breach: stop``: the
control serves, as with an auto-stop). Users of ``unit: user`` stuck to a rolled-back arm get
the control from then on (:mod:`armlab.services.assignment`). The rolled-back arm's comparisons
are frozen at that look; the others stay valid (see :mod:`armlab.core.recommendation`).

Each experiment is handled in its own unit of work, so a bad experiment (e.g. parameters the
current policy code rejects) is logged and skipped without blocking the others.

Delayed feedback
----------------
``arm_stats`` counts an impression as soon as it lands, with reward 0 until feedback arrives.
An impression younger than the experiment's attribution window may still get its click, so
counting it now would bias every arm's mean downward — more for arms whose traffic grew
recently. The allocator therefore uses *matured* statistics: totals from ``arm_stats`` minus the
impressions with ``served_at > now - attribution_window`` (their count, reward sum and sum of
squares, read from the ``impressions`` table through the (experiment_id, arm_key, served_at)
index). Immature impressions are excluded entirely — including those that already have a click
— because counting only the early successes would bias the mean upward. Burn-in counts matured
observations as well.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from armlab.core.clock import utcnow
from armlab.core.evidence import ArmSums
from armlab.core.policies import (
    CONTEXTUAL_POLICY_NAMES,
    POLICY_VERSION,
    PolicyStats,
    make_policy,
)
from armlab.core.records import ExperimentRecord, NewSnapshot
from armlab.core.serving import fixed_arm
from armlab.core.status import ExperimentStatus
from armlab.errors import ArmlabError
from armlab.services.allocation_looks import apply_guardrails, run_decisions
from armlab.services.contextual_allocation import contextual_allocation
from armlab.services.interleaving_allocation import interleaving_snapshot, run_interleaving_look
from armlab.services.interleaving_evaluation import is_interleaving
from armlab.services.ports_allocation import AllocationStore, AllocationUnit

log = logging.getLogger("armlab.allocator")

ACTIVE_STATUSES = (ExperimentStatus.RUNNING, ExperimentStatus.STOPPED,
                   ExperimentStatus.SHIPPED)
@dataclass(frozen=True)
class ArmEvidence:
    """Totals and the still-immature part of one arm's statistics."""

    n: float
    reward_sum: float
    reward_sumsq: float
    immature_n: float
    immature_sum: float
    immature_sumsq: float

    @property
    def matured_n(self) -> float:
        return max(self.n - self.immature_n, 0.0)

    @property
    def matured_sum(self) -> float:
        return self.reward_sum - self.immature_sum

    @property
    def matured_sumsq(self) -> float:
        return max(self.reward_sumsq - self.immature_sumsq, 0.0)

    def as_dict(self) -> dict[str, float]:
        return {
            "n": self.n,
            "reward_sum": self.reward_sum,
            "reward_sumsq": self.reward_sumsq,
            "immature_n": self.immature_n,
            "matured_n": self.matured_n,
            "matured_reward_sum": self.matured_sum,
            "matured_reward_sumsq": self.matured_sumsq,
        }


def matured_stats(
    uow: AllocationUnit, experiment: ExperimentRecord, *, now: datetime
) -> dict[str, ArmEvidence]:
    """Per-arm totals (sum over partitions) and the part inside the attribution window."""
    totals = uow.evidence.arm_sums(experiment.id)
    cutoff = now - timedelta(seconds=int(experiment.attribution_window_s or 0))
    young = uow.immature_sums(experiment.id, cutoff)
    out: dict[str, ArmEvidence] = {}
    for arm in experiment.arms:
        t = totals.get(arm.key) or ArmSums()
        n, s, q = young.get(arm.key, (0.0, 0.0, 0.0))
        out[arm.key] = ArmEvidence(
            n=t.n,
            reward_sum=t.reward_sum,
            reward_sumsq=t.reward_sumsq,
            immature_n=n,
            immature_sum=s,
            immature_sumsq=q,
        )
    return out


def _seed(experiment: ExperimentRecord, now: datetime) -> int:
    """Reproducible RNG seed from the experiment salt and the pass time (stored in the snapshot)."""
    digest = hashlib.blake2b(
        f"{experiment.salt}|{now.isoformat()}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big") >> 1


def compute_snapshot(
    uow: AllocationUnit, experiment: ExperimentRecord, *, now: datetime
) -> NewSnapshot | None:
    """Build (not add) the snapshot this experiment should get now; None if nothing changes."""
    if experiment.status == ExperimentStatus.RUNNING and is_interleaving(experiment):
        return interleaving_snapshot(uow.evidence, experiment, now=now,
                                     seed=_seed(experiment, now))
    if experiment.status == ExperimentStatus.RUNNING:
        return _running_snapshot(uow, experiment, now)
    return _terminal_snapshot(uow, experiment, now)


def _running_snapshot(uow: AllocationUnit, experiment: ExperimentRecord,
                      now: datetime) -> NewSnapshot:
    """The policy's weights on the matured statistics (rolled-back arms get weight 0)."""
    arm_keys = [a.key for a in experiment.arms]
    evidence = matured_stats(uow, experiment, now=now)
    rolled = dict(experiment.rolled_back or {})
    # The policy allocates among the arms still in the experiment (the floor applies to
    # them only); a rolled-back arm gets weight 0.
    active = [k for k in arm_keys if k not in rolled]
    cutoff = now - timedelta(seconds=int(experiment.attribution_window_s or 0))
    seed = _seed(experiment, now)
    weights = dict.fromkeys(arm_keys, 0.0)
    detail: dict[str, Any] = {}
    policy_name = experiment.policy_name
    if len(active) == 1:
        weights[active[0]] = 1.0
    elif policy_name in CONTEXTUAL_POLICY_NAMES:  # per-context weights: the contextual block
        served, detail = contextual_allocation(uow, experiment, active, cutoff,
                                               np.random.default_rng(seed))
        weights.update(served)
    else:
        policy = make_policy(
            policy_name,
            experiment.policy_params,
            reward_kind=experiment.reward_kind,
            floor=float(experiment.exploration_floor),
            burn_in=int(experiment.burn_in),
        )
        policy_name = policy.name
        stats = PolicyStats.from_lists(
            [evidence[k].matured_n for k in active],
            [evidence[k].matured_sum for k in active],
            [evidence[k].matured_sumsq for k in active],
        )
        result = policy.weights(stats, np.random.default_rng(seed))
        weights.update({k: float(w) for k, w in zip(active, result.weights, strict=True)})
        detail = result.to_dict()
        detail.pop("weights", None)
    if rolled:
        detail["rolled_back"] = sorted(rolled)
    return NewSnapshot(
        experiment_id=experiment.id,
        created_at=now,
        policy_name=policy_name,
        policy_version=f"{POLICY_VERSION}",
        weights=weights,
        stats={
            "status": ExperimentStatus.RUNNING.value,
            "arms": {k: evidence[k].as_dict() for k in arm_keys},
            "matured_before": cutoff.isoformat(),
            "seed": seed,
            "exploration_floor": float(experiment.exploration_floor),
            "burn_in": int(experiment.burn_in),
            "policy_params": dict(experiment.policy_params or {}),
            **detail,
        },
    )


def _terminal_snapshot(uow: AllocationUnit, experiment: ExperimentRecord,
                       now: datetime) -> NewSnapshot | None:
    """Stopped / shipped: the serving rule's one arm with weight 1, unless already recorded."""
    arm_keys = [a.key for a in experiment.arms]
    target = fixed_arm(experiment.status, control=experiment.control_arm_key,
                       shipped=experiment.shipped_arm_key) or experiment.control_arm_key
    weights = {k: (1.0 if k == target else 0.0) for k in arm_keys}
    latest = uow.evidence.latest_snapshot(experiment.id)
    if latest is not None and latest.weights == weights and latest.policy_name == experiment.status:
        return None  # terminal state already recorded
    return NewSnapshot(
        experiment_id=experiment.id,
        created_at=now,
        policy_name=experiment.status,  # "stopped" | "shipped": no policy runs any more
        policy_version=POLICY_VERSION,
        weights=weights,
        stats={"status": experiment.status, "arm": target},
    )


def _after_snapshot(uow: AllocationUnit, experiment: ExperimentRecord, now: datetime) -> None:
    """Per-experiment hook after the snapshot is written, in the same unit of work: the
    sequential decisions of a running experiment and the guardrails' rollbacks. An auto-stop
    or a rollback writes its snapshot in the same transaction, so ``/assign`` never serves the
    new allocation under the id of the last running snapshot. An interleaving experiment gets
    its look instead (:mod:`armlab.services.interleaving_allocation`)."""
    if experiment.status != ExperimentStatus.RUNNING:
        return
    acted: dict[str, Any] = {"rolled_back": [], "stopped": False}
    if is_interleaving(experiment):
        stopped = bool(run_interleaving_look(uow, experiment, now=now)["stopped"])
    else:
        ev = run_decisions(uow, experiment, actor="allocator", now=now)
        stopped = bool(ev["stopped"])
        if not stopped:
            acted = apply_guardrails(uow, experiment, ev, actor="allocator")
    # a rollback's new weights, or the terminal snapshot of an (auto or guardrail) stop
    if stopped or acted["stopped"] or acted["rolled_back"]:
        snap = compute_snapshot(uow, experiment, now=now)
        if snap is not None:
            uow.evidence.add_snapshot(snap)
            uow.flush()


def run_allocation(
    store: AllocationStore,
    *,
    now: datetime | None = None,
    after_snapshot: Callable[[AllocationUnit, ExperimentRecord, datetime], None] | None = None,
) -> list[NewSnapshot]:
    """One allocation pass over running/stopped/shipped experiments (``store``: the storage
    port, :attr:`armlab.bootstrap.Services.allocation_store`); returns the new snapshots."""
    now = now or utcnow()
    hook = after_snapshot or _after_snapshot
    written: list[NewSnapshot] = []
    for exp_id in store.active_experiment_ids(ACTIVE_STATUSES):
        try:
            with store.unit() as uow:
                # Locked until the commit: the look below reads the last recorded state of
                # the sequential test and records the next one (so does the ship guard).
                exp = uow.lock_experiment(exp_id)
                if exp is None or exp.status not in ACTIVE_STATUSES:
                    continue
                snap = compute_snapshot(uow, exp, now=now)
                if snap is not None:
                    uow.evidence.add_snapshot(snap)
                    uow.flush()
                hook(uow, exp, now)
                uow.commit()
                if snap is not None:
                    written.append(snap)
                    log.debug("experiment %s: weights %s", exp.key, snap.weights)
        except ArmlabError as exc:
            log.error("experiment id=%s skipped: %s", exp_id, exc.message)
        except Exception:
            log.exception("experiment id=%s: allocation failed", exp_id)
    return written


def allocation_loop(
    store: AllocationStore,
    *,
    once: bool = False,
    interval_s: float = 5.0,
    max_passes: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Run passes every ``interval_s`` seconds (drift-free); returns the number of passes.

    A pass that fails because the database is unavailable (a transient error, e.g. during a
    PostgreSQL restart) is logged and skipped; the loop carries on at the next interval."""
    passes = 0
    next_at = time.monotonic()
    while True:
        t0 = time.perf_counter()
        try:
            snaps = run_allocation(store)
        except Exception as exc:
            # The database is restarting or unreachable: skip this pass, try at the next one
            # (a loop that exits would leave every experiment without snapshots or auto-stops).
            if once or not store.is_transient(exc):
                raise
            snaps = []
            log.warning("allocation pass skipped, database unavailable: %s",
                        (str(exc).splitlines() or [""])[0][:200])
        passes += 1
        elapsed_ms = (time.perf_counter() - t0) * 1e3
        log.info(
            "allocation pass %d: %d snapshot(s) in %.1f ms%s",
            passes,
            len(snaps),
            elapsed_ms,
            "" if not snaps else " — " + ", ".join(_fmt(s) for s in snaps[:5]),
        )
        if once or (max_passes is not None and passes >= max_passes):
            return passes
        next_at += interval_s
        sleep(max(0.0, next_at - time.monotonic()))


def _fmt(snap: NewSnapshot) -> str:
    weights: dict[str, Any] = snap.weights
    return f"exp{snap.experiment_id}:" + "/".join(f"{k}={v:.3f}" for k, v in weights.items())
