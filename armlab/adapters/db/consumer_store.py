"""Database side of ingestion: offsets (with zombie fencing), prefetching the state a batch
touches, and writing a batch's effects.

One implementation for PostgreSQL and SQLite. A batch reads and writes with one statement per
table: the ids or rows travel as ONE JSON parameter that the statement reads back as a table
(:class:`_Json`), so there is one round trip per statement, no per-row statements and no
thousands of bind parameters to compile. Each statement is written once; the only
dialect-specific pieces are how a JSON parameter becomes rows (``json_to_recordset`` /
``json_array_elements_text`` on PostgreSQL, ``json_each`` on SQLite), how timestamps are
spelled inside it, and ``FOR UPDATE`` (PostgreSQL only; SQLite has one writer anyway).

Commit order inside ONE transaction (quix-streams style, KafkaConsumer Javadoc "Storing
Offsets Outside Kafka"): fence + advance offsets -> prefetch (rows locked on PostgreSQL) ->
handle -> write effects -> commit. The fence is a conditional update
``... WHERE next_offset = <offset this batch started from>``: a consumer that lost its
partitions (a zombie) updates 0 rows and rolls back instead of overwriting the new owner.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import DateTime, delete, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from armlab.adapters.db import rollups
from armlab.adapters.db.models import (
    DEAD_LETTER_BUCKET_S,
    Arm,
    ConsumerLag,
    ConsumerOffset,
    DeadLetterBucket,
    Experiment,
    Feedback,
    Impression,
    IngestCounter,
    IngestLock,
)
from armlab.core.clock import as_utc, utcnow
from armlab.core.event_effects import (
    OK_OUTCOMES,
    BatchState,
    Effects,
    ExperimentInfo,
    ImpressionState,
    MetricRule,
    PendingFeedback,
)
from armlab.core.evidence import COUNTS, FIELDS, ArmSums
from armlab.core.fencing import Fenced, StoredRowsDiffer

TP = tuple[str, int]
# Fenced and StoredRowsDiffer (raised here) are declared in armlab.core.fencing, so the runner
# recognises them without importing this module; ``consumer_store.Fenced`` still names them.


def _insert(session: Session, table: Any) -> Any:
    name = session.get_bind().dialect.name
    mod = postgresql if name == "postgresql" else sqlite
    return mod.insert(table)


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
            Experiment.status,
            Experiment.ended_at,
            Experiment.guardrails,
        )
    )
    for exp_id, key, kind, metric, window, status, ended_at, guardrails in rows:
        out[key] = ExperimentInfo(
            id=exp_id,
            key=key,
            arms=frozenset(arms.get(exp_id, ())),
            reward_kind=kind,
            reward_metric=metric,
            window_s=float(window),
            status=status,
            ended_at=ended_at,
            guardrails=tuple(MetricRule.from_spec(g) for g in guardrails or ()),
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


def stored_offsets(session: Session, group: str | None = None) -> list[tuple[str, str, int, int]]:
    """(group, topic, partition, next offset) of the stored offsets (of ``group``), sorted."""
    q = select(ConsumerOffset.group_id, ConsumerOffset.topic, ConsumerOffset.partition,
               ConsumerOffset.next_offset).order_by(ConsumerOffset.group_id,
                                                    ConsumerOffset.topic,
                                                    ConsumerOffset.partition)
    if group is not None:
        q = q.where(ConsumerOffset.group_id == group)
    return [(g, t, int(p), int(o)) for g, t, p, o in session.execute(q)]


def reset_offsets(session: Session, group: str, topics: Sequence[str] | None,
                  to: Mapping[TP, int]) -> int:
    """Delete the stored offsets of ``group`` (of ``topics`` when given), then store ``to``;
    the group's lag reports go too (they describe the old positions). Returns the number of
    partitions deleted or stored."""
    cond = [ConsumerOffset.group_id == group]
    lag_cond = [ConsumerLag.group_id == group]
    if topics:
        cond.append(ConsumerOffset.topic.in_(list(topics)))
        lag_cond.append(ConsumerLag.topic.in_(list(topics)))
    gone = {(t, int(p)) for t, p in session.execute(
        delete(ConsumerOffset).where(*cond)
        .returning(ConsumerOffset.topic, ConsumerOffset.partition))}
    session.execute(delete(ConsumerLag).where(*lag_cond))
    now = utcnow()
    for (topic, part), off in sorted(to.items()):
        session.add(ConsumerOffset(group_id=group, topic=topic, partition=part,
                                   next_offset=int(off), updated_at=now))
    session.flush()
    return len(gone | set(to))


def advance_offsets(
    session: Session, group: str, moves: dict[TP, tuple[int | None, int]]
) -> None:
    """Move each partition from its start offset to its next offset, or raise :class:`Fenced`.

    ``start`` None means "no row stored yet": the row is inserted, and a concurrent insert
    by another consumer fences this one. Partitions are updated in sorted order so two
    consumers never deadlock on offset rows.
    """
    now = utcnow()
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


# -- serialising consumers on the ids a batch touches --------------------------------------
def lock_keys(impression_ids: Iterable[str], impression_events: Iterable[str],
              feedback_events: Iterable[str]) -> list[str]:
    """The :class:`IngestLock` keys of a batch, sorted and distinct: ``i:`` each impression id
    (an impression's own, and the one a feedback names: an impression and its feedback read
    by two consumers at once are serialised too), ``e:`` each impression event id and ``f:``
    each feedback event id."""
    keys = {f"i:{i}" for i in impression_ids}
    keys.update(f"e:{e}" for e in impression_events)
    keys.update(f"f:{e}" for e in feedback_events)
    return sorted(keys)


def lock_ids(session: Session, keys: Sequence[str], now: datetime | None = None) -> None:
    """Upsert ``keys`` (sorted, distinct; :func:`lock_keys`) into ``ingest_locks``, in order,
    holding each row's lock until the batch commits (PostgreSQL; SQLite has one writer, and a
    transaction that read before another's commit fails to write and is retried).

    Two consumers whose batches share an id therefore run one after the other, and the second
    one's prefetch (a new statement in READ COMMITTED) sees what the first stored: every
    decision (new, duplicate, conflicting, pending) is made on stored rows. Sorted order means
    two batches never wait on each other in a cycle."""
    if not keys or session.get_bind().dialect.name != "postgresql":
        return
    session.execute(
        text("INSERT INTO ingest_locks (key, at) SELECT k, :now "
             "FROM unnest(CAST(:keys AS text[])) WITH ORDINALITY AS t(k, n) ORDER BY n "
             "ON CONFLICT (key) DO UPDATE SET at = excluded.at"),
        {"keys": list(keys), "now": now or utcnow()},
    )


def prune_locks(session: Session, before: datetime) -> int:
    """Delete the ``ingest_locks`` rows last touched before ``before``; returns how many."""
    result = session.execute(delete(IngestLock).where(IngestLock.at < before)
                             .returning(IngestLock.key))
    return len(result.all())


# -- JSON parameters read back as rows --------------------------------------------------------
_PG_TYPES = {"text": "text", "int": "int8", "float": "float8", "ts": "timestamptz",
             "json": "json"}
_TS = DateTime(timezone=True)


class _Json:
    """How one JSON parameter becomes rows in this session's dialect."""

    def __init__(self, session: Session) -> None:
        self.dialect = session.get_bind().dialect
        self.pg = self.dialect.name == "postgresql"
        self._ts = None if self.pg else _TS.dialect_impl(self.dialect).bind_processor(
            self.dialect)

    def rows(self, param: str, columns: Sequence[tuple[str, str]]) -> str:
        """``(SELECT <columns> FROM <the JSON array of objects in :param>) AS r``."""
        if self.pg:
            spec = ", ".join(f"{name} {_PG_TYPES[kind]}" for name, kind in columns)
            return f"json_to_recordset(CAST(:{param} AS json)) AS r({spec})"
        cols = ", ".join(f"json_extract(value, '$.{name}') AS {name}" for name, _ in columns)
        return f"(SELECT {cols} FROM json_each(:{param})) AS r"

    def in_ids(self, column: str, param: str) -> str:
        """``column`` is one of the ids in :param. PostgreSQL gets a text array, so the planner
        knows how many ids there are and probes each partition's index (with a JSON set it
        guessed half the table and scanned every partition)."""
        if self.pg:
            return f"{column} = ANY (CAST(:{param} AS text[]))"
        return f"{column} IN (SELECT value FROM json_each(:{param}))"

    @property
    def for_update(self) -> str:
        return " FOR UPDATE" if self.pg else ""

    def encode(self, ids: list[str]) -> Any:
        """The parameter of :meth:`in_ids`: the list itself (PostgreSQL: a text array), or its
        JSON text (SQLite)."""
        return ids if self.pg else orjson.dumps(ids).decode()

    def encode_rows(self, rows: list[dict[str, Any]]) -> str:
        """The JSON text of ``rows``; timestamps as this dialect stores them (ISO 8601 for
        PostgreSQL's timestamptz, SQLAlchemy's own text form on SQLite)."""
        if self._ts is None:
            return orjson.dumps(rows).decode()
        fmt = self._ts
        return orjson.dumps(
            [{k: (fmt(v) if isinstance(v, datetime) else v) for k, v in r.items()}
             for r in rows]
        ).decode()



# -- prefetch ------------------------------------------------------------------------------
_IMPRESSION_STATE = ("impression_id, event_id, experiment_id, arm_key, propensity, served_at,"
                     " reward, feedback_count, partition, guardrail_values")
_PENDING_COLS = "event_id, impression_id, experiment_key, kind, value, occurred_at, partition"


def prefetch(
    session: Session,
    imp_ids: set[str],
    imp_events: set[str],
    fb_events: set[str],
    arriving: set[str],
) -> BatchState:
    """Load the rows a batch references. Impressions and pending feedback are locked
    (``FOR UPDATE`` on PostgreSQL) so a concurrent consumer cannot interleave a reward
    update."""
    j = _Json(session)
    state = BatchState()
    ts = Impression.__table__.c.served_at.type
    if imp_ids:
        rows = session.execute(
            text(f"SELECT {_IMPRESSION_STATE} FROM impressions WHERE "
                 f"{j.in_ids('impression_id', 'ids')}{j.for_update}").columns(
                served_at=ts, guardrail_values=Impression.__table__.c.guardrail_values.type),
            {"ids": j.encode(sorted(imp_ids))},
        )
        for row in rows:
            imp = ImpressionState(*row[:9])
            if row[9] is not None:
                imp.metrics = {str(k): [float(v[0]), float(v[1])] for k, v in row[9].items()}
            state.impressions[row[0]] = imp
            state.impression_event_ids.add(row[1])
    missing = imp_events - state.impression_event_ids
    if missing:
        state.impression_event_ids.update(r[0] for r in session.execute(
            text(f"SELECT event_id FROM impressions WHERE {j.in_ids('event_id', 'ids')}"),
            {"ids": j.encode(sorted(missing))},
        ))
    if fb_events:
        for row in session.execute(
            text(f"SELECT event_id, impression_id, experiment_key, kind, value, occurred_at "
                 f"FROM feedback WHERE {j.in_ids('event_id', 'ids')}")
            .columns(occurred_at=Feedback.__table__.c.occurred_at.type),
            {"ids": j.encode(sorted(fb_events))},
        ):
            state.feedback_event_ids.add(row[0])
            state.feedback_content[row[0]] = (row[1], row[2], row[3], float(row[4]),
                                              as_utc(row[5]))
    if arriving:
        rows = session.execute(
            text(f"SELECT {_PENDING_COLS} FROM feedback WHERE "
                 f"{j.in_ids('impression_id', 'ids')} AND status = 'pending' "
                 f"ORDER BY occurred_at, event_id"
                 f"{j.for_update}").columns(occurred_at=Feedback.__table__.c.occurred_at.type),
            {"ids": j.encode(sorted(arriving))},
        )
        for row in rows:
            state.pending.setdefault(row[1], []).append(PendingFeedback(*row))
    return state


# -- effects -------------------------------------------------------------------------------
_IMPRESSION_ROW = [("impression_id", "text"), ("event_id", "text"), ("experiment_id", "int"),
                   ("arm_key", "text"), ("unit_id", "text"), ("propensity", "float"),
                   ("served_at", "ts"), ("partition", "int"), ("reward", "float"),
                   ("feedback_count", "int"), ("items", "json"), ("context", "json"),
                   ("guardrail_values", "json")]
_IMPRESSION_UPDATE = [("impression_id", "text"), ("reward", "float"),
                      ("feedback_count", "int"), ("guardrail_values", "json")]
_FEEDBACK_ROW = [("event_id", "text"), ("impression_id", "text"), ("experiment_key", "text"),
                 ("kind", "text"), ("value", "float"), ("occurred_at", "ts"),
                 ("received_at", "ts"), ("partition", "int"), ("status", "text")]
_FEEDBACK_STATUS = [("event_id", "text"), ("status", "text")]
_STATS_ROW = [("experiment_id", "int"), ("arm_key", "text"), ("partition", "int"),
              *((name, "int" if name in COUNTS else "float") for name in FIELDS),
              ("updated_at", "ts")]
_GUARDRAIL_ROW = [("experiment_id", "int"), ("arm_key", "text"), ("metric", "text"),
                  ("partition", "int"),
                  *((name, "int" if name in COUNTS else "float") for name in FIELDS),
                  ("updated_at", "ts")]
_COUNTER_ROW = [("group_id", "text"), ("reason", "text"), ("partition", "int"),
                ("count", "int")]
_BUCKET_ROW = [("group_id", "text"), ("reason", "text"), ("bucket_start", "ts"),
               ("partition", "int"), ("count", "int")]


def _names(columns: Sequence[tuple[str, str]]) -> str:
    return ", ".join(name for name, _ in columns)


def _insert_rows(session: Session, j: _Json, table: str, columns: Sequence[tuple[str, str]],
                 rows: list[dict[str, Any]], on_conflict: str, *,
                 all_stored: str | None = None) -> None:
    """INSERT every row of ``rows`` in one statement (``WHERE true`` keeps SQLite's parser
    from reading ``ON CONFLICT`` as a join constraint). With ``all_stored`` (a key column),
    raise :class:`StoredRowsDiffer` unless every row was stored (the stored row decides)."""
    cols = _names(columns)
    returning = f" RETURNING {all_stored}" if all_stored else ""
    result = session.execute(
        text(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {j.rows('rows', columns)} "
             f"WHERE true {on_conflict}{returning}"),
        {"rows": j.encode_rows(rows)},
    )
    if all_stored:
        stored = len(result.all())
        if stored != len(rows):
            raise StoredRowsDiffer(f"{table}: {stored} of {len(rows)} new rows stored")


def write_effects(session: Session, group: str, fx: Effects) -> None:
    """Write one batch's effects, one statement per table.

    Aggregates are pre-summed per key and upserted once per key, in sorted key order (no
    "cannot affect row a second time", no deadlocks between consumers)."""
    now = utcnow()
    j = _Json(session)
    if fx.new_impressions:
        _insert_rows(session, j, "impressions", _IMPRESSION_ROW, [
            {"impression_id": imp.impression_id, "event_id": imp.event_id,
             "experiment_id": imp.experiment_id, "arm_key": imp.arm_key,
             "unit_id": ev.unit_id, "propensity": imp.propensity, "served_at": imp.served_at,
             "partition": imp.partition, "reward": imp.reward,
             "feedback_count": imp.feedback_count, "items": ev.items, "context": ev.context,
             "guardrail_values": imp.metrics}
            for imp, ev in zip(fx.new_impressions, fx.new_impression_rows, strict=True)
        ], "ON CONFLICT DO NOTHING", all_stored="impression_id")
    if fx.impression_updates:
        # the id list as well as the join: the planner then probes each partition's index
        # instead of hashing a scan of every partition
        updates = sorted(fx.impression_updates.values(), key=lambda i: i.impression_id)
        session.execute(
            text(f"UPDATE impressions SET reward = r.reward, feedback_count = r.feedback_count,"
                 f" guardrail_values = r.guardrail_values"
                 f" FROM {j.rows('rows', _IMPRESSION_UPDATE)}"
                 f" WHERE impressions.impression_id = r.impression_id"
                 f" AND {j.in_ids('impressions.impression_id', 'ids')}"),
            {"rows": j.encode_rows([
                {"impression_id": i.impression_id, "reward": i.reward,
                 "feedback_count": i.feedback_count, "guardrail_values": i.metrics}
                for i in updates
            ]), "ids": j.encode([i.impression_id for i in updates])},
        )
    if fx.feedback_rows:
        _insert_rows(session, j, "feedback", _FEEDBACK_ROW, [
            {"event_id": ev.event_id, "impression_id": ev.impression_id,
             "experiment_key": ev.experiment_key, "kind": ev.kind, "value": ev.value,
             "occurred_at": ev.occurred_at, "received_at": now, "partition": part,
             "status": status}
            for ev, part, status in fx.feedback_rows
        ], "ON CONFLICT DO NOTHING", all_stored="event_id")
    if fx.feedback_status:
        session.execute(
            text(f"UPDATE feedback SET status = r.status"
                 f" FROM {j.rows('rows', _FEEDBACK_STATUS)} WHERE feedback.event_id = r.event_id"
                 f" AND {j.in_ids('feedback.event_id', 'ids')}"),
            {"rows": j.encode_rows([{"event_id": k, "status": v}
                                    for k, v in sorted(fx.feedback_status.items())]),
             "ids": j.encode(sorted(fx.feedback_status))},
        )
    if fx.stats:
        upsert_stats(session, fx.stats, now)
        rollups.add_batch(session, fx.stats, now)  # the dashboard's time buckets
    if fx.guardrail_stats:
        upsert_guardrail_stats(session, fx.guardrail_stats, now)
    if fx.counters:
        upsert_counters(session, group, fx.counters.items(), now)


def upsert_stats(
    session: Session, stats: dict[tuple[int, str, int], ArmSums], now: datetime
) -> None:
    """Add each (experiment, arm, partition) shard's sums to its ``arm_stats`` row."""
    _upsert_sums(session, "arm_stats", _STATS_ROW, ("experiment_id", "arm_key", "partition"),
                 stats, now)


def upsert_guardrail_stats(
    session: Session, stats: dict[tuple[int, str, str, int], ArmSums], now: datetime
) -> None:
    """Add each (experiment, arm, metric, partition) shard's sums to its ``guardrail_stats``
    row."""
    _upsert_sums(session, "guardrail_stats", _GUARDRAIL_ROW,
                 ("experiment_id", "arm_key", "metric", "partition"), stats, now)


def _upsert_sums(session: Session, table: str, spec: list[tuple[str, str]],
                 keys: tuple[str, ...], stats: Mapping[tuple[Any, ...], ArmSums],
                 now: datetime) -> None:
    """One upsert adding each shard's ``ArmSums`` to its row of ``table`` (key columns
    ``keys``, in the order of the stats' keys)."""
    rows = []
    for key, sums in sorted(stats.items()):
        row: dict[str, Any] = {**dict(zip(keys, key, strict=True)), "updated_at": now}
        for name in FIELDS:
            value = getattr(sums, name)
            row[name] = int(value) if name in COUNTS else value
        rows.append(row)
    added = ", ".join(f"{f} = {table}.{f} + excluded.{f}" for f in FIELDS)
    _insert_rows(session, _Json(session), table, spec, rows,
                 f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET "
                 f"{added}, updated_at = excluded.updated_at")


def upsert_counters(
    session: Session, group: str, items: Iterable[tuple[tuple[str, int], int]],
    now: datetime | None = None,
) -> None:
    """Add outcome counts by (reason, partition) to ``ingest_counters``, and the dead letters
    among them (every reason outside ``OK_OUTCOMES``) to the minute of ``now`` in
    ``dead_letter_buckets``: same transaction, so both roll back with the batch."""
    rows = [{"group_id": group, "reason": reason, "partition": part, "count": n}
            for (reason, part), n in sorted(items)]
    if not rows:
        return
    j = _Json(session)
    _insert_rows(session, j, "ingest_counters", _COUNTER_ROW, rows,
                 "ON CONFLICT (group_id, reason, partition) DO UPDATE SET "
                 "count = ingest_counters.count + excluded.count")
    start = dead_letter_bucket(now or utcnow())
    dead = [{**r, "bucket_start": start} for r in rows if r["reason"] not in OK_OUTCOMES]
    if dead:
        _insert_rows(session, j, "dead_letter_buckets", _BUCKET_ROW, dead,
                     "ON CONFLICT (group_id, reason, bucket_start, partition) DO UPDATE SET "
                     "count = dead_letter_buckets.count + excluded.count")


def dead_letter_bucket(at: datetime) -> datetime:
    """The start of the ``DEAD_LETTER_BUCKET_S`` bucket holding ``at`` (epoch-aligned, UTC)."""
    ts = as_utc(at).timestamp()
    return datetime.fromtimestamp(ts - ts % DEAD_LETTER_BUCKET_S, tz=UTC)


def read_dead_letters(
    session: Session, since: datetime, group: str | None = None
) -> dict[str, int]:
    """Dead letters by reason in the buckets starting at or after ``since`` (so a window is
    exact to one bucket: "the last hour" covers 60 to 61 minutes)."""
    q = (select(DeadLetterBucket.reason, func.sum(DeadLetterBucket.count))
         .where(DeadLetterBucket.bucket_start >= dead_letter_bucket(since))
         .group_by(DeadLetterBucket.reason))
    if group is not None:
        q = q.where(DeadLetterBucket.group_id == group)
    return {str(reason): int(n) for reason, n in session.execute(q)}


def prune_dead_letters(session: Session, before: datetime) -> int:
    """Delete the dead-letter buckets that start before ``before``; returns how many."""
    result = session.execute(delete(DeadLetterBucket)
                             .where(DeadLetterBucket.bucket_start < before)
                             .returning(DeadLetterBucket.reason))
    return len(result.all())


def report_lag(
    session: Session, group: str, consumer: str,
    positions: dict[TP, tuple[int, int | None]], now: datetime,
) -> None:
    """Upsert this consumer's ``(position, high watermark)`` per partition into
    ``consumer_lag`` (lag = high watermark - position, never negative; None while the high
    watermark is unknown)."""
    rows = []
    for (topic, part), (pos, hw) in sorted(positions.items()):
        rows.append({"group_id": group, "topic": topic, "partition": part, "position": pos,
                     "high_watermark": hw, "lag": None if hw is None else max(0, hw - pos),
                     "consumer": consumer[:255], "reported_at": now})
    if not rows:
        return
    stmt = _insert(session, ConsumerLag.__table__).values(rows)
    stmt = stmt.on_conflict_do_update(
        index_elements=["group_id", "topic", "partition"],
        set_={c: stmt.excluded[c] for c in ("position", "high_watermark", "lag", "consumer",
                                             "reported_at")})
    session.execute(stmt)


def read_counters(session: Session, group: str | None = None) -> dict[str, int]:
    """Ingest counters summed over partitions (and groups when ``group`` is None)."""
    q = select(IngestCounter.reason, IngestCounter.count)
    if group is not None:
        q = q.where(IngestCounter.group_id == group)
    out: dict[str, int] = {}
    for reason, n in session.execute(q):
        out[reason] = out.get(reason, 0) + int(n)
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


def stale_pending(
    session: Session, experiments: dict[str, ExperimentInfo], now: datetime, grace_s: float,
    limit: int = 1000,
) -> list[PendingFeedback]:
    """Pending feedback whose impression has not arrived within its experiment's attribution
    window (plus ``grace_s``) of the feedback being stored (``received_at``; not occurred_at,
    so replaying old data does not expire feedback whose impression is seconds away). The
    rows are locked and skipped by a concurrent sweep (``FOR UPDATE SKIP LOCKED``)."""
    if not experiments:
        return []
    shortest = min(e.window_s for e in experiments.values())
    cutoff = now - timedelta(seconds=shortest + grace_s)
    q = (
        select(Feedback.event_id, Feedback.impression_id, Feedback.experiment_key,
               Feedback.kind, Feedback.value, Feedback.occurred_at, Feedback.partition,
               Feedback.received_at)
        .where(Feedback.status == "pending", Feedback.received_at < cutoff)
        .order_by(Feedback.received_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    out: list[PendingFeedback] = []
    for row in session.execute(q):
        exp = experiments.get(row.experiment_key)
        window = exp.window_s if exp is not None else shortest
        if as_utc(row.received_at) < now - timedelta(seconds=window + grace_s):
            out.append(PendingFeedback(row.event_id, row.impression_id, row.experiment_key,
                                       row.kind, row.value, row.occurred_at, row.partition))
    return out


def mark_feedback(session: Session, event_ids: Sequence[str], status: str) -> None:
    """Set the ledger status of these feedback rows (the sweep: ``unknown``)."""
    if event_ids:
        session.execute(update(Feedback).where(Feedback.event_id.in_(list(event_ids)))
                        .values(status=status))
