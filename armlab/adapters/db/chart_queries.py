"""The dashboard's chart series, read and downsampled in SQL (a few hundred points per series).

:func:`chart_series` returns a :class:`~armlab.core.readings.ChartSeries`:

* the allocation snapshots (weights, P(best)): the newest of each of ``max_points`` time bins;
* the cumulative reward per arm: the consumer's time buckets (``arm_rollups``, re-binned in
  :func:`armlab.adapters.db.rollups.series_by_arm`) or, with ``source="raw"``, a scan of
  ``impressions`` (the baseline of ``armlab bench dashboard``);
* each arm's sequential-test decision rows, sampled, with its first terminal decision.

``sql_json`` (the default on PostgreSQL) has the database build the sampled series as JSON
arrays, one row per series instead of one row per point; the portable row-by-row path gives
the same result (a test compares them on PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import bindparam, func, select, text
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from armlab.adapters.db import rollups
from armlab.adapters.db.models import AllocationSnapshot, Decision, Impression
from armlab.core.clock import as_utc
from armlab.core.decisions import TERMINAL
from armlab.core.readings import ArmSeries, ChartSeries


def epoch_bin(session: Session, col: Any, width_s: float) -> ColumnElement[Any]:
    """``floor(epoch seconds of col / width_s)`` in this session's dialect."""
    return func.floor(rollups.epoch_seconds(session, col) / width_s)


def time_bounds(session: Session, col: Any, where: ColumnElement[bool]) -> tuple[
        datetime, datetime] | None:
    """The first and last value of the timestamp ``col`` over the rows ``where`` selects
    (None when it selects none)."""
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
    bounds = time_bounds(session, col, where)
    if bounds is None:
        return [], 0, {}
    lo, hi = bounds
    width = max((hi - lo).total_seconds() / max_points, 1e-3)
    groups: list[Any] = [epoch_bin(session, col, width)]
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
    bounds = time_bounds(session, Decision.at, Decision.experiment_id == experiment_id)
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


def _raw_rewards(session: Session, experiment_id: int, max_points: int) -> tuple[
        int, dict[str, ArmSeries]]:
    """Cumulative per-arm ``(bin ends, n, reward sum)`` over time bins of ``served_at``,
    scanned from impressions."""
    where = Impression.experiment_id == experiment_id
    bounds = time_bounds(session, Impression.served_at, where)
    if bounds is None:
        return 60, {}
    lo, hi = bounds
    width = max(int((hi - lo).total_seconds() / max_points) + 1, 1)
    b = epoch_bin(session, Impression.served_at, width).label("b")
    rows = session.execute(
        select(b, Impression.arm_key, func.count(), func.sum(Impression.reward))
        .where(where).group_by(b, Impression.arm_key).order_by(b, Impression.arm_key)
    ).all()
    running: dict[str, list[float]] = {}
    out: dict[str, ArmSeries] = {}
    for bucket, arm, n, r in rows:
        acc = running.setdefault(str(arm), [0.0, 0.0])
        acc[0] += float(n)
        acc[1] += float(r or 0.0)
        ends, ns, rs = out.setdefault(str(arm), ([], [], []))
        ends.append(float((int(bucket) + 1) * width))
        ns.append(acc[0])
        rs.append(acc[1])
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
    bounds = time_bounds(session, AllocationSnapshot.created_at,
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
    bounds = time_bounds(session, Decision.at, Decision.experiment_id == experiment_id)
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


def _snapshots(session: Session, experiment_id: int, max_points: int, sql_json: bool
               ) -> tuple[list[tuple[float, Any, Any]], int]:
    """The sampled snapshots ``(epoch seconds, weights, P(best))`` in time order, and how
    many there are."""
    if sql_json:
        return _pg_snapshots(session, experiment_id, max_points)
    snaps, n, _ = _sampled(
        session, AllocationSnapshot, AllocationSnapshot.created_at,
        AllocationSnapshot.experiment_id == experiment_id, max_points,
        [rollups.epoch_seconds(session, AllocationSnapshot.created_at),
         AllocationSnapshot.weights, AllocationSnapshot.stats["prob_best"]])
    return [(float(at), w, pb) for at, w, pb in sorted(snaps, key=lambda r: float(r[0]))], n


def _decisions(session: Session, experiment_id: int, max_points: int, sql_json: bool
               ) -> tuple[dict[str, dict[str, Any]], int]:
    """The sampled decision rows by arm (see :class:`ChartSeries`), and how many there are."""
    if sql_json:
        return _pg_decisions(session, experiment_id, max_points)
    if session.get_bind().dialect.name == "postgresql":
        decs, first_terminal = _probed_decisions(session, experiment_id, max_points)
        n_decs = len(decs)
    else:
        decs, n_decs, first_terminal = _sampled(
            session, Decision, Decision.at, Decision.experiment_id == experiment_id,
            max_points,
            [rollups.epoch_seconds(session, Decision.at), Decision.arm_key, Decision.estimate,
             Decision.ci_low, Decision.ci_high, Decision.decision],
            per_arm=True)
    out: dict[str, dict[str, Any]] = {}
    for at, arm, est, lo, hi, decision in sorted(decs, key=lambda r: float(r[0])):
        c = out.setdefault(str(arm), {"x": [], "estimate": [], "low": [], "high": [],
                                      "decision": [], "stop_at": first_terminal.get(arm)})
        c["x"].append(float(at))
        c["estimate"].append(est)
        c["low"].append(lo)
        c["high"].append(hi)
        c["decision"].append(decision)
    return out, n_decs


def chart_series(
    session: Session, experiment_id: int, *, source: str, max_points: int,
    sql_json: bool | None = None,
) -> ChartSeries:
    """The stored series of the experiment's charts (see the module doc); ``sql_json``
    defaults to on for PostgreSQL."""
    if sql_json is None:
        sql_json = session.get_bind().dialect.name == "postgresql"
    if sql_json:
        # These queries cost ~10^4-10^5 planner units: a little more data would cross
        # jit_above_cost (10^5) and add ~20 ms of compilation to each (measured), for nothing.
        session.execute(text("SET LOCAL jit = off"))
    snaps, n_snaps = _snapshots(session, experiment_id, max_points, sql_json)
    if source == "raw":
        width, rewards = _raw_rewards(session, experiment_id, max_points)
    else:
        width, rewards = rollups.series_by_arm(session, experiment_id, max_points=max_points)
    decisions, n_decs = _decisions(session, experiment_id, max_points, sql_json)
    return ChartSeries(snapshots=snaps, n_snapshots=n_snaps, bucket_s=width, rewards=rewards,
                       decisions=decisions, n_decisions=n_decs)
