"""What the dashboard shows, read from stored data as plain values (a read model; no writes).

* :func:`list_rows`: one row per experiment (status, policy, age, traffic, primary decision,
  health badge), filtered by status and by a search over key and name;
* :func:`experiment_view`: an experiment's leaderboard, health panel, audit trail and arms;
* :func:`chart_data`: the series of its charts (allocation weights and P(best) over the
  allocator's snapshots, cumulative mean reward per arm, each treatment's confidence sequence
  versus the control with its stopping point).

This module shapes view models; the reads are the unit of work's ``dashboard`` port
(:class:`armlab.services.ports.DashboardQueries`, :mod:`armlab.adapters.db.dashboard_queries`
on the database). ``source="rollups"`` (the default, what the pages use) reads the consumer's
time buckets (``arm_rollups``), the per-arm totals, the snapshots and the decision rows,
downsampled in SQL to a few hundred points per series. ``source="raw"`` computes the same
traffic figures by scanning ``impressions``: the baseline of ``armlab bench dashboard``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from armlab.core.clock import as_utc, as_utc_or_none, utcnow
from armlab.core.decisions import TERMINAL, Evaluation
from armlab.core.event_effects import OK_OUTCOMES
from armlab.core.evidence import ArmSums
from armlab.core.readings import LatestDecision
from armlab.core.records import ExperimentRecord
from armlab.core.status import ExperimentStatus
from armlab.services import interleaving_evaluation as il
from armlab.services.dashboard_charts import chart_data
from armlab.services.ports import ReadsUnitOfWork
from armlab.services.registry import get_experiment, list_experiments
from armlab.services.results import build_results

SOURCES = ("rollups", "raw")
#: A running experiment whose newest snapshot is older than this many allocator intervals
#: gets a "stale" health badge.
STALE_INTERVALS = 3.0
#: A consumer's lag report older than this many seconds is shown as stale (consumers report
#: every 2 s by default, ``ARMLAB_LAG_REPORT_INTERVAL_S``).
LAG_STALE_S = 30.0
#: The window of the health panel's "dead letters in the last hour".
DEAD_LETTER_WINDOW_S = 3600


# --- the list ---------------------------------------------------------------------------------


def primary_decision(exp: ExperimentRecord, decisions: Mapping[str, LatestDecision]) -> str:
    """One phrase: what the experiment's evidence says now."""
    if exp.status == ExperimentStatus.SHIPPED:
        return f"shipped {exp.shipped_arm_key}"
    if exp.status == ExperimentStatus.DRAFT:
        return "not started"
    if il.ROW_KEY in decisions:  # an interleaving experiment's look
        return il.look_phrase(decisions[il.ROW_KEY].decision)
    decided = [f"{k}: {d.decision.replace('_', ' ')}" for k, d in sorted(decisions.items())
               if d.decision in TERMINAL]
    if decided:
        return "; ".join(decided)
    return "continue" if decisions else "no evaluation yet"


def health_badge(
    exp: ExperimentRecord, decisions: Mapping[str, LatestDecision],
    last_snapshot: datetime | None, *,
    allocator_interval_s: float, now: datetime,
) -> tuple[str, list[str]]:
    """``(level, reasons)`` with level ``ok`` | ``warn`` | ``bad`` | ``idle``."""
    if exp.status == ExperimentStatus.DRAFT:
        return "idle", ["draft: no traffic"]
    reasons: list[str] = []
    level = "ok"
    if any(d.srm_mismatch for d in decisions.values()):
        level, reasons = "bad", ["sample-ratio mismatch"]
    if exp.status == ExperimentStatus.RUNNING:
        limit = timedelta(seconds=STALE_INTERVALS * allocator_interval_s)
        if last_snapshot is None:
            reasons.append("no allocator snapshot yet")
            level = "warn" if level == "ok" else level
        elif now - last_snapshot > limit:
            reasons.append(f"last allocator run {int((now - last_snapshot).total_seconds())} s ago")
            level = "warn" if level == "ok" else level
        if (float(exp.exploration_floor or 0.0) == 0.0 and exp.policy_name != "uniform"
                and not il.is_interleaving(exp)):
            reasons.append("exploration floor 0")
    return level, reasons


def list_rows(
    uow: ReadsUnitOfWork, *, status: str | None = None, query: str = "",
    allocator_interval_s: float = 5.0, now: datetime | None = None,
) -> list[dict[str, Any]]:
    """The experiment list, newest first: one dict per experiment."""
    now = now or utcnow()
    exps = list_experiments(uow, status=status or None)
    q = query.strip().lower()
    if q:
        exps = [e for e in exps if q in e.key.lower() or q in (e.name or "").lower()]
    reads = uow.dashboard
    traffic, decisions = reads.impressions_by_experiment(), reads.latest_decisions()
    last_snap = reads.last_snapshot_times()
    rows = []
    for e in exps:
        decs = decisions.get(e.id, {})
        level, reasons = health_badge(e, decs, last_snap.get(e.id),
                                      allocator_interval_s=allocator_interval_s, now=now)
        started = as_utc_or_none(e.started_at)
        created = as_utc(e.created_at)
        rows.append({
            "key": e.key, "name": e.name, "status": e.status, "policy": il.policy_label(e),
            "arms": len(e.arms), "created_at": created, "started_at": started,
            "age_s": (now - (started or created)).total_seconds(),
            "impressions": traffic.get(e.id, 0), "decision": primary_decision(e, decs),
            "health": level, "health_reasons": reasons,
        })
    return rows


# --- one experiment ---------------------------------------------------------------------------


def _prob_best(snapshot: dict[str, Any] | None, arm_keys: Sequence[str]) -> dict[str, float]:
    stats = (snapshot or {}).get("stats") or {}
    pb = stats.get("prob_best")
    if not isinstance(pb, list) or len(pb) != len(arm_keys):
        return {}
    return {k: float(v) for k, v in zip(arm_keys, pb, strict=True) if v is not None}


def _warnings(exp: ExperimentRecord, sequential: dict[str, Any]) -> list[str]:
    out = [str(w) for w in sequential.get("warnings", []) or []]
    if "error" in sequential:
        out.append(f"sequential test unavailable: {sequential['error']}")
    if (exp.status == ExperimentStatus.RUNNING and float(exp.exploration_floor or 0.0) == 0.0
            and exp.policy_name != "uniform" and not il.is_interleaving(exp)):
        out.append("exploration floor is 0: the policy may starve an arm, and the "
                   "inverse-propensity weights of the sequential test then grow without bound")
    return out


def consumers(uow: ReadsUnitOfWork, now: datetime) -> list[dict[str, Any]]:
    """Per (group, topic, partition): the next offset stored with the effects and when its
    last batch committed, and the consumer's newest lag report (high watermark, lag, who
    reported it, its age; ``stale`` when older than :data:`LAG_STALE_S`)."""
    out = []
    for c in uow.dashboard.consumer_positions():
        at = c.reported_at
        age = None if at is None else max(0.0, (now - at).total_seconds())
        out.append({"group": c.group, "topic": c.topic, "partition": c.partition,
                    "next_offset": c.next_offset, "updated_at": c.updated_at,
                    "high_watermark": c.high_watermark, "lag": c.lag,
                    "consumer": c.consumer, "reported_at": at, "report_age_s": age,
                    "stale": age is None or age > LAG_STALE_S})
    return out


def dead_letters(uow: ReadsUnitOfWork, now: datetime) -> dict[str, dict[str, int]]:
    """Dead letters by reason: ``last_hour`` (the per-minute buckets) and ``all_time`` (the
    counters)."""
    reads = uow.dashboard
    since = now - timedelta(seconds=DEAD_LETTER_WINDOW_S)
    return {
        "last_hour": dict(sorted(reads.dead_letters_since(since).items())),
        "all_time": {k: v for k, v in sorted(reads.ingest_counters().items())
                     if k not in OK_OUTCOMES},
    }


def _leaderboard(
    uow: ReadsUnitOfWork, exp: ExperimentRecord, results: dict[str, Any], *, source: str,
    now: datetime,
) -> list[dict[str, Any]]:
    """One row per arm: traffic (from ``results`` or, with ``source="raw"``, a scan of the
    impressions), the sequential test's verdict, P(best), weight and guardrails."""
    snapshot = results.get("snapshot")
    seq = results.get("sequential") or {}
    by_arm = {a.arm: a for a in Evaluation.from_dict(seq).arms}
    p_best = _prob_best(snapshot, [a.key for a in exp.arms])
    snap_arms = ((snapshot or {}).get("stats") or {}).get("arms") or {}
    if source == "raw":
        cutoff = now - timedelta(seconds=int(exp.attribution_window_s or 0))
        raw, matured = uow.dashboard.raw_arm_sums(exp.id, cutoff)
    board = []
    for arm in results["arms"]:
        k = arm["key"]
        if source == "raw":
            s = raw.get(k) or ArmSums()
            n, mean, mat = int(s.n), s.mean, matured.get(k)
        else:
            n, mean = arm["impressions"], arm["mean"]
            mat = (snap_arms.get(k) or {}).get("matured_n")
        ev = by_arm.get(k)
        board.append({
            "key": k, "control": arm["control"], "impressions": n,
            "matured": None if mat is None else int(mat), "mean": mean,
            "estimate": ev and ev.estimate, "ci_low": ev and ev.ci_low,
            "ci_high": ev and ev.ci_high, "p_adjusted": ev and ev.p_adjusted,
            "p_best": p_best.get(k), "weight": arm["weight"],
            "decision": "control" if arm["control"] else ev.decision.value if ev else "—",
            "reason": ev.reason if ev else "",
            "rolled_back": bool(arm.get("rolled_back")),
            "guardrails": [g for g in results.get("guardrails") or [] if g.get("arm") == k],
        })
    return board


def _header(exp: ExperimentRecord) -> dict[str, Any]:
    """The experiment's own fields, as the page's header shows them."""
    return {
        "key": exp.key, "name": exp.name, "description": exp.description or "",
        "status": exp.status, "policy": il.policy_label(exp),
        "policy_params": dict(exp.policy_params or {}), "unit": exp.unit,
        "reward": f"{exp.reward_kind} ({exp.reward_metric})",
        "control": exp.control_arm_key, "shipped_arm": exp.shipped_arm_key,
        "exploration_floor": exp.exploration_floor, "burn_in": exp.burn_in,
        "attribution_window_s": exp.attribution_window_s, "version": exp.version,
        "created_at": as_utc_or_none(exp.created_at),
        "started_at": as_utc_or_none(exp.started_at),
        "ended_at": as_utc_or_none(exp.ended_at),
    }


def _health(
    uow: ReadsUnitOfWork, exp: ExperimentRecord, results: dict[str, Any], *,
    allocator_interval_s: float, now: datetime,
) -> dict[str, Any]:
    """The health panel: SRM, warnings, the allocator's last and next run, the consumers and
    the dead letters."""
    snapshot, seq = results.get("snapshot"), results.get("sequential") or {}
    last_run = as_utc_or_none(datetime.fromisoformat(snapshot["created_at"])) \
        if snapshot and snapshot.get("created_at") else None
    next_run = (last_run + timedelta(seconds=allocator_interval_s)
                if last_run is not None and exp.status == ExperimentStatus.RUNNING else None)
    return {
        "srm": seq.get("srm") or {}, "warnings": _warnings(exp, seq),
        "last_allocator_run": last_run, "next_allocator_run": next_run,
        "snapshot_id": (snapshot or {}).get("id"),
        "consumers": consumers(uow, now), "dead_letters": dead_letters(uow, now),
    }


def experiment_view(
    uow: ReadsUnitOfWork, key: str, *, allocator_interval_s: float = 5.0,
    source: str = "rollups", now: datetime | None = None,
) -> dict[str, Any]:
    """Everything the experiment page shows except the chart series."""
    now = now or utcnow()
    exp = get_experiment(uow, key=key)
    results = build_results(uow, exp)
    seq = results.get("sequential") or {}
    board = _leaderboard(uow, exp, results, source=source, now=now)
    audit = [
        {"at": as_utc_or_none(a.at), "actor": a.actor, "action": a.action, "reason": a.reason,
         "before": a.before, "after": a.after, "evidence": a.evidence}
        for a in reversed(uow.audit.for_experiment(exp.id))
    ]
    return {
        "experiment": _header(exp),
        "arms": [{"key": a.key, "control": a.is_control, "variant": a.variant}
                 for a in exp.arms],
        "leaderboard": board,
        "total_impressions": sum(r["impressions"] for r in board),
        "sequential": {k: seq.get(k) for k in ("method", "alpha", "correction", "impressions",
                                               "stop", "stop_reason", "error")},
        "health": _health(uow, exp, results, allocator_interval_s=allocator_interval_s,
                          now=now),
        "audit": audit,
        "recommendation": results.get("recommendation"),
        "has_guardrails": bool(exp.guardrails),
        "design": results.get("design", "ab"),
        "interleaving": results.get("interleaving"),
        "contextual": results.get("contextual"),
        "now": now,
    }


class DashboardReads:
    """The dashboard's read use cases, each in its own (never committed) unit of work from
    ``uow_factory``; :attr:`armlab.bootstrap.Services.dashboard` wires it."""

    def __init__(self, uow_factory: Callable[[], Any]) -> None:
        self._uow = uow_factory

    def list_rows(self, *, status: str | None, query: str,
                  allocator_interval_s: float) -> list[dict[str, Any]]:
        """The experiment list's rows (see :func:`list_rows`)."""
        with self._uow() as uow:
            return list_rows(uow, status=status, query=query,
                             allocator_interval_s=allocator_interval_s)

    def experiment_view(self, key: str, *, allocator_interval_s: float,
                        source: str = "rollups") -> dict[str, Any]:
        """One experiment's page (see :func:`experiment_view`)."""
        with self._uow() as uow:
            return experiment_view(uow, key, allocator_interval_s=allocator_interval_s,
                                   source=source)

    def chart_data(self, key: str, *, source: str = "rollups") -> dict[str, Any]:
        """One experiment's chart series (see :func:`chart_data`)."""
        with self._uow() as uow:
            return chart_data(uow, key, source=source)
