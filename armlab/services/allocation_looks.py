"""What an allocation pass does after a running experiment's snapshot, in the same unit of
work: the sequential test's look (:func:`run_decisions`: record the decisions and, with
``sequential.auto_stop``, stop an experiment whose arms are all decided) and the guardrails'
actions (:func:`apply_guardrails`: roll a breaching arm back, or stop the experiment with
``on_breach: stop``). See :mod:`armlab.services.allocator` for the pass itself."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from armlab.core.clock import utcnow
from armlab.core.recommendation import BREACHED, breach_summary
from armlab.core.records import ExperimentRecord
from armlab.core.status import ExperimentStatus
from armlab.services import registry
from armlab.services.decisions import evaluate_experiment, record_decisions
from armlab.services.ports import UnitOfWorkPort


def run_decisions(
    uow: UnitOfWorkPort, experiment: ExperimentRecord, *, actor: str = "allocator",
    now: datetime | None = None,
) -> dict[str, Any]:
    """Evaluate the sequential test, store its decision rows and, with
    ``sequential.auto_stop``, stop a running experiment whose arms are all decided (the next
    pass then writes the control-only snapshot). Returns the evaluation with ``stored`` and
    ``stopped``. Does not commit; the caller's unit of work does."""
    now = now or utcnow()
    ev = evaluate_experiment(uow.evidence, experiment, now=now)
    ev["stored"] = record_decisions(uow.evidence, experiment, ev, now=now)
    uow.flush()
    ev["stopped"] = False
    seq = experiment.sequential or {}
    if seq.get("auto_stop") and ev["stop"] and experiment.status == ExperimentStatus.RUNNING:
        registry.stop_experiment(uow, key=experiment.key, actor=actor,
                                 reason=f"sequential test decided: {ev['stop_reason']}",
                                 evidence=ev)
        ev["stopped"] = True
    return ev


def apply_guardrails(
    uow: UnitOfWorkPort, experiment: ExperimentRecord, ev: dict[str, Any], *,
    actor: str = "allocator",
) -> dict[str, Any]:
    """Act on the look's guardrail breaches (see the module doc): returns the arms newly
    rolled back and whether the experiment was stopped. Does not commit."""
    control = experiment.control_arm_key
    rolled = dict(experiment.rolled_back or {})
    new: dict[str, Any] = {}
    stop_for: list[dict[str, Any]] = []
    for g in ev.get("guardrails", []):
        arm = str(g["arm"])
        if g.get("state") != BREACHED or arm == control or arm in rolled or arm in new:
            continue
        evidence = {k: g.get(k) for k in (
            "metric", "arm", "control", "harm", "margin", "relative", "alpha",
            "alpha_guardrail", "on_breach", "control_mean", "treatment_mean", "delta",
            "excess", "excess_low", "excess_high", "p_value", "n_control", "n_treatment")}
        evidence["summary"] = breach_summary(g)
        if g.get("on_breach") == "stop":
            stop_for.append(evidence)
        else:
            new[arm] = evidence
    out: dict[str, Any] = {"rolled_back": sorted(new), "stopped": False}
    if stop_for and experiment.status == ExperimentStatus.RUNNING:
        registry.stop_experiment(
            uow, key=experiment.key, actor=actor,
            reason="guardrail breached: " + "; ".join(e["summary"] for e in stop_for),
            evidence={"guardrails": stop_for, "sequential": ev})
        out["stopped"] = True
        return out
    if not new:
        return out
    before = {"rolled_back": sorted(rolled), "version": experiment.version}
    experiment.rolled_back = {**rolled, **new}
    uow.flush()
    for evidence in new.values():
        registry.record_audit(
            uow, experiment=experiment, actor=actor, action="rollback",
            reason=evidence["summary"], before=before,
            after={"rolled_back": sorted(experiment.rolled_back),
                   "version": experiment.version},
            evidence={"guardrail": evidence, "sequential": ev})
    uow.flush()
    return out
