"""What the dashboard shows, read from stored data as plain values (a read model; no writes).

* :func:`list_rows`: one row per experiment (status, policy, age, traffic, primary decision,
  health badge), filtered by status and by a search over key and name;
* :func:`experiment_view`: an experiment's leaderboard, health panel, audit trail and arms;
* :func:`chart_data`: the series of its charts (allocation weights and P(best) over the
  allocator's snapshots, cumulative mean reward per arm, each treatment's confidence sequence
  versus the control with its stopping point).

``source="rollups"`` (the default, what the pages use) reads the consumer's time buckets
(``arm_rollups``), the per-arm totals, the snapshots and the decision rows, downsampled in SQL
to a few hundred points per series. ``source="raw"`` computes the same traffic figures by
scanning ``impressions``: the baseline of ``armlab bench dashboard``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import bindparam, func, select, text
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from armlab.adapters.db import rollups
from armlab.adapters.db.ingest_store import read_counters, read_dead_letters
from armlab.adapters.db.models import (
    AllocationSnapshot,
    AuditLog,
    ConsumerLag,
    ConsumerOffset,
    Decision,
    Experiment,
    Impression,
)
from armlab.adapters.db.queries import arm_totals
from armlab.adapters.db.uow import UnitOfWork
from armlab.core.clock import as_utc, as_utc_or_none, utcnow
from armlab.core.decisions import TERMINAL, Evaluation
from armlab.core.evidence import ArmSums
from armlab.core.ingest import OK_OUTCOMES
from armlab.services.registry import get_experiment, list_experiments
from armlab.services.results import build_results

SOURCES = ("rollups", "raw")
MAX_POINTS = 400
#: A running experiment whose newest snapshot is older than this many allocator intervals
#: gets a "stale" health badge.
STALE_INTERVALS = 3.0
#: A consumer's lag report older than this many seconds is shown as stale (consumers report
#: every 2 s by default, ``ARMLAB_LAG_REPORT_INTERVAL_S``).
LAG_STALE_S = 30.0
#: The window of the health panel's "dead letters in the last hour".
DEAD_LETTER_WINDOW_S = 3600


def _epoch_bin(session: Session, col: Any, width_s: float) -> ColumnElement[Any]:
    """``floor(epoch seconds of col / width_s)`` in this session's dialect."""
    return func.floor(rollups.epoch_seconds(session, col) / width_s)


def _ts(value: datetime | None) -> float | None:
    """Epoch seconds (what the charts plot), None passes through."""
    return None if value is None else as_utc(value).timestamp()


# --- the list ---------------------------------------------------------------------------------


def _latest_decisions_all(session: Session) -> dict[int, dict[str, Decision]]:
    latest = (
        select(func.max(Decision.id).label("id"))
        .group_by(Decision.experiment_id, Decision.arm_key)
        .subquery()
    )
    out: dict[int, dict[str, Decision]] = {}
    for d in session.scalars(select(Decision).join(latest, Decision.id == latest.c.id)):
        out.setdefault(d.experiment_id, {})[d.arm_key] = d
    return out


def primary_decision(exp: Experiment, decisions: dict[str, Decision]) -> str:
    """One phrase: what the experiment's evidence says now."""
    if exp.status == "shipped":
        return f"shipped {exp.shipped_arm_key}"
    if exp.status == "draft":
        return "not started"
    decided = [f"{k}: {d.decision.replace('_', ' ')}" for k, d in sorted(decisions.items())
               if d.decision in TERMINAL]
    if decided:
        return "; ".join(decided)
    return "continue" if decisions else "no evaluation yet"


def health_badge(
    exp: Experiment, decisions: dict[str, Decision], last_snapshot: datetime | None, *,
    allocator_interval_s: float, now: datetime,
) -> tuple[str, list[str]]:
    """``(level, reasons)`` with level ``ok`` | ``warn`` | ``bad`` | ``idle``."""
    if exp.status == "draft":
        return "idle", ["draft: no traffic"]
    reasons: list[str] = []
    level = "ok"
    if any(bool((d.evidence or {}).get("srm", {}).get("mismatch")) for d in decisions.values()):
        level, reasons = "bad", ["sample-ratio mismatch"]
    if exp.status == "running":
        limit = timedelta(seconds=STALE_INTERVALS * allocator_interval_s)
        if last_snapshot is None:
            reasons.append("no allocator snapshot yet")
            level = "warn" if level == "ok" else level
        elif now - last_snapshot > limit:
            reasons.append(f"last allocator run {int((now - last_snapshot).total_seconds())} s ago")
            level = "warn" if level == "ok" else level
        if float(exp.exploration_floor or 0.0) == 0.0 and exp.policy_name != "uniform":
            reasons.append("exploration floor 0")
    return level, reasons


def list_rows(
    uow: UnitOfWork, *, status: str | None = None, query: str = "",
    allocator_interval_s: float = 5.0, now: datetime | None = None,
) -> list[dict[str, Any]]:
    """The experiment list, newest first: one dict per experiment."""
    now = now or utcnow()
    session = uow.session
    exps = list_experiments(uow, status=status or None)
    q = query.strip().lower()
    if q:
        exps = [e for e in exps if q in e.key.lower() or q in (e.name or "").lower()]
    totals = arm_totals(session)
    decisions = _latest_decisions_all(session)
    last_snap = {
        int(eid): as_utc(at) for eid, at in session.execute(
            select(AllocationSnapshot.experiment_id, func.max(AllocationSnapshot.created_at))
            .group_by(AllocationSnapshot.experiment_id))
    }
    rows = []
    for e in exps:
        n = sum(int(s.n) for (eid, _), s in totals.items() if eid == e.id)
        decs = decisions.get(e.id, {})
        level, reasons = health_badge(e, decs, last_snap.get(e.id),
                                      allocator_interval_s=allocator_interval_s, now=now)
        started = as_utc_or_none(e.started_at)
        created = as_utc(e.created_at)
        rows.append({
            "key": e.key, "name": e.name, "status": e.status, "policy": e.policy_name,
            "arms": len(e.arms), "created_at": created, "started_at": started,
            "age_s": (now - (started or created)).total_seconds(),
            "impressions": n, "decision": primary_decision(e, decs),
            "health": level, "health_reasons": reasons,
        })
    return rows


# --- one experiment ---------------------------------------------------------------------------


def _raw_sums(session: Session, exp: Experiment, now: datetime) -> tuple[
        dict[str, ArmSums], dict[str, float]]:
    """Per-arm impressions and reward sums, and matured impressions, scanned from
    ``impressions`` (the benchmark's baseline)."""
    cutoff = now - timedelta(seconds=int(exp.attribution_window_s or 0))
    rows = session.execute(
        select(Impression.arm_key, func.count(), func.coalesce(func.sum(Impression.reward), 0.0),
               func.coalesce(func.sum(Impression.reward * Impression.reward), 0.0),
               func.count().filter(Impression.served_at <= cutoff))
        .where(Impression.experiment_id == exp.id).group_by(Impression.arm_key)
    ).all()
    sums = {str(a): ArmSums(n=float(n), reward_sum=float(s), reward_sumsq=float(q))
            for a, n, s, q, _ in rows}
    matured = {str(a): float(m) for a, _, _, _, m in rows}
    return sums, matured


def _prob_best(snapshot: dict[str, Any] | None, arm_keys: Sequence[str]) -> dict[str, float]:
    stats = (snapshot or {}).get("stats") or {}
    pb = stats.get("prob_best")
    if not isinstance(pb, list) or len(pb) != len(arm_keys):
        return {}
    return {k: float(v) for k, v in zip(arm_keys, pb, strict=True) if v is not None}


def _warnings(exp: Experiment, sequential: dict[str, Any]) -> list[str]:
    out = [str(w) for w in sequential.get("warnings", []) or []]
    if "error" in sequential:
        out.append(f"sequential test unavailable: {sequential['error']}")
    if (exp.status == "running" and float(exp.exploration_floor or 0.0) == 0.0
            and exp.policy_name != "uniform"):
        out.append("exploration floor is 0: the policy may starve an arm, and the "
                   "inverse-propensity weights of the sequential test then grow without bound")
    return out


def consumers(session: Session, now: datetime) -> list[dict[str, Any]]:
    """Per (group, topic, partition): the next offset stored with the effects and when its
    last batch committed, and the consumer's newest lag report (high watermark, lag, who
    reported it, its age; ``stale`` when older than :data:`LAG_STALE_S`)."""
    lag = {
        (g, t, int(p)): (hw, lg, who, as_utc(at))
        for g, t, p, hw, lg, who, at in session.execute(
            select(ConsumerLag.group_id, ConsumerLag.topic, ConsumerLag.partition,
                   ConsumerLag.high_watermark, ConsumerLag.lag, ConsumerLag.consumer,
                   ConsumerLag.reported_at))
    }
    out = []
    for g, t, p, o, u in session.execute(
            select(ConsumerOffset.group_id, ConsumerOffset.topic, ConsumerOffset.partition,
                   ConsumerOffset.next_offset, ConsumerOffset.updated_at)
            .order_by(ConsumerOffset.group_id, ConsumerOffset.topic, ConsumerOffset.partition)):
        hw, lg, who, at = lag.get((g, t, int(p)), (None, None, None, None))
        age = None if at is None else max(0.0, (now - at).total_seconds())
        out.append({"group": g, "topic": t, "partition": int(p), "next_offset": int(o),
                    "updated_at": as_utc_or_none(u),
                    "high_watermark": None if hw is None else int(hw),
                    "lag": None if lg is None else int(lg), "consumer": who,
                    "reported_at": at, "report_age_s": age,
                    "stale": age is None or age > LAG_STALE_S})
    return out


def dead_letters(session: Session, now: datetime) -> dict[str, dict[str, int]]:
    """Dead letters by reason: ``last_hour`` (the per-minute buckets) and ``all_time`` (the
    counters)."""
    return {
        "last_hour": dict(sorted(
            read_dead_letters(session, now - timedelta(seconds=DEAD_LETTER_WINDOW_S)).items())),
        "all_time": {k: v for k, v in sorted(read_counters(session).items())
                     if k not in OK_OUTCOMES},
    }


def experiment_view(
    uow: UnitOfWork, key: str, *, allocator_interval_s: float = 5.0,
    source: str = "rollups", now: datetime | None = None,
) -> dict[str, Any]:
    """Everything the experiment page shows except the chart series."""
    now = now or utcnow()
    session = uow.session
    exp = get_experiment(uow, key=key)
    results = build_results(uow, exp)
    snapshot = results.get("snapshot")
    arm_keys = [a.key for a in exp.arms]
    seq = results.get("sequential") or {}
    by_arm = {a.arm: a for a in Evaluation.from_dict(seq).arms}
    p_best = _prob_best(snapshot, arm_keys)
    snap_arms = ((snapshot or {}).get("stats") or {}).get("arms") or {}
    if source == "raw":
        raw, matured = _raw_sums(session, exp, now)
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
    last_run = as_utc_or_none(datetime.fromisoformat(snapshot["created_at"])) \
        if snapshot and snapshot.get("created_at") else None
    next_run = (last_run + timedelta(seconds=allocator_interval_s)
                if last_run is not None and exp.status == "running" else None)
    srm = seq.get("srm") or {}
    audit = [
        {"at": as_utc_or_none(a.at), "actor": a.actor, "action": a.action, "reason": a.reason,
         "before": a.before, "after": a.after, "evidence": a.evidence}
        for a in session.scalars(
            select(AuditLog).where(AuditLog.experiment_id == exp.id).order_by(AuditLog.id.desc())
        )
    ]
    return {
        "experiment": {
            "key": exp.key, "name": exp.name, "description": exp.description or "",
            "status": exp.status, "policy": exp.policy_name,
            "policy_params": dict(exp.policy_params or {}), "unit": exp.unit,
            "reward": f"{exp.reward_kind} ({exp.reward_metric})",
            "control": exp.control_arm_key, "shipped_arm": exp.shipped_arm_key,
            "exploration_floor": exp.exploration_floor, "burn_in": exp.burn_in,
            "attribution_window_s": exp.attribution_window_s, "version": exp.version,
            "created_at": as_utc_or_none(exp.created_at),
            "started_at": as_utc_or_none(exp.started_at),
            "ended_at": as_utc_or_none(exp.ended_at),
        },
        "arms": [{"key": a.key, "control": a.is_control, "variant": a.variant}
                 for a in exp.arms],
        "leaderboard": board,
        "total_impressions": sum(r["impressions"] for r in board),
        "sequential": {k: seq.get(k) for k in ("method", "alpha", "correction", "impressions",
                                               "stop", "stop_reason", "error")},
        "health": {
            "srm": srm, "warnings": _warnings(exp, seq),
            "last_allocator_run": last_run, "next_allocator_run": next_run,
            "snapshot_id": (snapshot or {}).get("id"),
            "consumers": consumers(session, now), "dead_letters": dead_letters(session, now),
        },
        "audit": audit,
        "recommendation": results.get("recommendation"),
        "has_guardrails": bool(exp.guardrails),
        "now": now,
    }


# --- charts -----------------------------------------------------------------------------------


def _bounds(session: Session, col: Any, where: ColumnElement[bool]) -> tuple[
        datetime, datetime] | None:
    lo, hi = session.execute(select(func.min(col), func.max(col)).where(where)).one()
    if lo is None or hi is None:
        return None
    return as_utc(lo), as_utc(hi)


def _sampled(
    session: Session, model: Any, col: Any, where: ColumnElement[bool], max_points: int,
    columns: Sequence[Any], *, per_arm: bool = False,
) -> tuple[list[Any], int, dict[str, float]]:
    """The newest row of each of ``max_points`` time bins of ``col`` (per arm when
    ``per_arm``), in one grouped scan joined back by id: ``(rows of columns, number of rows
    scanned, {arm: first terminal decision time})`` (the last only for decisions)."""
    bounds = _bounds(session, col, where)
    if bounds is None:
        return [], 0, {}
    lo, hi = bounds
    width = max((hi - lo).total_seconds() / max_points, 1e-3)
    groups: list[Any] = [_epoch_bin(session, col, width)]
    aggs: list[Any] = [func.max(model.id).label("id"), func.count().label("n")]
    if per_arm:
        groups.append(model.arm_key)
        aggs += [model.arm_key.label("arm"),
                 func.min(rollups.epoch_seconds(session, col))
                 .filter(model.decision.in_(TERMINAL)).label("first_terminal")]
    binned = select(*aggs).where(where).group_by(*groups).subquery()
    extra = [binned.c.n] + ([binned.c.arm, binned.c.first_terminal] if per_arm else [])
    rows = session.execute(select(*columns, *extra).join(binned, model.id == binned.c.id)
                           .order_by(model.id)).all()
    ncols = len(columns)
    total = sum(int(r[ncols]) for r in rows)
    first: dict[str, float] = {}
    if per_arm:
        for r in rows:
            arm, ft = r[ncols + 1], r[ncols + 2]
            if ft is not None:
                t = float(ft)
                first[arm] = min(first.get(arm, t), t)
    return [r[:ncols] for r in rows], total, first


#: The decision rows of the newest allocator pass at or before each of k + 1 evenly spaced
#: times: k + 1 backward probes of the (experiment_id, at) index instead of a scan of every
#: decision row (a pass writes all its arms' rows with the same ``at``).
_PG_PROBE_DECISIONS = text("""
SELECT DISTINCT ON (d.id) date_part('epoch', d.at), d.arm_key, d.estimate, d.ci_low,
       d.ci_high, d.decision
FROM generate_series(0, :k) AS i
CROSS JOIN LATERAL (
    SELECT max(x.at) AS t FROM decisions x
    WHERE x.experiment_id = :e AND x.at <= :lo + make_interval(secs => i * :w)) AS p
JOIN decisions d ON d.experiment_id = :e AND d.at = p.t
ORDER BY d.id
""")


def _probed_decisions(session: Session, experiment_id: int, max_points: int) -> tuple[
        list[Any], dict[str, float]]:
    """PostgreSQL: the sampled decision rows, and each arm's first terminal decision among
    them (so the stopping point is exact to one sampling interval)."""
    bounds = _bounds(session, Decision.at, Decision.experiment_id == experiment_id)
    if bounds is None:
        return [], {}
    lo, hi = bounds
    width = max((hi - lo).total_seconds() / max_points, 1e-3) * (1 + 1e-9)
    rows = session.execute(_PG_PROBE_DECISIONS, {"k": max_points, "e": experiment_id,
                                                  "lo": lo, "w": width}).all()
    first: dict[str, float] = {}
    for at, arm, *_, decision in rows:
        if decision in TERMINAL and arm not in first:
            first[arm] = float(at)
    return list(rows), first


def _by_x(rows: Sequence[tuple[float, dict[str, float | None]]], keys: Sequence[str]
          ) -> dict[str, Any]:
    """uPlot's aligned form ``{"x": [...], "series": {key: [...]}}`` from ``(x, {key: y})``
    rows in time order (a later row with the same x replaces the earlier one)."""
    xs: list[float] = []
    series: dict[str, list[float | None]] = {k: [] for k in keys}
    for x, values in rows:
        if xs and xs[-1] == x:
            for k in keys:
                series[k][-1] = values.get(k)
            continue
        xs.append(x)
        for k in keys:
            series[k].append(values.get(k))
    return {"x": xs, "series": series}


def _cumulative(
    per_arm: dict[str, tuple[list[float], list[float], list[float]]], width: float,
    keys: Sequence[str],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The cumulative mean and impressions charts from per-arm running totals at bin ends:
    every arm on the union of the bin ends, carried forward across bins it has none in, from
    a first point one bin before the first end (no impressions, no mean yet)."""
    ends = sorted({t for arm_ends, _, _ in per_arm.values() for t in arm_ends})
    if not ends:
        empty = {"x": [], "series": {k: [] for k in keys}}
        return empty, {"x": [], "series": {k: [] for k in keys}}
    xs = [ends[0] - width, *ends]
    index = {x: i for i, x in enumerate(xs)}
    means: dict[str, list[float | None]] = {}
    counts: dict[str, list[float | None]] = {}
    for k in keys:
        mean: list[float | None] = [None] * len(xs)
        count: list[float | None] = [None] * len(xs)
        count[0] = 0.0
        arm_ends, ns, rs = per_arm.get(k, ([], [], []))
        for t, n, r in zip(arm_ends, ns, rs, strict=True):
            i = index[t]
            count[i] = n
            mean[i] = r / n if n else None
        for values in (mean, count):
            last = None
            for i, v in enumerate(values):
                if v is None:
                    values[i] = last
                else:
                    last = v
        means[k], counts[k] = mean, count
    return {"x": xs, "series": means}, {"x": list(xs), "series": counts}


def _raw_mean_series(session: Session, exp: Experiment, max_points: int) -> tuple[
        int, list[tuple[float, str, float, float]]]:
    """Cumulative per-arm ``(bin end, arm, n, reward sum)`` over time bins of ``served_at``,
    scanned from impressions."""
    where = Impression.experiment_id == exp.id
    bounds = _bounds(session, Impression.served_at, where)
    if bounds is None:
        return 60, []
    lo, hi = bounds
    width = max(int((hi - lo).total_seconds() / max_points) + 1, 1)
    b = _epoch_bin(session, Impression.served_at, width).label("b")
    rows = session.execute(
        select(b, Impression.arm_key, func.count(), func.sum(Impression.reward))
        .where(where).group_by(b, Impression.arm_key).order_by(b, Impression.arm_key)
    ).all()
    running: dict[str, list[float]] = {}
    out = []
    for bucket, arm, n, r in rows:
        acc = running.setdefault(str(arm), [0.0, 0.0])
        acc[0] += float(n)
        acc[1] += float(r or 0.0)
        out.append((float((int(bucket) + 1) * width), str(arm), acc[0], acc[1]))
    return width, out


#: PostgreSQL: the newest snapshot of each of about max_points time bins, as three JSON
#: arrays (times, weights, P(best)) and the number of snapshots, in one row.
_PG_SNAPSHOTS = text("""
WITH b AS (
    SELECT max(id) AS id, count(*) AS n FROM allocation_snapshots
    WHERE experiment_id = :e GROUP BY floor(date_part('epoch', created_at) / :w))
SELECT (SELECT sum(n) FROM b),
       json_agg(json_build_array(date_part('epoch', s.created_at), s.weights,
                                 s.stats -> 'prob_best') ORDER BY s.created_at, s.id)::text
FROM b CROSS JOIN LATERAL (
    SELECT created_at, id, weights, stats FROM allocation_snapshots
    WHERE id = b.id OFFSET 0) AS s
""")


#: PostgreSQL: the decision rows of the newest allocator pass at or before each of k + 1
#: evenly spaced times (k + 1 backward probes of the (experiment_id, at) index, as in
#: _PG_PROBE_DECISIONS), one JSON row per arm, with each arm's first terminal decision.
#: Infinities and NaN become null (PostgreSQL would write them into JSON as strings; orjson
#: writes null for them on the portable path too).
_PG_DECISION_SERIES = text("""
WITH p AS (
    SELECT DISTINCT (SELECT max(x.at) FROM decisions x
                     WHERE x.experiment_id = :e
                       AND x.at <= :lo + make_interval(secs => i * :w)) AS t
    FROM generate_series(0, :k) AS i)
SELECT d.arm_key, count(*),
       json_agg(json_build_array(
           date_part('epoch', d.at),
           CASE WHEN d.estimate IN ('Infinity', '-Infinity', 'NaN') THEN NULL
                ELSE d.estimate END,
           CASE WHEN d.ci_low IN ('Infinity', '-Infinity', 'NaN') THEN NULL ELSE d.ci_low END,
           CASE WHEN d.ci_high IN ('Infinity', '-Infinity', 'NaN') THEN NULL
                ELSE d.ci_high END,
           d.decision) ORDER BY d.at, d.id)::text,
       min(date_part('epoch', d.at)) FILTER (WHERE d.decision IN :terminal)
FROM p CROSS JOIN LATERAL (
    SELECT id, at, arm_key, estimate, ci_low, ci_high, decision FROM decisions
    WHERE experiment_id = :e AND at = p.t OFFSET 0) AS d
GROUP BY d.arm_key
""").bindparams(bindparam("terminal", expanding=True))


def _pg_snapshots(session: Session, experiment_id: int, max_points: int) -> tuple[
        list[tuple[float, Any, Any]], int]:
    bounds = _bounds(session, AllocationSnapshot.created_at,
                     AllocationSnapshot.experiment_id == experiment_id)
    if bounds is None:
        return [], 0
    lo, hi = bounds
    width = max((hi - lo).total_seconds() / max_points, 1e-3)
    n, rows = session.execute(_PG_SNAPSHOTS, {"e": experiment_id, "w": width}).one()
    if not rows:
        return [], 0
    return [(at, weights, pb) for at, weights, pb in orjson.loads(rows)], int(n or 0)


def _pg_decisions(session: Session, experiment_id: int, max_points: int) -> tuple[
        dict[str, dict[str, Any]], int]:
    bounds = _bounds(session, Decision.at, Decision.experiment_id == experiment_id)
    if bounds is None:
        return {}, 0
    lo, hi = bounds
    width = max((hi - lo).total_seconds() / max_points, 1e-3) * (1 + 1e-9)
    out: dict[str, dict[str, Any]] = {}
    total = 0
    for arm, n, rows, first in session.execute(
            _PG_DECISION_SERIES, {"k": max_points, "e": experiment_id, "lo": lo, "w": width,
                                  "terminal": sorted(TERMINAL)}):
        total += int(n)
        xs, est, low, high, decision = (list(col) for col in zip(*orjson.loads(rows),
                                                                 strict=True))
        out[str(arm)] = {"x": xs, "estimate": est, "low": low, "high": high,
                         "decision": decision,
                         "stop_at": None if first is None else float(first)}
    return out, total


def chart_data(
    uow: UnitOfWork, key: str, *, source: str = "rollups", max_points: int = MAX_POINTS,
    sql_json: bool | None = None,
) -> dict[str, Any]:
    """The chart series of experiment ``key`` (epoch seconds on x).

    ``sql_json`` (default: on PostgreSQL) has the database build the sampled series as JSON
    arrays, one row per series instead of one row per point; the result is the same as the
    portable row-by-row path (a test compares them on PostgreSQL).
    """
    session = uow.session
    exp = get_experiment(uow, key=key)
    keys = [a.key for a in exp.arms]
    control = exp.control_arm_key
    if sql_json is None:
        sql_json = session.get_bind().dialect.name == "postgresql"
    if sql_json:
        # These queries cost ~10^4-10^5 planner units: a little more data would cross
        # jit_above_cost (10^5) and add ~20 ms of compilation to each (measured), for nothing.
        session.execute(text("SET LOCAL jit = off"))

    # Allocation weights and P(best): one point per allocator snapshot (sampled when many).
    snaps: Sequence[tuple[Any, Any, Any]]
    if sql_json:
        snaps, n_snaps = _pg_snapshots(session, exp.id, max_points)
    else:
        snaps, n_snaps, _ = _sampled(
            session, AllocationSnapshot, AllocationSnapshot.created_at,
            AllocationSnapshot.experiment_id == exp.id, max_points,
            [rollups.epoch_seconds(session, AllocationSnapshot.created_at),
             AllocationSnapshot.weights, AllocationSnapshot.stats["prob_best"]])
        snaps = sorted(snaps, key=lambda r: float(r[0]))
    weight_rows: list[tuple[float, dict[str, float | None]]] = []
    best_rows: list[tuple[float, dict[str, float | None]]] = []
    for at, weights, pb in snaps:
        x = float(at)
        weight_rows.append((x, {k: float((weights or {}).get(k, 0.0)) for k in keys}))
        if isinstance(pb, list) and len(pb) == len(keys):
            best_rows.append((x, {k: None if v is None else float(v)
                                  for k, v in zip(keys, pb, strict=True)}))

    # Cumulative mean reward per arm: the consumer's rollups (or a raw scan).
    if source == "raw":
        width, cumulative = _raw_mean_series(session, exp, max_points)
        per_arm: dict[str, tuple[list[float], list[float], list[float]]] = {}
        for t, arm, n, r in cumulative:
            ends, ns, rs = per_arm.setdefault(arm, ([], [], []))
            ends.append(t)
            ns.append(n)
            rs.append(r)
    else:
        width, per_arm = rollups.series_by_arm(session, exp.id, max_points=max_points)
    mean, impressions = _cumulative(per_arm, width, keys)

    # Each treatment's confidence sequence versus the control: the stored decision rows.
    cs: dict[str, dict[str, Any]] = {}
    if sql_json:
        by_arm, n_decs = _pg_decisions(session, exp.id, max_points)
        for k in keys:
            if k != control:
                cs[k] = by_arm.get(k) or {"x": [], "estimate": [], "low": [], "high": [],
                                          "decision": [], "stop_at": None}
    else:
        if session.get_bind().dialect.name == "postgresql":
            decs, first_terminal = _probed_decisions(session, exp.id, max_points)
            n_decs = len(decs)
        else:
            decs, n_decs, first_terminal = _sampled(
                session, Decision, Decision.at, Decision.experiment_id == exp.id, max_points,
                [rollups.epoch_seconds(session, Decision.at), Decision.arm_key,
                 Decision.estimate, Decision.ci_low, Decision.ci_high, Decision.decision],
                per_arm=True)
        cs = {k: {"x": [], "estimate": [], "low": [], "high": [], "decision": [],
                  "stop_at": first_terminal.get(k)}
              for k in keys if k != control}
        for at, arm, est, lo, hi, decision in sorted(decs, key=lambda r: float(r[0])):
            c = cs.get(arm)
            if c is None:
                continue
            c["x"].append(float(at))
            c["estimate"].append(est)
            c["low"].append(lo)
            c["high"].append(hi)
            c["decision"].append(decision)
    return {
        "key": exp.key, "arms": keys, "control": control, "status": exp.status,
        "source": source,
        "ended_at": _ts(exp.ended_at),
        "weights": _by_x(weight_rows, keys), "snapshots": n_snaps,
        "prob_best": _by_x(best_rows, keys),
        "mean": mean, "impressions": impressions,
        "bucket_s": width, "decisions": n_decs, "cs": cs,
    }


class DashboardReads:
    """The dashboard's read use cases, each in its own unit of work (read only: nothing is
    committed). ``uow_factory`` opens one; :attr:`armlab.bootstrap.Services.dashboard` wires
    it."""

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
