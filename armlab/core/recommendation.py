"""Guardrail evaluation and the one recommendation (pure).

:func:`evaluate_guardrails` runs, per guardrail metric and treatment arm, the one-sided
always-valid non-inferiority test of :func:`armlab.core.stats.noninferiority.guardrail_test` on the
metric's per-arm sums (the same IPW machinery as the primary test, so valid under the bandit's
allocation) or, for ``unit: user``, of
:func:`armlab.core.stats.noninferiority_units.guardrail_unit_test` on its per-user sums (a
ratio estimator with a per-user, cluster-robust variance: one user's impressions are
correlated), and :func:`recommend` combines the primary test and the guardrails into the one
recommendation that the results endpoint, ``armlab experiments show``, the report and the
dashboard all show.

Multiplicity: each guardrail g has its own alpha_g; within it, Bonferroni over the K - 1
treatment arms (each arm's test at alpha_g / (K - 1)), so the probability that g rolls back any
arm that does not harm is <= alpha_g, and over all guardrails <= sum_g alpha_g (a union bound;
no further correction across guardrails, each guardrail's alpha is a separate budget the
experimenter chose). The primary test keeps its own alpha.

Running state: each look passes in the previous look's p-value of the (metric, arm) pair
(``prior_p``); the returned p is the minimum over the looks taken, which stays valid because
the test is always-valid (Johari, Koomen, Pekelis & Walsh, "Always Valid Inference",
Operations Research 2022). A breached arm stays breached.

Arms rolled back: an arm a breach took out of the allocation has propensity 0 from then on,
so its IPW contrast with the control (which needs p > 0 for every later impression) is no
longer an unbiased estimating sequence; its comparisons (primary and guardrails) are therefore
frozen at the look that rolled it back (the caller passes the frozen entries). The other arms'
comparisons stay valid: the contrast of two arms only uses the logged propensities of those
two arms, which are the ones actually used after the rollback too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from armlab.core.decisions import ArmLook, Decision, Evaluation
from armlab.core.evidence import ArmSums
from armlab.core.specs import GuardrailSpec
from armlab.core.stats.noninferiority import GuardrailResult, guardrail_test
from armlab.core.stats.noninferiority_units import UnitSums, guardrail_unit_test

#: States of one (guardrail, treatment) pair.
BREACHED, NON_INFERIOR, OK, NOT_INFORMATIVE = "breached", "non_inferior", "ok", "not_informative"


def _look(g: GuardrailSpec, control: ArmSums | UnitSums, treatment: ArmSums | UnitSums | None,
          t: float, **kw: Any) -> GuardrailResult:
    """One guardrail test: per unit when the sums are :class:`UnitSums`, else per impression."""
    common = dict(harm=g.harm, margin=g.margin.value, relative=g.margin.is_relative,
                  binary=g.binary, **kw)
    if isinstance(control, UnitSums):
        b = treatment if isinstance(treatment, UnitSums) else UnitSums()
        return guardrail_unit_test(control, b, **common)
    b_imp = treatment if isinstance(treatment, ArmSums) else ArmSums()
    return guardrail_test(t, control, b_imp, **common)


def evaluate_guardrails(
    specs: Sequence[GuardrailSpec],
    *,
    control: str,
    treatments: Sequence[str],
    sums: Mapping[str, Mapping[str, ArmSums]] | Mapping[str, Mapping[str, UnitSums]],
    previous: Mapping[tuple[str, str], float],
    frozen: Mapping[tuple[str, str], dict[str, Any]] | None = None,
    min_events: int = 30,
    min_samples: int = 1,
    horizon: float | None = None,
    floor: float | None = None,
) -> list[dict[str, Any]]:
    """One look at every (guardrail, treatment arm) pair; entries in spec then arm order.

    ``sums``: metric key -> arm key -> the metric's sums, per impression (:class:`ArmSums`)
    or per unit (:class:`UnitSums`, ``unit: user``: ``min_samples`` and ``horizon`` then count
    units); ``previous``: (metric, arm) -> the running p-value of the last look; ``frozen``:
    (metric, arm) -> an entry to keep as it is (an arm already rolled back); ``floor``: the
    experiment's exploration floor (0 for a fixed split), which with the arm count tunes tau²
    as the primary test does (None: the test's default)."""
    out: list[dict[str, Any]] = []
    m = max(len(treatments), 1)
    per_unit = any(isinstance(s, UnitSums) for v in sums.values() for s in v.values())
    for g in specs:
        per_arm: Mapping[str, ArmSums | UnitSums] = sums.get(g.key, {})
        t = sum(s.n for s in per_arm.values())
        control_sums = per_arm.get(control) or (UnitSums() if per_unit else ArmSums())
        for arm in treatments:
            kept = (frozen or {}).get((g.key, arm))
            if kept is not None:
                out.append({**kept, "frozen": True})
                continue
            r = _look(g, control_sums, per_arm.get(arm), t, alpha=g.alpha / m,
                      min_events=min_events, min_samples=min_samples, horizon=horizon,
                      prior_p=previous.get((g.key, arm)), n_arms=len(treatments) + 1,
                      **({} if floor is None else {"floor": floor}))
            state = (BREACHED if r.breached else NON_INFERIOR if r.non_inferior
                     else OK if r.informative else NOT_INFORMATIVE)
            treated = per_arm.get(arm)
            out.append({
                "metric": g.key, "arm": arm, "control": control, "state": state,
                "harm": g.harm, "margin": g.margin.value, "relative": g.margin.is_relative,
                "alpha_guardrail": g.alpha, "on_breach": g.on_breach,
                "n_control": control_sums.n, "n_treatment": treated.n if treated else 0.0,
                **({"unit": "user", "units_control": control_sums.units,
                    "units_treatment": treated.units if isinstance(treated, UnitSums) else 0.0}
                   if isinstance(control_sums, UnitSums) else {}),
                **r.as_dict(),
            })
    return out


def breach_summary(entry: Mapping[str, Any]) -> str:
    """One line of evidence for a breached (guardrail, arm) pair."""

    def f(x: Any) -> str:
        return "n/a" if x is None else f"{float(x):.4g}"

    margin = (f"{float(entry['margin']):.4g} relative" if entry.get("relative")
              else f"{float(entry['margin']):.4g}")
    return (f"guardrail {entry['metric']!r} breached by arm {entry['arm']!r} (harm "
            f"{entry['harm']}, margin {margin}): treatment mean {f(entry.get('treatment_mean'))} "
            f"vs control {f(entry.get('control_mean'))}, excess harm {f(entry.get('excess'))} "
            f"[{f(entry.get('excess_low'))}, {f(entry.get('excess_high'))}], always-valid p "
            f"{f(entry.get('p_value'))} <= alpha {f(entry.get('alpha'))}")


def breached_arms(guardrails: Sequence[Mapping[str, Any]],
                  rolled_back: Mapping[str, Any] | None = None) -> dict[str, list[str]]:
    """Arm -> the guardrail metrics it breached (arms already rolled back included)."""
    out: dict[str, list[str]] = {}
    for e in guardrails:
        if e.get("state") == BREACHED:
            out.setdefault(str(e["arm"]), []).append(str(e["metric"]))
    for arm, ev in (rolled_back or {}).items():
        metric = ev.get("metric") if isinstance(ev, Mapping) else None
        lst = out.setdefault(str(arm), [])
        if metric and metric not in lst:
            lst.append(str(metric))
    return out


def recommend(
    evaluation: Evaluation | Mapping[str, Any],
    guardrails: Sequence[Mapping[str, Any]],
    *,
    control: str,
    rolled_back: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The one recommendation: ``ship`` an arm, ``keep_control``, or ``continue``.

    * ship: some treatment is ``treatment_better`` on the primary test and breached no
      guardrail (the largest estimate among them); a breached arm is never recommended;
    * keep_control: every treatment is decided against (worse, futile), inconclusive at
      the horizon, or breached;
    * continue: otherwise. Reasons say why, arm by arm.

    ``evaluation``: the primary test's evaluation, typed or in its stored form."""
    if not isinstance(evaluation, Evaluation):
        evaluation = Evaluation.from_dict(evaluation)
    arms = evaluation.arms
    breached = breached_arms(guardrails, rolled_back)
    reasons: list[str] = []
    candidates: list[ArmLook] = []
    pending = []
    for e in arms:
        arm, decision = e.arm, e.decision
        if arm in breached:
            reasons.append(f"{arm}: breached guardrail(s) {', '.join(breached[arm])}"
                           + (" (rolled back)" if arm in (rolled_back or {}) else ""))
        elif decision == Decision.TREATMENT_BETTER:
            cleared = [g["metric"] for g in guardrails
                       if g.get("arm") == arm and g.get("state") == NON_INFERIOR]
            waiting = [g["metric"] for g in guardrails
                       if g.get("arm") == arm and g.get("state") != NON_INFERIOR]
            candidates.append(e)
            reasons.append(
                f"{arm}: better than {control} (estimate {float(e.estimate or 0):+.4g},"
                f" adjusted p {float(e.p_adjusted or 1):.3g})"
                + (f"; guardrails shown non-inferior: {', '.join(cleared)}" if cleared else "")
                + (f"; not yet shown non-inferior (no breach): {', '.join(waiting)}"
                   if waiting else ""))
        elif decision in (Decision.TREATMENT_WORSE, Decision.FUTILE, Decision.INCONCLUSIVE):
            reasons.append(f"{arm}: {decision.replace('_', ' ')} ({e.reason})")
        else:
            pending.append(arm)
            reasons.append(f"{arm}: evidence not conclusive yet")
    if candidates:
        best = max(candidates, key=lambda e: float(e.estimate or 0.0))
        return {"action": "ship", "arm": best.arm, "reasons": reasons}
    if arms and not pending:
        return {"action": "keep_control", "arm": control, "reasons": reasons}
    return {"action": "continue", "arm": None, "reasons": reasons}
