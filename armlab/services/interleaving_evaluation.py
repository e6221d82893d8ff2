"""The always-valid test of an interleaving experiment (``design: interleaving``) on stored
evidence: one running state, evaluated by the allocator, recorded, shown everywhere else.

* :func:`evaluate_interleaving`: one look: the per-pair sums of the units so far (one SQL
  aggregate, :func:`armlab.adapters.db.interleaving_queries.pair_sums`) through
  :func:`armlab.core.stats.interleaving.evaluate_preferences`, resuming the recorded state
  (running minimum p per pair, intersected confidence sequence, direction, decision). Once a
  look stops the experiment (``interleaving.stop_on``) the evaluation is *frozen*: later looks
  return it unchanged.
* :func:`record_interleaving`: stores the look as a ``decisions`` row with arm key
  :data:`ROW_KEY` (not a valid arm key) and the whole evaluation, its resumable state
  included, in the evidence; a look that changed nothing is not stored.
* :func:`shown_interleaving`: the last recorded look, with the live compared impressions, wins
  and clicks per pair and the rankers' current choice probabilities (latest snapshot);
  before the first look every pair is undecided with p = 1 (a look nobody records is not
  shown as evidence, as for the A/B test).
* :func:`interleaving_ship_guard`: shipping a ranker other than the decided Condorcet winner
  (or with none) is refused (409) unless forced; the evaluation goes into the audit row.

Nothing here commits; the caller's unit of work does.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from armlab.core.clock import utcnow
from armlab.core.records import ExperimentRecord, NewDecision
from armlab.core.specs import InterleavingSpec, SequentialSpec
from armlab.core.stats.interleaving import (
    InterleavingConfig,
    InterleavingResult,
    InterleavingState,
    PairState,
    PairSums,
    evaluate_preferences,
    ranker_pairs,
)
from armlab.core.stats.msprt import MsprtState
from armlab.core.status import ExperimentStatus
from armlab.errors import Conflict
from armlab.services.ports import Evidence

#: Arm key of the decision rows of an interleaving look ("~" is not allowed in arm keys).
ROW_KEY = "~interleaving"
_TALLY = ("compared", "a_wins", "b_wins", "a_clicks", "b_clicks")


def is_interleaving(experiment: ExperimentRecord) -> bool:
    return str(getattr(experiment, "design", "ab") or "ab") == "interleaving"


def interleaving_spec(experiment: ExperimentRecord) -> InterleavingSpec:
    return InterleavingSpec.model_validate(experiment.interleaving or {})


def policy_label(experiment: ExperimentRecord) -> str:
    """What chooses the traffic, as the pages show it: the A/B policy's name, or for an
    interleaving experiment how its rankers are chosen (its ``policy`` field is ignored)."""
    if not is_interleaving(experiment):
        return str(experiment.policy_name)
    k = len(experiment.arms)
    m = min(interleaving_spec(experiment).rankers_per_request or k, k)
    return ("interleaving (every ranker)" if m >= k
            else f"interleaving (dueling bandit, {m} of {k})")


def config_of(experiment: ExperimentRecord) -> InterleavingConfig:
    """The test's configuration: ``sequential.alpha``/``tau2`` and the interleaving spec."""
    spec = interleaving_spec(experiment)
    seq = SequentialSpec.model_validate(experiment.sequential or {})
    return InterleavingConfig(alpha=seq.alpha, planned_units=spec.planned_units,
                              tau2=seq.tau2, min_units=spec.min_units,
                              aggregate=spec.aggregate, stop_on=spec.stop_on)


def _num(x: float | None) -> float | None:
    """JSON-storable: non-finite floats (an open confidence bound) become None."""
    return None if x is None or not math.isfinite(float(x)) else float(x)


def state_to_dict(state: InterleavingState) -> dict[str, Any]:
    return {"looks": state.looks, "pairs": [
        {"a": a, "b": b, "p_value": ps.msprt.p_value, "ci_low": _num(ps.msprt.ci_low),
         "ci_high": _num(ps.msprt.ci_high), "looks": ps.msprt.looks,
         "direction": ps.direction, "decision": ps.decision}
        for (a, b), ps in state.pairs.items()]}


def state_from_dict(d: dict[str, Any]) -> InterleavingState:
    pairs: dict[tuple[str, str], PairState] = {}
    for p in d.get("pairs") or []:
        lo, hi = p.get("ci_low"), p.get("ci_high")
        ms = MsprtState(p_value=float(p["p_value"]),
                        ci_low=-math.inf if lo is None else float(lo),
                        ci_high=math.inf if hi is None else float(hi),
                        looks=int(p.get("looks", 0)))
        pairs[(str(p["a"]), str(p["b"]))] = PairState(ms, int(p["direction"]), p["decision"])
    return InterleavingState(pairs, int(d.get("looks", 0)))


def result_dict(res: InterleavingResult, *, units: float, now: datetime) -> dict[str, Any]:
    """The evaluation as stored and shown (JSON-clean)."""
    return {
        "rankers": list(res.rankers), "units": units,
        "pairs": [{"a": p.a, "b": p.b, "n_units": p.n_units, "estimate": _num(p.estimate),
                   "ci_low": _num(p.ci_low), "ci_high": _num(p.ci_high),
                   "p_value": p.p_value, "p_adjusted": p.p_adjusted,
                   "decision": p.decision, "winner": p.winner, "valid": p.valid,
                   "reason": p.reason} for p in res.pairs],
        "condorcet_winner": res.condorcet_winner, "stop": res.stop,
        "stop_reason": res.stop_reason, "alpha": res.alpha, "cs_alpha": res.cs_alpha,
        "looks": res.looks, "frozen": res.state.frozen is not None,
        "state": state_to_dict(res.state), "evaluated_at": now.isoformat(),
    }


def _stored(evidence: Evidence, experiment: ExperimentRecord) -> dict[str, Any] | None:
    row = evidence.latest_look(experiment.id, ROW_KEY)
    ev = (row.evidence or {}).get("interleaving") if row is not None else None
    return dict(ev) if isinstance(ev, dict) else None


def evaluate_interleaving(evidence: Evidence, experiment: ExperimentRecord, *,
                          now: datetime | None = None) -> dict[str, Any]:
    """One look continuing the recorded state (frozen after a stop). Stores nothing."""
    now = now or utcnow()
    previous = _stored(evidence, experiment)
    if previous is not None and previous.get("frozen"):
        return previous
    cfg = config_of(experiment)
    rankers = [a.key for a in experiment.arms]
    n, raw = evidence.interleaving_sums(experiment.id, cfg.aggregate)
    sums = {p: PairSums(n, *raw.get(p, (0.0, 0.0))) for p in ranker_pairs(rankers)}
    state = state_from_dict(previous["state"]) if previous else None
    res = evaluate_preferences(rankers, sums, config=cfg, state=state)
    ev = result_dict(res, units=n, now=now)
    ev["tallies"] = _tallies(evidence, experiment)
    return ev


def _tallies(evidence: Evidence, experiment: ExperimentRecord) -> dict[str, list[int]]:
    return {f"{a}|{b}": list(t)
            for (a, b), t in evidence.interleaving_tallies(experiment.id).items()}


def _changed(prev: dict[str, Any] | None, ev: dict[str, Any]) -> bool:
    if prev is None:
        return True
    keep = ("units", "condorcet_winner", "stop", "frozen")
    strip = [{k: v for k, v in p.items() if k != "looks"} for p in ev["state"]["pairs"]]
    old = [{k: v for k, v in p.items() if k != "looks"}
           for p in (prev.get("state") or {}).get("pairs") or []]
    return strip != old or any(prev.get(k) != ev.get(k) for k in keep)


def look_decision(ev: dict[str, Any]) -> str:
    """The decision column of a look's row: ``condorcet_winner``, ``all_decided`` (stopped
    without one) or ``continue``."""
    return ("condorcet_winner" if ev.get("condorcet_winner")
            else "all_decided" if ev.get("stop") else "continue")


def look_phrase(decision: str) -> str:
    """The experiment list's phrase for an interleaving look's decision column."""
    return {"condorcet_winner": "Condorcet winner decided",
            "all_decided": "every pair decided"}.get(decision, "continue")


def record_interleaving(evidence: Evidence, experiment: ExperimentRecord, ev: dict[str, Any], *,
                        now: datetime) -> bool:
    """Store the look (one decision row) unless it changed nothing; returns whether stored."""
    if not _changed(_stored(evidence, experiment), ev):
        return False
    adjusted = [float(p["p_adjusted"]) for p in ev["pairs"]]
    cw = ev.get("condorcet_winner")
    evidence.add_decision(NewDecision(
        experiment_id=experiment.id, at=now, arm_key=ROW_KEY,
        decision=look_decision(ev),
        estimate=None, p_value=min(adjusted) if adjusted else None, ci_low=None, ci_high=None,
        n_control=0.0, n_treatment=float(ev["units"]),
        evidence={"interleaving": ev, "winner": cw}))
    return True


def empty_evaluation(experiment: ExperimentRecord) -> dict[str, Any]:
    """Before the first recorded look: every pair undecided, p = 1, no confidence bounds."""
    cfg = config_of(experiment)
    rankers = [a.key for a in experiment.arms]
    pairs = ranker_pairs(rankers)
    return {"rankers": rankers, "units": 0.0, "pairs": [
        {"a": a, "b": b, "n_units": 0.0, "estimate": None, "ci_low": None, "ci_high": None,
         "p_value": 1.0, "p_adjusted": 1.0, "decision": "undecided", "winner": None,
         "valid": False, "reason": "no recorded look yet (the allocator evaluates the test "
         "on its cadence)"} for a, b in pairs],
        "condorcet_winner": None, "stop": False, "stop_reason": "", "alpha": cfg.alpha,
        "cs_alpha": cfg.alpha / max(len(pairs), 1), "looks": 0, "frozen": False}


def _choice(evidence: Evidence, experiment: ExperimentRecord) -> tuple[dict[str, float],
                                                                  dict[str, float], int | None]:
    """(P(ranker enters), P(pair compared) by "a|b", m) from the latest running snapshot."""
    snap = evidence.latest_snapshot(experiment.id)
    stats = dict(snap.stats or {}) if snap is not None else {}
    if stats.get("design") != "interleaving":
        return {}, {}, None
    enter: dict[str, float] = {}
    for s in stats.get("sets") or []:
        for r in s["rankers"]:
            enter[r] = enter.get(r, 0.0) + float(s["probability"])
    pairs = {f"{p['a']}|{p['b']}": float(p["propensity"]) for p in stats.get("pairs") or []}
    return enter, pairs, int(stats["m"]) if stats.get("m") is not None else None


def shown_interleaving(evidence: Evidence, experiment: ExperimentRecord) -> dict[str, Any]:
    """The ``interleaving`` block of the results, the dashboard and the report (module doc)."""
    ev = _stored(evidence, experiment)
    recorded = ev is not None
    out = dict(ev) if ev is not None else empty_evaluation(experiment)
    out.pop("state", None)
    out.pop("tallies", None)
    tallies = evidence.interleaving_tallies(experiment.id)
    enter, propensity, m = _choice(evidence, experiment)
    pairs = []
    for p in out["pairs"]:
        t = dict(zip(_TALLY, tallies.get((p["a"], p["b"]), (0, 0, 0, 0, 0)), strict=True))
        decisive = t["a_wins"] + t["b_wins"]
        pairs.append({**p, **t, "win_rate_a": t["a_wins"] / decisive if decisive else None,
                      "propensity": propensity.get(f"{p['a']}|{p['b']}")})
    out["pairs"] = pairs
    out["recorded"] = recorded
    out["choice"] = {"m": m, "enter": enter}
    return out


def interleaving_ship_guard(evidence: Evidence, experiment: ExperimentRecord, arm: str,
                            force: bool) -> dict[str, Any]:
    """What to audit for shipping ``arm``; Conflict (409) when it is not the decided
    Condorcet winner and not ``force``. A running experiment gets one more recorded look; a
    stopped one shows its recorded (frozen) evaluation."""
    running = experiment.status == ExperimentStatus.RUNNING
    ev = None if running else _stored(evidence, experiment)
    if ev is None:
        now = utcnow()
        ev = evaluate_interleaving(evidence, experiment, now=now)
        record_interleaving(evidence, experiment, ev, now=now)
    winner = ev.get("condorcet_winner")
    problem = ""
    if winner != arm:
        problem = (f"ranker {arm!r} is not the decided Condorcet winner ("
                   + (f"{winner!r} is" if winner else "no ranker is decided better than "
                      "every other yet") + ")")
    if problem and not force:
        raise Conflict(f"shipping against the interleaving evidence: {problem}; pass --force "
                       "(force=true) to ship anyway")
    audited: dict[str, Any] = {"interleaving": ev}
    if problem:
        audited["overridden"] = problem
    return audited
