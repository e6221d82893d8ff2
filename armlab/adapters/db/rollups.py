"""Time-bucketed per-arm sums (``arm_rollups``): written with each ingest batch, read by the
dashboard.

:func:`add_batch` adds one batch's per-(experiment, arm, partition) increments to the buckets
holding the commit time, once per width of :data:`~armlab.adapters.db.models.ROLLUP_WIDTHS_S`,
inside the caller's transaction (the ingest store calls it next to the ``arm_stats`` upsert,
so a rolled-back batch leaves no rollup behind). :func:`series` reads them back as per-arm
running totals over display buckets.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from typing import Any

import orjson
from sqlalchemy import func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from armlab.adapters.db.models import ROLLUP_WIDTHS_S, ArmRollup
from armlab.core.clock import as_utc
from armlab.core.evidence import COUNTS, FIELDS, ArmSums

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def bucket_start(at: datetime, width_s: int) -> datetime:
    """The start of the ``width_s``-second bucket holding ``at`` (aligned to the epoch)."""
    secs = int((as_utc(at) - _EPOCH).total_seconds())
    return _EPOCH + timedelta(seconds=secs - secs % width_s)


def rollup_rows(
    stats: Iterable[tuple[tuple[int, str, int], ArmSums]], at: datetime,
    widths: Iterable[int] = ROLLUP_WIDTHS_S,
) -> list[dict[str, Any]]:
    """The rows :func:`add_batch` upserts, in primary-key order (no deadlocks between
    consumers)."""
    rows = []
    for width in widths:
        start = bucket_start(at, width)
        for (exp_id, arm, part), sums in stats:
            row: dict[str, Any] = {"experiment_id": exp_id, "width_s": width,
                                   "bucket_start": start, "arm_key": arm, "partition": part}
            for name in FIELDS:
                value = getattr(sums, name)
                row[name] = int(value) if name in COUNTS else float(value)
            rows.append(row)
    rows.sort(key=lambda r: (r["experiment_id"], r["width_s"], r["bucket_start"], r["arm_key"],
                             r["partition"]))
    return rows


def add_batch(
    session: Session, stats: dict[tuple[int, str, int], ArmSums], at: datetime
) -> None:
    """Add a batch's per-shard sums to the rollup buckets of ``at`` (one statement)."""
    rows = rollup_rows(sorted(stats.items()), at)
    if not rows:
        return
    mod = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    stmt = mod.insert(ArmRollup.__table__).values(rows)
    table = ArmRollup.__table__
    stmt = stmt.on_conflict_do_update(
        index_elements=["experiment_id", "width_s", "bucket_start", "arm_key", "partition"],
        set_={f: table.c[f] + stmt.excluded[f] for f in FIELDS},
    )
    session.execute(stmt)


def epoch_seconds(session: Session, col: Any) -> Any:
    """SQL for ``col`` (a timestamp) as epoch seconds, a float, in this session's dialect
    (computed by the database: converting thousands of datetimes in Python costs more than
    the query)."""
    if session.get_bind().dialect.name == "postgresql":
        # date_part is double precision; EXTRACT is numeric on PostgreSQL 14+ and several
        # times slower over a long scan.
        return func.date_part("epoch", col)
    return (func.julianday(col) - 2440587.5) * 86400.0


def span(session: Session, experiment_id: int) -> tuple[datetime, datetime] | None:
    """First and last bucket start of the experiment's finest rollups (None without any)."""
    width = min(ROLLUP_WIDTHS_S)
    lo, hi = session.execute(
        select(func.min(ArmRollup.bucket_start), func.max(ArmRollup.bucket_start))
        .where(ArmRollup.experiment_id == experiment_id, ArmRollup.width_s == width)
    ).one()
    if lo is None or hi is None:
        return None
    return as_utc(lo), as_utc(hi)


def choose_width(first: datetime, last: datetime, max_points: int) -> int:
    """The finest stored width that draws ``first..last`` in about ``max_points`` buckets."""
    seconds = max((last - first).total_seconds(), 1.0)
    for width in sorted(ROLLUP_WIDTHS_S):
        if seconds / width <= max_points:
            return width
    return max(ROLLUP_WIDTHS_S)


def series(
    session: Session, experiment_id: int, *, max_points: int = 400
) -> tuple[int, list[tuple[float, str, float, float]]]:
    """``(width_s, [(bin end in epoch seconds, arm, cumulative n, cumulative reward sum),
    ...])`` ordered by time, at most about ``max_points`` bins per arm.

    Reads the finest stored width that fits, re-binned in SQL to ``width_s`` (a multiple of
    it) and summed over partitions; the running totals are window sums in the database. The
    value at a bin's end is the arm's ``arm_stats`` ``n`` and ``reward_sum`` as of then.
    """
    bounds = span(session, experiment_id)
    if bounds is None:
        return min(ROLLUP_WIDTHS_S), []
    stored, width = _display_width(bounds, max_points)
    b = func.floor(epoch_seconds(session, ArmRollup.bucket_start) / width).label("b")
    n = func.sum(func.sum(ArmRollup.n)).over(partition_by=ArmRollup.arm_key, order_by=b)
    r = func.sum(func.sum(ArmRollup.reward_sum)).over(partition_by=ArmRollup.arm_key,
                                                      order_by=b)
    rows = session.execute(
        select(b, ArmRollup.arm_key, n, r)
        .where(ArmRollup.experiment_id == experiment_id, ArmRollup.width_s == stored)
        .group_by(b, ArmRollup.arm_key)
        .order_by(b, ArmRollup.arm_key)
    ).all()
    return width, [((int(bin_) + 1) * width, str(arm), float(nn or 0), float(rr or 0.0))
                   for bin_, arm, nn, rr in rows]


#: Per-arm bin sums as three JSON arrays per arm (PostgreSQL builds them: one row per arm
#: instead of one Python row per bin and arm).
_PG_BY_ARM = text("""
SELECT arm_key, json_agg(json_build_array(b, sn, sr) ORDER BY b)::text
FROM (SELECT arm_key, floor(date_part('epoch', bucket_start) / :w) AS b,
             sum(n)::float8 AS sn, sum(reward_sum)::float8 AS sr
      FROM arm_rollups WHERE experiment_id = :e AND width_s = :s GROUP BY 1, 2) g
GROUP BY arm_key
""")


def _display_width(bounds: tuple[datetime, datetime], max_points: int) -> tuple[int, int]:
    stored = choose_width(bounds[0], bounds[1], max_points)
    seconds = (bounds[1] - bounds[0]).total_seconds() + stored
    return stored, stored * max(1, -(-int(seconds) // (stored * max_points)))


def series_by_arm(
    session: Session, experiment_id: int, *, max_points: int = 400
) -> tuple[int, dict[str, tuple[list[float], list[float], list[float]]]]:
    """:func:`series` grouped by arm: ``(width_s, {arm: (bin ends, cumulative n, cumulative
    reward sum)})``, each list in time order. On PostgreSQL the bins come back as one JSON
    row per arm and the running totals are summed here; elsewhere it regroups
    :func:`series`."""
    if session.get_bind().dialect.name != "postgresql":
        width, rows = series(session, experiment_id, max_points=max_points)
        out: dict[str, tuple[list[float], list[float], list[float]]] = {}
        for end, arm, n, r in rows:
            ends, ns, rs = out.setdefault(arm, ([], [], []))
            ends.append(end)
            ns.append(n)
            rs.append(r)
        return width, out
    bounds = span(session, experiment_id)
    if bounds is None:
        return min(ROLLUP_WIDTHS_S), {}
    stored, width = _display_width(bounds, max_points)
    out = {}
    for arm, rows in session.execute(_PG_BY_ARM, {"w": width, "e": experiment_id,
                                                  "s": stored}):
        bins, bin_n, bin_r = zip(*orjson.loads(rows), strict=True)
        out[str(arm)] = ([float((int(b) + 1) * width) for b in bins],
                         list(accumulate(bin_n)), list(accumulate(bin_r)))
    return width, out
