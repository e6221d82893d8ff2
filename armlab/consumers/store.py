"""Database side of ingestion: offsets (with zombie fencing), prefetching the state a batch
touches, and writing a batch's effects. Works on PostgreSQL and SQLite (dialect inserts).

Commit order inside ONE transaction (quix-streams style, KafkaConsumer Javadoc "Storing
Offsets Outside Kafka"): fence + advance offsets -> prefetch (rows locked on PostgreSQL) ->
handle -> write effects -> commit. The fence is a conditional update
``... WHERE next_offset = <offset this batch started from>``: a consumer that lost its
partitions (a zombie) updates 0 rows and rolls back instead of overwriting the new owner.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from armlab.consumers.handlers import (
    STAT_FIELDS,
    BatchState,
    Effects,
    ExperimentInfo,
    ImpressionState,
    PendingFeedback,
)
from armlab.platform.models import (
    Arm,
    ArmStats,
    ConsumerOffset,
    Experiment,
    Feedback,
    Impression,
    IngestCounter,
)

TP = tuple[str, int]
_CHUNK = 2000  # ids per IN (...) list; stays far below SQLite's variable limit


class Fenced(Exception):  # noqa: N818 - control flow, never escapes the runner
    """Another consumer owns (and has advanced) a partition this batch covers."""

    def __init__(self, tps: list[TP]) -> None:
        super().__init__(f"fenced on {tps}")
        self.tps = tps


def _insert(session: Session, table: Any) -> Any:
    name = session.get_bind().dialect.name
    mod = postgresql if name == "postgresql" else sqlite
    return mod.insert(table)


def _chunks(ids: Iterable[str]) -> Iterable[list[str]]:
    lst = list(ids)
    for i in range(0, len(lst), _CHUNK):
        yield lst[i : i + _CHUNK]


def _is_pg(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


# -- registry ------------------------------------------------------------------------------
def load_experiments(session: Session) -> dict[str, ExperimentInfo]:
    """Every registered experiment with its arms (any status: stopped ones still get feedback)."""
    arms: dict[int, set[str]] = {}
    for exp_id, key in session.execute(select(Arm.experiment_id, Arm.key)):
        arms.setdefault(exp_id, set()).add(key)
    out: dict[str, ExperimentInfo] = {}
    rows = session.execute(
        select(
            Experiment.id,
            Experiment.key,
            Experiment.reward_kind,
            Experiment.reward_metric,
            Experiment.attribution_window_s,
        )
    )
    for exp_id, key, kind, metric, window in rows:
        out[key] = ExperimentInfo(
            id=exp_id,
            key=key,
            arms=frozenset(arms.get(exp_id, ())),
            reward_kind=kind,
            reward_metric=metric,
            window_s=float(window),
        )
    return out


# -- offsets -------------------------------------------------------------------------------
def load_offsets(session: Session, group: str, tps: Iterable[TP]) -> dict[TP, int]:
    """Stored next offsets for the given partitions (absent: never committed)."""
    wanted = set(tps)
    topics = {t for t, _ in wanted}
    if not topics:
        return {}
    rows = session.execute(
        select(ConsumerOffset.topic, ConsumerOffset.partition, ConsumerOffset.next_offset).where(
            ConsumerOffset.group_id == group, ConsumerOffset.topic.in_(topics)
        )
    )
    return {(t, p): int(o) for t, p, o in rows if (t, p) in wanted}


def advance_offsets(
    session: Session, group: str, moves: dict[TP, tuple[int | None, int]]
) -> None:
    """Move each partition from its start offset to its next offset, or raise :class:`Fenced`.

    ``start`` None means "no row stored yet": the row is inserted, and a concurrent insert
    by another consumer fences this one. Partitions are updated in sorted order so two
    consumers never deadlock on offset rows.
    """
    now = datetime.now(UTC)
    fenced: list[TP] = []
    for (topic, part), (start, end) in sorted(moves.items()):
        if start is None:
            stmt = (
                _insert(session, ConsumerOffset.__table__)
                .values(group_id=group, topic=topic, partition=part, next_offset=end,
                        updated_at=now)
                .on_conflict_do_nothing()
            )
        else:
            stmt = (
                update(ConsumerOffset)
                .where(
                    ConsumerOffset.group_id == group,
                    ConsumerOffset.topic == topic,
                    ConsumerOffset.partition == part,
                    ConsumerOffset.next_offset == start,
                )
                .values(next_offset=end, updated_at=now)
            )
        # RETURNING instead of rowcount: psycopg reports -1 for INSERT .. ON CONFLICT.
        if session.execute(stmt.returning(ConsumerOffset.__table__.c.next_offset)).first() is None:
            fenced.append((topic, part))
    if fenced:
        raise Fenced(fenced)


# -- prefetch ------------------------------------------------------------------------------
def prefetch(
    session: Session,
    imp_ids: set[str],
    imp_events: set[str],
    fb_events: set[str],
    arriving: set[str],
) -> BatchState:
    """Load the rows a batch references. On PostgreSQL impressions and pending feedback are
    locked (FOR UPDATE) so a concurrent consumer cannot interleave a reward update."""
    if _is_pg(session):
        return _prefetch_pg(session, imp_ids, imp_events, fb_events, arriving)
    state = BatchState()
    pg = False
    cols = (
        Impression.impression_id,
        Impression.event_id,
        Impression.experiment_id,
        Impression.arm_key,
        Impression.propensity,
        Impression.served_at,
        Impression.reward,
        Impression.feedback_count,
        Impression.partition,
    )
    for chunk in _chunks(imp_ids):
        q = select(*cols).where(Impression.impression_id.in_(chunk))
        if pg:
            q = q.with_for_update()
        for row in session.execute(q):
            state.impressions[row[0]] = ImpressionState(*row)
            state.impression_event_ids.add(row[1])
    missing_events = imp_events - state.impression_event_ids
    for chunk in _chunks(missing_events):
        q = select(Impression.event_id).where(Impression.event_id.in_(chunk))
        state.impression_event_ids.update(r[0] for r in session.execute(q))
    for chunk in _chunks(fb_events):
        q = select(Feedback.event_id).where(Feedback.event_id.in_(chunk))
        state.feedback_event_ids.update(r[0] for r in session.execute(q))
    if arriving:
        for chunk in _chunks(arriving):
            q = (
                select(
                    Feedback.event_id,
                    Feedback.impression_id,
                    Feedback.experiment_key,
                    Feedback.kind,
                    Feedback.value,
                    Feedback.occurred_at,
                    Feedback.partition,
                )
                .where(Feedback.impression_id.in_(chunk), Feedback.status == "pending")
                .order_by(Feedback.occurred_at, Feedback.event_id)
            )
            if pg:
                q = q.with_for_update()
            for row in session.execute(q):
                state.pending.setdefault(row[1], []).append(PendingFeedback(*row))
    return state


# -- effects -------------------------------------------------------------------------------
def write_effects(session: Session, group: str, fx: Effects) -> None:
    """Write one batch's effects. Aggregates are pre-summed per key and upserted once per key,
    in sorted key order (no "cannot affect row a second time", no deadlocks)."""
    now = datetime.now(UTC)
    if _is_pg(session):
        _write_effects_pg(session, group, fx, now)
        return
    if fx.new_impressions:
        rows = [
            {
                "impression_id": imp.impression_id,
                "event_id": imp.event_id,
                "experiment_id": imp.experiment_id,
                "arm_key": imp.arm_key,
                "unit_id": ev.unit_id,
                "propensity": imp.propensity,
                "served_at": imp.served_at,
                "partition": imp.partition,
                "reward": imp.reward,
                "feedback_count": imp.feedback_count,
                "items": ev.items,
                "context": ev.context,
            }
            for imp, ev in zip(fx.new_impressions, fx.new_impression_rows, strict=True)
        ]
        session.execute(_insert(session, Impression.__table__).on_conflict_do_nothing(), rows)
    if fx.impression_updates:
        stmt = (
            update(Impression.__table__)
            .where(Impression.__table__.c.impression_id == bindparam("b_id"))
            .values(reward=bindparam("b_reward"), feedback_count=bindparam("b_fc"))
        )
        session.execute(
            stmt,
            [
                {"b_id": i.impression_id, "b_reward": i.reward, "b_fc": i.feedback_count}
                for i in sorted(fx.impression_updates.values(), key=lambda i: i.impression_id)
            ],
        )
    if fx.feedback_rows:
        rows = [
            {
                "event_id": ev.event_id,
                "impression_id": ev.impression_id,
                "experiment_key": ev.experiment_key,
                "kind": ev.kind,
                "value": ev.value,
                "occurred_at": ev.occurred_at,
                "received_at": now,
                "partition": part,
                "status": status,
            }
            for ev, part, status in fx.feedback_rows
        ]
        session.execute(_insert(session, Feedback.__table__).on_conflict_do_nothing(), rows)
    if fx.feedback_status:
        stmt = (
            update(Feedback.__table__)
            .where(Feedback.__table__.c.event_id == bindparam("b_id"))
            .values(status=bindparam("b_status"))
        )
        session.execute(
            stmt, [{"b_id": k, "b_status": v} for k, v in sorted(fx.feedback_status.items())]
        )
    if fx.stats:
        upsert_stats(session, fx.stats, now)
    if fx.counters:
        upsert_counters(session, group, fx.counters.items(), now)


def upsert_stats(
    session: Session, stats: dict[tuple[int, str, int], list[float]], now: datetime
) -> None:
    rows = []
    for (exp_id, arm, part), vec in sorted(stats.items()):
        row: dict[str, Any] = {"experiment_id": exp_id, "arm_key": arm, "partition": part}
        for name, v in zip(STAT_FIELDS, vec, strict=True):
            row[name] = int(v) if name in ("n", "feedback_n") else v
        row["updated_at"] = now
        rows.append(row)
    ins = _insert(session, ArmStats.__table__)
    t = ArmStats.__table__.c
    set_ = {name: t[name] + ins.excluded[name] for name in STAT_FIELDS}
    set_["updated_at"] = ins.excluded.updated_at
    stmt = ins.on_conflict_do_update(
        index_elements=["experiment_id", "arm_key", "partition"], set_=set_
    )
    # One statement per key keeps PostgreSQL and SQLite on the same path; rows are few
    # (experiments x arms x partitions in the batch).
    for row in rows:
        session.execute(stmt.values(**row))


def upsert_counters(
    session: Session, group: str, items: Iterable[tuple[tuple[str, int], int]], now: datetime
) -> None:
    del now
    ins = _insert(session, IngestCounter.__table__)
    stmt = ins.on_conflict_do_update(
        index_elements=["group_id", "reason", "partition"],
        set_={"count": IngestCounter.__table__.c["count"] + ins.excluded["count"]},
    )
    for (reason, part), n in sorted(items):
        session.execute(stmt.values(group_id=group, reason=reason, partition=part, count=n))


def read_counters(session: Session, group: str | None = None) -> dict[str, int]:
    """Ingest counters summed over partitions (and groups when ``group`` is None)."""
    q = select(IngestCounter.reason, IngestCounter.count)
    if group is not None:
        q = q.where(IngestCounter.group_id == group)
    out: dict[str, int] = {}
    for reason, n in session.execute(q):
        out[reason] = out.get(reason, 0) + int(n)
    return out


def read_arm_stats(
    session: Session, experiment_id: int | None = None
) -> dict[tuple[int, str], dict[str, float]]:
    """arm_stats summed over partitions, keyed by (experiment_id, arm_key)."""
    q = select(ArmStats)
    if experiment_id is not None:
        q = q.where(ArmStats.experiment_id == experiment_id)
    out: dict[tuple[int, str], dict[str, float]] = {}
    for row in session.scalars(q):
        acc = out.setdefault((row.experiment_id, row.arm_key), dict.fromkeys(STAT_FIELDS, 0.0))
        for name in STAT_FIELDS:
            acc[name] += getattr(row, name)
    return out


def pending_ids(session: Session, limit: int) -> Sequence[str]:
    """Impression ids that have pending feedback and whose impression is stored (a sweep
    target: normally empty; non-empty only if an impression and its feedback were consumed
    by different consumers at the same moment)."""
    q = (
        select(Feedback.impression_id)
        .join(Impression, Impression.impression_id == Feedback.impression_id)
        .where(Feedback.status == "pending")
        .distinct()
        .limit(limit)
    )
    return [r[0] for r in session.execute(q)]


# -- PostgreSQL fast path ------------------------------------------------------------------
# The same statements as above, issued straight through the session's psycopg connection
# (so they run inside the batch's transaction, after the offset fence) with one array
# parameter per column: ``= ANY(%s)`` for lookups and ``INSERT/UPDATE ... FROM unnest(...)``
# for bulk writes. One round trip per statement instead of one per row, and no per-row
# SQLAlchemy compilation or giant IN-lists for psycopg to parse (shared/kafka/RECIPE.md,
# Appendix B). Semantics are unchanged: same rows, same ON CONFLICT rules, same locks.

# Ids travel as one JSON array parameter: ARRAY(SELECT json_array_elements_text(%s::json)).
_PG_IMPRESSIONS = (
    "SELECT impression_id, event_id, experiment_id, arm_key, propensity, served_at, reward,"
    " feedback_count, partition FROM impressions WHERE impression_id = ANY("
    "ARRAY(SELECT json_array_elements_text(%s::json)))"
    " FOR UPDATE"
)
_PG_IMP_EVENTS = (
    "SELECT event_id FROM impressions WHERE event_id = ANY("
    "ARRAY(SELECT json_array_elements_text(%s::json)))"
)
_PG_FB_EVENTS = (
    "SELECT event_id FROM feedback WHERE event_id = ANY("
    "ARRAY(SELECT json_array_elements_text(%s::json)))"
)
_PG_PENDING = (
    "SELECT event_id, impression_id, experiment_key, kind, value, occurred_at, partition"
    " FROM feedback WHERE impression_id = ANY("
    "ARRAY(SELECT json_array_elements_text(%s::json))) AND status = 'pending'"
    " ORDER BY occurred_at, event_id FOR UPDATE"
)
_PG_INSERT_IMPRESSIONS = (
    "INSERT INTO impressions (impression_id, event_id, experiment_id, arm_key, unit_id,"
    " propensity, served_at, partition, reward, feedback_count, items, context)"
    " SELECT i, e, x, a, u, p, t, n, r, c, it, ct FROM json_to_recordset(%s::json)"
    " AS j(i text, e text, x int, a text, u text, p float8, t timestamptz, n int, r float8,"
    " c int, it json, ct json)"
    " ON CONFLICT DO NOTHING"
)
_PG_UPDATE_IMPRESSIONS = (
    "UPDATE impressions AS im SET reward = j.r, feedback_count = j.c"
    " FROM json_to_recordset(%s::json) AS j(i text, r float8, c int)"
    " WHERE im.impression_id = j.i"
)
_PG_INSERT_FEEDBACK = (
    "INSERT INTO feedback (event_id, impression_id, experiment_key, kind, value, occurred_at,"
    " received_at, partition, status)"
    " SELECT e, i, x, k, v, o, %s::timestamptz, p, s FROM json_to_recordset(%s::json)"
    " AS j(e text, i text, x text, k text, v float8, o timestamptz, p int, s text)"
    " ON CONFLICT DO NOTHING"
)
_PG_UPDATE_FEEDBACK = (
    "UPDATE feedback AS f SET status = j.s"
    " FROM json_to_recordset(%s::json) AS j(e text, s text) WHERE f.event_id = j.e"
)
_PG_UPSERT_STATS = (
    "INSERT INTO arm_stats (experiment_id, arm_key, partition, n, reward_sum, reward_sumsq,"
    " ipw_n, ipw_sum, ipw_sumsq, ipw_n_sq, feedback_n, updated_at)"
    " SELECT x, a, p, n, r1, r2, w0, w1, w2, wq, f, %s::timestamptz"
    " FROM json_to_recordset(%s::json) AS j(x int, a text, p int, n int8, r1 float8,"
    " r2 float8, w0 float8, w1 float8, w2 float8, wq float8, f int8)"
    " ON CONFLICT (experiment_id, arm_key, partition) DO UPDATE SET"
    " n = arm_stats.n + excluded.n,"
    " reward_sum = arm_stats.reward_sum + excluded.reward_sum,"
    " reward_sumsq = arm_stats.reward_sumsq + excluded.reward_sumsq,"
    " ipw_n = arm_stats.ipw_n + excluded.ipw_n,"
    " ipw_sum = arm_stats.ipw_sum + excluded.ipw_sum,"
    " ipw_sumsq = arm_stats.ipw_sumsq + excluded.ipw_sumsq,"
    " ipw_n_sq = arm_stats.ipw_n_sq + excluded.ipw_n_sq,"
    " feedback_n = arm_stats.feedback_n + excluded.feedback_n,"
    " updated_at = excluded.updated_at"
)
_PG_UPSERT_COUNTERS = (
    "INSERT INTO ingest_counters (group_id, reason, partition, count)"
    " SELECT %s, r, p, c FROM json_to_recordset(%s::json) AS j(r text, p int, c int8)"
    " ON CONFLICT (group_id, reason, partition) DO UPDATE SET"
    " count = ingest_counters.count + excluded.count"
)


def _pg_cursor(session: Session) -> Any:
    """A cursor on the session's own psycopg connection (same transaction)."""
    return session.connection().connection.driver_connection.cursor()


def _js(obj: Any) -> str:
    # orjson: floats in shortest round-trip form (parsed back to the identical float8),
    # datetimes as RFC 3339 with their offset.
    return orjson.dumps(obj).decode()


def _prefetch_pg(
    session: Session,
    imp_ids: set[str],
    imp_events: set[str],
    fb_events: set[str],
    arriving: set[str],
) -> BatchState:
    state = BatchState()
    with _pg_cursor(session) as cur:
        if imp_ids:
            cur.execute(_PG_IMPRESSIONS, (_js(sorted(imp_ids)),))
            for row in cur.fetchall():
                state.impressions[row[0]] = ImpressionState(*row)
                state.impression_event_ids.add(row[1])
        missing_events = imp_events - state.impression_event_ids
        if missing_events:
            cur.execute(_PG_IMP_EVENTS, (_js(list(missing_events)),))
            state.impression_event_ids.update(r[0] for r in cur.fetchall())
        if fb_events:
            cur.execute(_PG_FB_EVENTS, (_js(list(fb_events)),))
            state.feedback_event_ids.update(r[0] for r in cur.fetchall())
        if arriving:
            cur.execute(_PG_PENDING, (_js(sorted(arriving)),))
            for row in cur.fetchall():
                state.pending.setdefault(row[1], []).append(PendingFeedback(*row))
    return state


def _write_effects_pg(session: Session, group: str, fx: Effects, now: datetime) -> None:
    with _pg_cursor(session) as cur:
        if fx.new_impressions:
            cur.execute(_PG_INSERT_IMPRESSIONS, (_js([
                {"i": imp.impression_id, "e": imp.event_id, "x": imp.experiment_id,
                 "a": imp.arm_key, "u": ev.unit_id, "p": imp.propensity, "t": imp.served_at,
                 "n": imp.partition, "r": imp.reward, "c": imp.feedback_count,
                 "it": ev.items, "ct": ev.context}
                for imp, ev in zip(fx.new_impressions, fx.new_impression_rows, strict=True)
            ]),))
        if fx.impression_updates:
            ups = sorted(fx.impression_updates.values(), key=lambda i: i.impression_id)
            cur.execute(_PG_UPDATE_IMPRESSIONS, (_js([
                {"i": i.impression_id, "r": i.reward, "c": i.feedback_count} for i in ups
            ]),))
        if fx.feedback_rows:
            cur.execute(_PG_INSERT_FEEDBACK, (now, _js([
                {"e": ev.event_id, "i": ev.impression_id, "x": ev.experiment_key,
                 "k": ev.kind, "v": ev.value, "o": ev.occurred_at, "p": part, "s": status}
                for ev, part, status in fx.feedback_rows
            ])))
        if fx.feedback_status:
            cur.execute(_PG_UPDATE_FEEDBACK, (_js([
                {"e": k, "s": v} for k, v in sorted(fx.feedback_status.items())
            ]),))
        if fx.stats:
            rows = []
            for (exp_id, arm, part), vec in sorted(fx.stats.items()):
                n, r1, r2, w0, w1, w2, wq, f = vec
                rows.append({"x": exp_id, "a": arm, "p": part, "n": int(n), "r1": r1,
                             "r2": r2, "w0": w0, "w1": w1, "w2": w2, "wq": wq, "f": int(f)})
            cur.execute(_PG_UPSERT_STATS, (now, _js(rows)))
        if fx.counters:
            cur.execute(_PG_UPSERT_COUNTERS, (group, _js([
                {"r": r, "p": p, "c": n} for (r, p), n in sorted(fx.counters.items())
            ])))
