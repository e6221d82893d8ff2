"""Sequential decisions on stored evidence: one running state of the test, evaluated by the
allocator, recorded, and shown everywhere else.

* :func:`analysis_sums`: the data the test may use: impressions whose attribution window has
  closed (matured: their reward is final) and that were served before the experiment stopped
  or shipped (in design: after a stop the control serves with propensity 1, which is not the
  experiment's design). For ``unit: user`` one term per user (cluster-level analysis).
* :func:`evaluate_experiment`: one look of the pure evaluation of :mod:`armlab.core.decisions`
  on those sums, carrying each arm's stored running state (p-value, confidence sequence).
* :func:`record_decisions`: stores one ``decisions`` row per treatment arm whose data or
  decision changed, with the whole evaluation in its evidence.
* :func:`stored_evaluation` / :func:`shown_evaluation`: the last recorded look. The results
  endpoint, the report and the ship guard show this state rather than running a look of their
  own that nobody records: an always-valid p-value is the running minimum over the looks that
  were *taken*, and a look that is shown but not recorded lets the next recorded one rise above
  it (the results endpoint once showed ``treatment_better`` and then ``continue``).
* :func:`ship_guard`: refuses (409) to ship against the evidence unless forced; on a running
  experiment it takes (and records) one more look first. An arm that breached a guardrail is
  refused the same way, with the guardrail's evidence.

Guardrails (:mod:`armlab.core.recommendation`) are evaluated in the same look, on the same matured,
in-design impressions (each metric's ``guardrail_stats`` minus the impressions served after the
cutoff); their entries are stored in each treatment arm's decision row (``entry.guardrails``),
which carries each pair's running p-value to the next look, and the evaluation gets the one
``recommendation`` (ship / keep control / continue). With ``unit: user`` the guardrails are
analysed per user too (:mod:`armlab.core.stats.noninferiority_units`: the per-impression rate
as a ratio over users, with a per-user variance; ``min_samples`` and ``max_n`` count users).
An arm rolled back by a breach keeps the entries of the
look that rolled it back (its comparisons are frozen: see :mod:`armlab.core.recommendation`).

None of them commits: the caller's unit of work does. The allocator runs the look on its
cadence and stops an experiment with ``auto_stop``; a stopped or shipped experiment is never
evaluated again, so its evidence stays frozen at the stop.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from armlab.core.clock import as_utc, utcnow
from armlab.core.decisions import (
    DEFAULT_PLAN_IMPRESSIONS,
    TERMINAL,
    ArmLook,
    Design,
    Evaluation,
    PriorLook,
    evaluate,
    ship_problem,
)
from armlab.core.decisions import Decision as Verdict
from armlab.core.evidence import FIELDS, SIGNED, ArmSums
from armlab.core.recommendation import (
    BREACHED,
    NOT_INFORMATIVE,
    breach_summary,
    evaluate_guardrails,
    recommend,
)
from armlab.core.records import DecisionRecord, ExperimentRecord, NewDecision
from armlab.core.specs import GuardrailSpec, SequentialSpec
from armlab.core.stats.noninferiority_units import UnitSums
from armlab.core.status import ENDED, ExperimentStatus
from armlab.errors import Conflict
from armlab.services.cuped_evidence import add_cuped, apply_cuped
from armlab.services.ports import Evidence

# Top-level fields of an evaluation kept in every decision row (the arms are kept per row).
_TOP = ("method", "alpha", "cs_alpha", "tau2", "tau2_source", "theta0", "correction",
        "min_samples", "min_events", "alternative", "boundary", "horizon_plan", "max_n",
        "impressions", "control", "srm", "stop", "stop_reason", "warnings", "evaluated_at",
        "unit", "cutoff", "cuped")


def guardrail_specs(experiment: ExperimentRecord) -> list[GuardrailSpec]:
    """The experiment's guardrails as specs (validated at registration)."""
    return [GuardrailSpec.model_validate(g) for g in experiment.guardrails or []]


def guardrail_analysis_sums(evidence: Evidence, experiment: ExperimentRecord, *, now: datetime
                            ) -> dict[str, dict[str, ArmSums]] | dict[str, dict[str, UnitSums]]:
    """Matured, in-design per-arm sums of each guardrail metric (metric -> arm -> sums); per
    user for ``unit: user`` (one term per user, as the primary metric)."""
    cutoff = analysis_cutoff(experiment, now)
    if experiment.unit == "user":
        return evidence.unit_guardrail_sums(experiment.id, cutoff)
    late = evidence.guardrail_sums_served_after(experiment.id, cutoff)
    return {m: {k: _minus(v, late.get(m, {}).get(k)) for k, v in per_arm.items()}
            for m, per_arm in evidence.guardrail_sums(experiment.id).items()}


def _stored_entry(d: DecisionRecord) -> dict[str, Any]:
    ev = d.evidence or {}
    return dict(ev["entry"]) if isinstance(ev.get("entry"), dict) else {}


def _add_guardrails(evidence: Evidence, experiment: ExperimentRecord, ev: dict[str, Any],
                    rows: Mapping[str, DecisionRecord], *, now: datetime) -> None:
    """Guardrail entries, frozen arms and the recommendation on one evaluation (in place)."""
    specs = guardrail_specs(experiment)
    rolled = dict(experiment.rolled_back or {})
    control = experiment.control_arm_key
    previous: dict[tuple[str, str], float] = {}
    frozen: dict[tuple[str, str], dict[str, Any]] = {}
    for arm, d in rows.items():
        for g in _stored_entry(d).get("guardrails") or []:
            if g.get("p_value") is not None:
                previous[(str(g["metric"]), arm)] = float(g["p_value"])
            if arm in rolled:
                frozen[(str(g["metric"]), arm)] = dict(g)
    treatments = [a.key for a in experiment.arms if a.key != control]
    seq = SequentialSpec.model_validate(experiment.sequential or {})
    entries = evaluate_guardrails(
        specs, control=control, treatments=treatments,
        sums=guardrail_analysis_sums(evidence, experiment, now=now) if specs else {},
        previous=previous, frozen=frozen, min_events=seq.min_events,
        min_samples=max(seq.min_samples, 1),
        horizon=float(seq.max_n or DEFAULT_PLAN_IMPRESSIONS),
        floor=(0.0 if experiment.policy_name == "uniform"
               else float(experiment.exploration_floor or 0.0))) if specs else []
    for i, e in enumerate(ev["arms"]):
        arm = e["arm"]
        if arm in rolled:
            kept = _stored_entry(rows[arm]) if arm in rows else {}
            if kept:
                e = ev["arms"][i] = {**kept}
            e["rolled_back"] = True
        e["guardrails"] = [g for g in entries if g["arm"] == arm]
    if rolled and ev["arms"]:
        # the stopping rule with the rolled-back arms counted as decided
        looks = [ArmLook.from_dict(e) for e in ev["arms"]]
        ev["stop"] = (all(a.decision in TERMINAL or a.arm in rolled for a in looks)
                      and not ev["srm"].get("mismatch"))
        if ev["stop"]:
            ev["stop_reason"] = "; ".join(
                f"{a.arm}: {'rolled back' if a.arm in rolled else a.decision}" for a in looks)
    ev["guardrails"] = entries
    ev["rolled_back"] = rolled
    ev["recommendation"] = recommend(ev, entries, control=control, rolled_back=rolled)


def design_of(experiment: ExperimentRecord) -> Design:
    """The experiment's design as the pure evaluation needs it. With ``unit: user`` the
    analysed terms are per-user reward totals, which are not 0/1 even for a binary metric."""
    per_user = experiment.unit == "user"
    return Design(
        arm_keys=tuple(a.key for a in experiment.arms),
        control=experiment.control_arm_key,
        binary=experiment.reward_kind == "binary" and not per_user,
        policy_name=experiment.policy_name,
        exploration_floor=float(experiment.exploration_floor or 0.0),
        sequential=SequentialSpec.model_validate(experiment.sequential or {}),
        unit=str(experiment.unit),
    )


def _minus(total: ArmSums, part: ArmSums | None) -> ArmSums:
    """total - part, with float noise clipped at 0 for the non-negative fields."""
    if part is None:
        return total
    out = {}
    for f in FIELDS:
        v = getattr(total, f) - getattr(part, f)
        out[f] = v if f in SIGNED else max(v, 0.0)
    return ArmSums(**out)


def analysis_cutoff(experiment: ExperimentRecord, now: datetime) -> datetime:
    """Impressions served up to this time enter the test: those whose attribution window has
    closed, and none served after the experiment stopped or shipped."""
    cutoff = as_utc(now) - timedelta(seconds=int(experiment.attribution_window_s or 0))
    if experiment.status in ENDED and experiment.ended_at is not None:
        cutoff = min(cutoff, as_utc(experiment.ended_at))
    return cutoff


def analysis_sums(evidence: Evidence, experiment: ExperimentRecord, *, now: datetime
                  ) -> dict[str, ArmSums]:
    """Matured, in-design per-arm sums (see the module doc); per user for ``unit: user``."""
    cutoff = analysis_cutoff(experiment, now)
    if experiment.unit == "user":
        return evidence.unit_sums(experiment.id, cutoff)
    late = evidence.sums_served_after(experiment.id, cutoff)
    return {k: _minus(v, late.get(k)) for k, v in evidence.arm_sums(experiment.id).items()}


def _prior(d: DecisionRecord) -> PriorLook:
    ev = d.evidence or {}
    srm = ev.get("srm")
    return PriorLook(
        p_value=d.p_value, ci_low=d.ci_low, ci_high=d.ci_high, method=ev.get("method"),
        tau2=ev.get("tau2"), looks=int(ev.get("looks", 0)),
        srm_p=float(srm.get("p_value", 1.0)) if isinstance(srm, dict) else None,
        alternative=str(ev.get("alternative", "two-sided")),
        decision=d.decision, boundary=str(ev.get("boundary", "mixture")),
    )


def evaluate_experiment(
    evidence: Evidence, experiment: ExperimentRecord, *, now: datetime | None = None
) -> dict[str, Any]:
    """One look of the always-valid evaluation on the matured, in-design data, continuing
    the stored running state. Nothing is stored: :func:`record_decisions` does that."""
    now = now or utcnow()
    rows = evidence.latest_decisions(experiment.id)
    previous = {k: _prior(d) for k, d in rows.items()}
    sums = analysis_sums(evidence, experiment, now=now)
    adjusted, cuped = apply_cuped(evidence, experiment, sums, analysis_cutoff(experiment, now))
    evaluation = evaluate(design_of(experiment), adjusted, previous, now=now)
    ev = evaluation.as_dict()
    add_cuped(ev, cuped, sums)  # sequential.cuped: the test ran on Y - theta X
    ev["unit"] = experiment.unit
    ev["cutoff"] = analysis_cutoff(experiment, now).isoformat()
    _add_guardrails(evidence, experiment, ev, rows, now=now)
    return ev


def _states(entry: dict[str, Any]) -> list[tuple[str, str]]:
    return [(str(g.get("metric")), str(g.get("state"))) for g in entry.get("guardrails") or []]


def record_decisions(
    evidence: Evidence, experiment: ExperimentRecord, evaluation: dict[str, Any], *, now: datetime
) -> int:
    """Store one DecisionRecord row per treatment arm whose counts or decision changed; returns how
    many were stored. Each row carries the whole evaluation, so the last look can be shown
    again exactly (:func:`stored_evaluation`)."""
    ev = evaluation
    previous = evidence.latest_decisions(experiment.id)
    common = {k: ev[k] for k in ("method", "tau2", "alpha", "cs_alpha", "correction", "theta0",
                                 "impressions", "alternative", "boundary")}
    common["srm"] = {k: ev["srm"][k] for k in ("p_value", "mismatch", "ratio")}
    top = {k: ev.get(k) for k in _TOP}
    stored = 0
    for arm in ev["arms"]:  # the entry as stored: the arm's look, its guardrails, rolled_back
        look = ArmLook.from_dict(arm)
        prev = previous.get(look.arm)
        if (prev is not None and prev.n_control == look.n_control
                and prev.n_treatment == look.n_treatment and prev.decision == look.decision
                and _states(_stored_entry(prev)) == _states(arm)
                and bool(_stored_entry(prev).get("rolled_back")) == bool(arm.get("rolled_back"))):
            continue  # nothing new since the last evaluation
        evidence.add_decision(NewDecision(
            experiment_id=experiment.id, at=now, arm_key=look.arm, decision=look.decision.value,
            estimate=look.estimate, p_value=look.p_value,
            ci_low=look.ci_low, ci_high=look.ci_high,
            n_control=look.n_control, n_treatment=look.n_treatment,
            evidence={**common, "looks": look.looks, "p_adjusted": look.p_adjusted,
                      "reason": look.reason, "valid": look.valid,
                      "entry": dict(arm), "evaluation": top},
        ))
        stored += 1
    return stored


def _entry_from_row(d: DecisionRecord, control: str) -> dict[str, Any]:
    ev = d.evidence or {}
    if isinstance(ev.get("entry"), dict):
        return dict(ev["entry"])
    return {  # a row written before whole evaluations were stored
        "arm": d.arm_key, "control": control, "n_control": d.n_control,
        "n_treatment": d.n_treatment, "decision": d.decision, "reason": ev.get("reason", ""),
        "estimate": d.estimate, "p_value": d.p_value if d.p_value is not None else 1.0,
        "p_adjusted": ev.get("p_adjusted", d.p_value), "ci_low": d.ci_low,
        "ci_high": d.ci_high, "valid": bool(ev.get("valid", False)),
        "looks": int(ev.get("looks", 0)),
    }


def stored_evaluation(evidence: Evidence, experiment: ExperimentRecord) -> dict[str, Any] | None:
    """The last recorded look (None before the first one): per arm its latest row, the
    experiment-wide fields from the newest row."""
    rows = evidence.latest_decisions(experiment.id)
    if not rows:
        return None
    control = experiment.control_arm_key
    newest = max(rows.values(), key=lambda d: d.id or 0)
    nev = newest.evidence or {}
    top: dict[str, Any] = dict(nev.get("evaluation") or {})
    if not top:
        top = {k: nev.get(k) for k in ("method", "tau2", "alpha", "cs_alpha", "correction",
                                       "theta0", "impressions", "srm")}
        top.update(control=control, stop=False, stop_reason="", warnings=[])
    treatments = [a.key for a in experiment.arms if a.key != control]
    top["arms"] = [_entry_from_row(rows[k], control) for k in treatments if k in rows]
    top["guardrails"] = [g for e in top["arms"] for g in e.get("guardrails") or []]
    top["rolled_back"] = dict(experiment.rolled_back or {})
    top["recommendation"] = recommend(top, top["guardrails"], control=control,
                                      rolled_back=top["rolled_back"])
    top["recorded"] = True
    top["recorded_at"] = newest.at.isoformat() if newest.at is not None else None
    return top


def shown_evaluation(evidence: Evidence, experiment: ExperimentRecord, *,
                     now: datetime | None = None) -> dict[str, Any]:
    """What the results endpoint and the report show: the last recorded look; before the
    first one, the design of the test (method, tau², SRM) with every arm at ``continue`` and
    no p-value, because a look nobody records must not be shown as evidence."""
    stored = stored_evaluation(evidence, experiment)
    if stored is not None:
        return stored
    ev = evaluate_experiment(evidence, experiment, now=now)
    for e in ev["arms"]:
        e.update(decision=Verdict.CONTINUE.value,
                 reason="no recorded look yet (the allocator evaluates the test on its cadence)",
                 p_value=1.0, p_adjusted=1.0, p_now=1.0, ci_low=None, ci_high=None, valid=False,
                 looks=0)
    for g in ev.get("guardrails", []):
        g.update(state=NOT_INFORMATIVE, p_value=1.0, breached=False, non_inferior=False,
                 excess=None, excess_low=None, excess_high=None, delta=None)
    ev["stop"], ev["stop_reason"], ev["recorded"] = False, "", False
    ev["recommendation"] = recommend(ev, ev.get("guardrails", []),
                                     control=experiment.control_arm_key,
                                     rolled_back=experiment.rolled_back or {})
    return ev


def ship_guard(evidence: Evidence, experiment: ExperimentRecord, arm: str, force: bool
               ) -> dict[str, Any]:
    """Evidence for shipping ``arm``; raises Conflict (409) when it argues against it and not
    ``force`` (see :func:`armlab.core.decisions.ship_problem`).

    A running experiment gets one more look, recorded like the allocator's; a stopped one
    shows the evidence frozen at its stop (one look on its in-design data if it never had
    one)."""
    running = experiment.status == ExperimentStatus.RUNNING
    ev = stored_evaluation(evidence, experiment) if not running else None
    if ev is None:
        now = utcnow()
        ev = evaluate_experiment(evidence, experiment, now=now)
        record_decisions(evidence, experiment, ev, now=now)
    evaluation = Evaluation.from_dict(ev)
    problem = ship_problem(evaluation, arm=arm, control=experiment.control_arm_key)
    breaches = [g for g in ev.get("guardrails", [])
                if g.get("arm") == arm and g.get("state") == BREACHED]
    rolled = (experiment.rolled_back or {}).get(arm)
    if breaches or rolled:
        why = "; ".join(breach_summary(g) for g in breaches) or str(
            (rolled or {}).get("summary", f"arm {arm!r} was rolled back"))
        problem = f"{why}; {problem}" if problem else why
    # Without a single valid look there is nothing to record (nor to argue against).
    has_evidence = any(a.valid for a in evaluation.arms)
    audited: dict[str, Any] = {"sequential": ev} if has_evidence else {}
    if problem and not force:
        raise Conflict(f"shipping against the sequential evidence: {problem}; pass --force "
                       "(force=true) to ship anyway")
    if problem:
        audited["overridden"] = problem
    return audited
