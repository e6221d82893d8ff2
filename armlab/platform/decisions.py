"""Sequential decisions per treatment arm against control, on the allocator's cadence.

``evaluate_experiment`` reads the per-arm sufficient statistics (``arm_stats`` summed over
partitions) and the previous decision of each arm, and returns the always-valid evaluation:
estimate, running p-value (min with the previous one), running confidence sequence
(intersection with the previous one), multiplicity-adjusted p-value (Holm or Bonferroni), a
decision (continue / treatment_better / treatment_worse / futile) and an always-valid
sample-ratio-mismatch check that accounts for time-varying weights. ``run_decisions`` stores
one ``decisions`` row per treatment arm and, with ``sequential.auto_stop``, stops the experiment
through ``service.stop_experiment`` with the evaluation as audit evidence. Neither commits: the
caller's unit of work does.

Method: the adaptive-valid IPW test (armlab.stats.adaptive) whenever allocation can depend on
the data (every policy except ``uniform``); plain mSPRT on the arm means for ``uniform``, where
the per-arm samples are i.i.d. (JKPW's setting) and the plain test is a little more efficient.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from armlab.errors import Conflict, StatsError
from armlab.platform.models import ArmStats, Decision, Experiment
from armlab.stats.adaptive import ArmSums, ipw_msprt, srm_check
from armlab.stats.msprt import (
    MsprtResult,
    MsprtState,
    bonferroni_adjust,
    holm_adjust,
    msprt_two_sample,
    tau2_for_horizon,
)

SUM_FIELDS = ("n", "reward_sum", "reward_sumsq", "ipw_n", "ipw_sum", "ipw_sumsq", "ipw_n_sq")
DEFAULT_PLAN_IMPRESSIONS = 20_000  # horizon for the default tau² when max_n is not set
SRM_ALPHA = 0.001
TERMINAL = ("treatment_better", "treatment_worse", "futile")


def arm_sums(session: Session, experiment_id: int) -> dict[str, ArmSums]:
    """SUM of every sufficient statistic over the partition shards, per arm."""
    cols = [func.coalesce(func.sum(getattr(ArmStats, f)), 0) for f in SUM_FIELDS]
    rows = session.execute(
        select(ArmStats.arm_key, *cols)
        .where(ArmStats.experiment_id == experiment_id)
        .group_by(ArmStats.arm_key)
    )
    out: dict[str, ArmSums] = {}
    for key, *vals in rows:
        d = dict(zip(SUM_FIELDS, (float(v) for v in vals), strict=True))
        out[key] = ArmSums(**d)
    return out


def latest_decisions(session: Session, experiment_id: int) -> dict[str, Decision]:
    """Most recent decision row of each arm."""
    latest = (
        select(Decision.arm_key, func.max(Decision.id).label("id"))
        .where(Decision.experiment_id == experiment_id)
        .group_by(Decision.arm_key)
        .subquery()
    )
    rows = session.scalars(select(Decision).join(latest, Decision.id == latest.c.id))
    return {d.arm_key: d for d in rows}


def _num(x: float | None) -> float | None:
    if x is None or (isinstance(x, float) and (math.isinf(x) or math.isnan(x))):
        return None
    return float(x)


def _pooled_variance(sums: list[ArmSums], binary: bool) -> float:
    n = sum(s.n for s in sums)
    if n < 2:
        return 0.0
    mean = sum(s.reward_sum for s in sums) / n
    if binary:
        return mean * (1 - mean)
    return max(sum(s.reward_sumsq for s in sums) / n - mean * mean, 0.0) * n / (n - 1)


def evaluate_experiment(
    session: Session, experiment: Experiment, *, now: datetime | None = None
) -> dict[str, Any]:
    """Always-valid evaluation of every treatment arm against the control (see module doc)."""
    now = now or datetime.now(UTC)
    seq = dict(experiment.sequential or {})
    alpha = float(seq.get("alpha", 0.05))
    theta0 = float(seq.get("theta0", 0.0))
    min_samples = int(seq.get("min_samples", 100))
    max_n = seq.get("max_n")
    correction = str(seq.get("correction", "holm"))
    min_effect = seq.get("min_effect")
    binary = experiment.reward_kind == "binary"
    control = experiment.control_arm_key
    arm_keys = [a.key for a in experiment.arms]
    treatments = [k for k in arm_keys if k != control]
    zero = ArmSums(0, 0, 0, 0, 0, 0, 0)
    sums = dict.fromkeys(arm_keys, zero)
    sums.update(arm_sums(session, experiment.id))
    t_total = sum(s.n for s in sums.values())
    previous = latest_decisions(session, experiment.id)
    warnings: list[str] = []

    method = str(seq.get("method", "auto"))
    if method == "auto":
        method = "plain" if experiment.policy_name == "uniform" else "ipw"
    if method == "ipw" and any(s.n > 0 and s.ipw_n <= 0 for s in sums.values()):
        warnings.append("propensities not logged for some arm: fell back to plain mSPRT, which "
                        "is not valid under adaptive allocation")
        method = "plain"
    if method == "ipw" and float(experiment.exploration_floor or 0.0) <= 0.0:
        warnings.append("exploration_floor is 0: the IPW test needs propensities bounded away "
                        "from 0 for its guarantee")

    # tau²: the experiment's setting, else the value frozen at the first evaluation that had
    # data (carried in the evidence), else Howard et al.'s horizon rule from the pooled
    # variance at the planned horizon (max_n impressions, or DEFAULT_PLAN_IMPRESSIONS).
    tau2 = seq.get("tau2")
    tau2_source = "experiment"
    if tau2 is None:
        frozen = [d.evidence.get("tau2") for d in previous.values()
                  if d.evidence and d.evidence.get("method") == method]
        if frozen and frozen[0]:
            tau2, tau2_source = float(frozen[0]), "frozen"
        else:
            horizon = float(max_n or DEFAULT_PLAN_IMPRESSIONS)
            per_arm = horizon / max(len(arm_keys), 1)
            sigma2 = _pooled_variance(list(sums.values()), binary)
            enough = all(s.n >= max(min_samples, 1) for s in sums.values())
            if sigma2 > 0 and enough:
                tau2 = tau2_for_horizon(2.0 * sigma2 / per_arm, alpha)
                tau2_source = "horizon"
    m = max(len(treatments), 1)
    cs_alpha = alpha / m  # simultaneous coverage of the confidence sequences (Bonferroni)

    results: dict[str, MsprtResult | None] = {}
    for k in treatments:
        a, b = sums[control], sums[k]
        prev = previous.get(k)
        state = MsprtState()
        if (prev is not None and prev.evidence and prev.evidence.get("method") == method
                and tau2 is not None and prev.evidence.get("tau2") == tau2
                and prev.p_value is not None):
            state = MsprtState(
                min(max(float(prev.p_value), 0.0), 1.0),
                -math.inf if prev.ci_low is None else float(prev.ci_low),
                math.inf if prev.ci_high is None else float(prev.ci_high),
                int(prev.evidence.get("looks", 0)),
            )
        if tau2 is None:
            results[k] = None
            continue
        try:
            if method == "ipw":
                results[k] = ipw_msprt(t_total, a, b, tau2=tau2, theta0=theta0, alpha=cs_alpha,
                                       binary=binary, min_samples=min_samples, state=state)
            else:
                results[k] = msprt_two_sample(
                    "bernoulli" if binary else "normal", a.n, a.reward_sum, a.reward_sumsq,
                    b.n, b.reward_sum, b.reward_sumsq, tau2=tau2, theta0=theta0,
                    alpha=cs_alpha, min_samples=min_samples, state=state)
        except StatsError as exc:
            warnings.append(f"arm {k}: {exc.message}")
            results[k] = None

    raw_p = [r.p_value if (r := results[k]) is not None else 1.0 for k in treatments]
    adjusted = (holm_adjust(raw_p) if correction == "holm" else bonferroni_adjust(raw_p)) \
        if treatments else []
    horizon_reached = max_n is not None and t_total >= float(max_n)

    prev_srm = [float(d.evidence.get("srm", {}).get("p_value", 1.0)) for d in previous.values()
                if d.evidence and isinstance(d.evidence.get("srm"), dict)]
    srm = srm_check(
        {k: s.n for k, s in sums.items()},
        {k: s.ipw_n for k, s in sums.items()},
        {k: s.ipw_n_sq for k, s in sums.items()},
        alpha=SRM_ALPHA, min_samples=min_samples,
        previous_p=min(prev_srm) if prev_srm else 1.0,
    )

    arms_out = []
    for k, p_adj in zip(treatments, adjusted, strict=True):
        r = results[k]
        a, b = sums[control], sums[k]
        entry: dict[str, Any] = {
            "arm": k, "control": control, "n_control": a.n, "n_treatment": b.n,
            "mean_control": a.reward_sum / a.n if a.n else None,
            "mean_treatment": b.reward_sum / b.n if b.n else None,
        }
        if r is None or r.looks == 0:
            entry.update(decision="continue", reason="no tau2 yet: too few samples",
                         estimate=None, p_value=1.0, p_adjusted=1.0, ci_low=None,
                         ci_high=None, valid=False, looks=0)
        else:
            decision, reason = "continue", r.reason or "evidence not conclusive"
            if p_adj <= alpha:
                upper_side = r.ci_low > theta0 if r.ci_low > -math.inf else r.estimate > theta0
                decision = "treatment_better" if upper_side else "treatment_worse"
                reason = f"adjusted always-valid p {p_adj:.4g} <= alpha {alpha}"
            elif (min_effect is not None and r.valid
                  and -float(min_effect) < r.ci_low and r.ci_high < float(min_effect)):
                decision, reason = "futile", (f"confidence sequence inside ±{min_effect}: no "
                                              "meaningful effect")
            elif horizon_reached:
                decision, reason = "futile", f"max_n={max_n} impressions reached"
            elif not r.valid:
                reason = r.reason
            entry.update(
                decision=decision, reason=reason, estimate=r.estimate, p_value=r.p_value,
                p_adjusted=p_adj, p_now=r.p_now, ci_low=_num(r.ci_low), ci_high=_num(r.ci_high),
                log_lambda=r.log_lambda, valid=r.valid, looks=r.looks, cs_empty=r.cs_empty,
            )
        arms_out.append(entry)

    decided = [e for e in arms_out if e["decision"] in TERMINAL]
    stop = bool(arms_out) and len(decided) == len(arms_out)
    stop_reason = ""
    if stop:
        stop_reason = "; ".join(f"{e['arm']}: {e['decision']} ({e['reason']})" for e in arms_out)
    if srm.mismatch:
        warnings.append(f"sample-ratio mismatch (always-valid p {srm.p_value:.3g}): the served "
                        "traffic does not match the logged propensities; results are suspect")
    return {
        "method": method,
        "alpha": alpha,
        "cs_alpha": cs_alpha,
        "tau2": tau2,
        "tau2_source": tau2_source if tau2 is not None else None,
        "theta0": theta0,
        "correction": correction,
        "min_samples": min_samples,
        "max_n": max_n,
        "impressions": t_total,
        "control": control,
        "arms": arms_out,
        "srm": srm.as_dict(),
        "stop": stop and not srm.mismatch,
        "stop_reason": stop_reason,
        "warnings": warnings,
        "evaluated_at": now.isoformat(),
    }


def run_decisions(
    uow: Any, experiment: Experiment, *, actor: str = "allocator", now: datetime | None = None
) -> dict[str, Any]:
    """Evaluate, store one Decision row per treatment arm (when its data changed) and, with
    ``sequential.auto_stop``, stop a running experiment whose arms are all decided.

    Does not commit; the caller's unit of work does.
    """
    session: Session = uow.session
    now = now or datetime.now(UTC)
    ev = evaluate_experiment(session, experiment, now=now)
    previous = latest_decisions(session, experiment.id)
    common = {k: ev[k] for k in ("method", "tau2", "alpha", "cs_alpha", "correction", "theta0",
                                 "impressions")}
    common["srm"] = {k: ev["srm"][k] for k in ("p_value", "mismatch", "ratio")}
    stored = 0
    for arm in ev["arms"]:
        prev = previous.get(arm["arm"])
        if (prev is not None and prev.n_control == arm["n_control"]
                and prev.n_treatment == arm["n_treatment"] and prev.decision == arm["decision"]):
            continue  # nothing new since the last evaluation
        session.add(Decision(
            experiment_id=experiment.id, at=now, arm_key=arm["arm"], decision=arm["decision"],
            estimate=arm.get("estimate"), p_value=arm.get("p_value"),
            ci_low=arm.get("ci_low"), ci_high=arm.get("ci_high"),
            n_control=arm["n_control"], n_treatment=arm["n_treatment"],
            evidence={**common, "looks": arm.get("looks", 0), "p_adjusted": arm.get("p_adjusted"),
                      "reason": arm.get("reason"), "valid": arm.get("valid")},
        ))
        stored += 1
    session.flush()
    ev["stored"] = stored
    ev["stopped"] = False
    seq = experiment.sequential or {}
    if seq.get("auto_stop") and ev["stop"] and experiment.status == "running":
        from armlab.platform.service import stop_experiment

        stop_experiment(uow, key=experiment.key, actor=actor,
                        reason=f"sequential test decided: {ev['stop_reason']}", evidence=ev)
        ev["stopped"] = True
    return ev


def ship_guard(session: Session, experiment: Experiment, arm: str, force: bool) -> dict[str, Any]:
    """Evidence for shipping ``arm``; raises Conflict when it argues against it and not force.

    Against: shipping a treatment whose latest evaluation is not ``treatment_better`` (once
    the test has looked at enough data), or shipping the control while some treatment is
    ``treatment_better``. Without enough data there is no evidence either way.
    """
    ev = evaluate_experiment(session, experiment)
    by_arm = {e["arm"]: e for e in ev["arms"]}
    problem = ""
    if arm == experiment.control_arm_key:
        better = [e["arm"] for e in ev["arms"] if e["decision"] == "treatment_better"]
        if better:
            problem = f"treatment arm(s) {', '.join(better)} are better than the control {arm!r}"
    elif arm in by_arm and by_arm[arm].get("valid"):
        e = by_arm[arm]
        if e["decision"] != "treatment_better":
            lo, hi = e.get("ci_low"), e.get("ci_high")
            problem = (f"arm {arm!r} is {e['decision'].replace('_', ' ')} against control "
                       f"{experiment.control_arm_key!r}: estimate {e['estimate']:+.4g}, "
                       f"always-valid p {e['p_adjusted']:.3g}, confidence sequence "
                       f"[{'-inf' if lo is None else f'{lo:.4g}'}, "
                       f"{'inf' if hi is None else f'{hi:.4g}'}]")
    # Without a single valid look there is nothing to record (nor to argue against).
    has_evidence = any(e.get("valid") for e in ev["arms"])
    evidence: dict[str, Any] = {"sequential": ev} if has_evidence else {}
    if problem and not force:
        raise Conflict(f"shipping against the sequential evidence: {problem}; pass --force "
                       "(force=true) to ship anyway")
    if problem:
        evidence["overridden"] = problem
    return evidence


def render_sequential(console: Any, seq: dict[str, Any] | None) -> None:
    """Rich table of the sequential evaluation for ``armlab experiments show``."""
    if not seq:
        return
    if "error" in seq:
        console.print(f"sequential test unavailable: {seq['error']}")
        return
    from rich.table import Table

    def f(x: Any, spec: str = ".4g") -> str:
        return "-" if x is None else format(float(x), spec)

    title = (f"sequential test ({seq['method']}, alpha {seq['alpha']}, {seq['correction']}, "
             f"tau2 {f(seq.get('tau2'))})")
    table = Table(title=title)
    for col in ("arm", "decision", "estimate", "p (always-valid)", "p adjusted",
                "confidence sequence", "n control", "n treatment", "reason"):
        table.add_column(col)
    for a in seq.get("arms", []):
        lo = "-inf" if a.get("ci_low") is None else f(a["ci_low"])
        hi = "inf" if a.get("ci_high") is None else f(a["ci_high"])
        table.add_row(a["arm"], a["decision"], f(a.get("estimate"), "+.4g"), f(a.get("p_value")),
                      f(a.get("p_adjusted")), f"[{lo}, {hi}]", f(a["n_control"], ".0f"),
                      f(a["n_treatment"], ".0f"), str(a.get("reason", "")))
    console.print(table)
    srm = seq.get("srm") or {}
    if srm.get("checked"):
        console.print(f"SRM (always-valid, time-varying weights): p {f(srm.get('p_value'))}"
                      f"{'  MISMATCH' if srm.get('mismatch') else ''}")
    for w in seq.get("warnings", []):
        console.print(f"warning: {w}")
