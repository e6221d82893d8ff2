"""Sequential decisions on stored evidence: evaluate, record, and guard a ship.

Each function takes the :class:`~armlab.services.ports.Evidence` repository of the caller's
unit of work. :func:`evaluate_experiment` reads the per-arm totals and each arm's previous
decision and runs
the pure evaluation of :mod:`armlab.core.decisions`. :func:`record_decisions` stores one
``decisions`` row per treatment arm whose data or decision changed. :func:`ship_guard` refuses
(409) to ship against the evidence unless forced. None of them commits: the caller's unit of
work does. The allocator runs these on its cadence and stops an experiment with ``auto_stop``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from armlab.adapters.db.models import Decision, Experiment
from armlab.core.clock import utcnow
from armlab.core.decisions import Design, PriorLook, evaluate, ship_problem
from armlab.core.specs import SequentialSpec
from armlab.errors import Conflict
from armlab.services.ports import Evidence


def design_of(experiment: Experiment) -> Design:
    """The experiment's design as the pure evaluation needs it."""
    return Design(
        arm_keys=tuple(a.key for a in experiment.arms),
        control=experiment.control_arm_key,
        binary=experiment.reward_kind == "binary",
        policy_name=experiment.policy_name,
        exploration_floor=float(experiment.exploration_floor or 0.0),
        sequential=SequentialSpec.model_validate(experiment.sequential or {}),
    )


def _prior(d: Decision) -> PriorLook:
    ev = d.evidence or {}
    srm = ev.get("srm")
    return PriorLook(
        p_value=d.p_value, ci_low=d.ci_low, ci_high=d.ci_high, method=ev.get("method"),
        tau2=ev.get("tau2"), looks=int(ev.get("looks", 0)),
        srm_p=float(srm.get("p_value", 1.0)) if isinstance(srm, dict) else None,
    )


def evaluate_experiment(
    evidence: Evidence, experiment: Experiment, *, now: datetime | None = None
) -> dict[str, Any]:
    """Always-valid evaluation of every treatment arm against the control, on stored data."""
    previous = {k: _prior(d) for k, d in evidence.latest_decisions(experiment.id).items()}
    return evaluate(design_of(experiment), evidence.arm_sums(experiment.id), previous,
                    now=now or utcnow())


def record_decisions(
    evidence: Evidence, experiment: Experiment, evaluation: dict[str, Any], *, now: datetime
) -> int:
    """Store one Decision row per treatment arm whose counts or decision changed; returns how
    many were stored."""
    ev = evaluation
    previous = evidence.latest_decisions(experiment.id)
    common = {k: ev[k] for k in ("method", "tau2", "alpha", "cs_alpha", "correction", "theta0",
                                 "impressions")}
    common["srm"] = {k: ev["srm"][k] for k in ("p_value", "mismatch", "ratio")}
    stored = 0
    for arm in ev["arms"]:
        prev = previous.get(arm["arm"])
        if (prev is not None and prev.n_control == arm["n_control"]
                and prev.n_treatment == arm["n_treatment"] and prev.decision == arm["decision"]):
            continue  # nothing new since the last evaluation
        evidence.add_decision(Decision(
            experiment_id=experiment.id, at=now, arm_key=arm["arm"], decision=arm["decision"],
            estimate=arm.get("estimate"), p_value=arm.get("p_value"),
            ci_low=arm.get("ci_low"), ci_high=arm.get("ci_high"),
            n_control=arm["n_control"], n_treatment=arm["n_treatment"],
            evidence={**common, "looks": arm.get("looks", 0), "p_adjusted": arm.get("p_adjusted"),
                      "reason": arm.get("reason"), "valid": arm.get("valid")},
        ))
        stored += 1
    return stored


def ship_guard(evidence: Evidence, experiment: Experiment, arm: str, force: bool
               ) -> dict[str, Any]:
    """Evidence for shipping ``arm``; raises Conflict (409) when it argues against it and not
    ``force`` (see :func:`armlab.core.decisions.ship_problem`)."""
    ev = evaluate_experiment(evidence, experiment)
    problem = ship_problem(ev, arm=arm, control=experiment.control_arm_key)
    # Without a single valid look there is nothing to record (nor to argue against).
    has_evidence = any(e.get("valid") for e in ev["arms"])
    audited: dict[str, Any] = {"sequential": ev} if has_evidence else {}
    if problem and not force:
        raise Conflict(f"shipping against the sequential evidence: {problem}; pass --force "
                       "(force=true) to ship anyway")
    if problem:
        audited["overridden"] = problem
    return audited
