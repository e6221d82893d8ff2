"""Database side of ingestion: offsets (with zombie fencing), prefetching the state a batch
touches, and writing a batch's effects. One implementation for PostgreSQL and SQLite: the
statements are SQLAlchemy Core, and the only dialect-specific piece is which ``insert`` gives
``ON CONFLICT`` (:func:`_insert`). Bulk writes are one statement per table run for many rows
(psycopg pipelines them; multi-row INSERTs via SQLAlchemy's insertmanyvalues).

Commit order inside ONE transaction (quix-streams style, KafkaConsumer Javadoc "Storing
Offsets Outside Kafka"): fence + advance offsets -> prefetch (rows locked on PostgreSQL) ->
handle -> write effects -> commit. The fence is a conditional update
``... WHERE next_offset = <offset this batch started from>``: a consumer that lost its
partitions (a zombie) updates 0 rows and rolls back instead of overwriting the new owner.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from armlab.adapters.db.models import (
    Arm,
    ArmStats,
    ConsumerOffset,
    Experiment,
    Feedback,
    Impression,
    IngestCounter,
)
from armlab.core.clock import utcnow
from armlab.core.evidence import COUNTS, FIELDS, ArmSums
from armlab.core.ingest import (
    BatchState,
    Effects,
    ExperimentInfo,
    ImpressionState,
    PendingFeedback,
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


# -- prefetch ------------------------------------------------------------------------------
_IMPRESSION_STATE = (
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
_PENDING = (
    Feedback.event_id,
    Feedback.impression_id,
    Feedback.experiment_key,
    Feedback.kind,
    Feedback.value,
    Feedback.occurred_at,
    Feedback.partition,
)


def prefetch(
    session: Session,
    imp_ids: set[str],
    imp_events: set[str],
    fb_events: set[str],
    arriving: set[str],
) -> BatchState:
    """Load the rows a batch references. Impressions and pending feedback are locked
    (``FOR UPDATE`` on PostgreSQL; SQLite has one writer anyway) so a concurrent consumer
    cannot interleave a reward update."""
    state = BatchState()
    for chunk in _chunks(sorted(imp_ids)):
        q = select(*_IMPRESSION_STATE).where(Impression.impression_id.in_(chunk))
        for row in session.execute(q.with_for_update()):
            state.impressions[row[0]] = ImpressionState(*row)
            state.impression_event_ids.add(row[1])
    for chunk in _chunks(imp_events - state.impression_event_ids):
        ev = select(Impression.event_id).where(Impression.event_id.in_(chunk))
        state.impression_event_ids.update(r[0] for r in session.execute(ev))
    for chunk in _chunks(fb_events):
        ev = select(Feedback.event_id).where(Feedback.event_id.in_(chunk))
        state.feedback_event_ids.update(r[0] for r in session.execute(ev))
    for chunk in _chunks(sorted(arriving)):
        pq = (
            select(*_PENDING)
            .where(Feedback.impression_id.in_(chunk), Feedback.status == "pending")
            .order_by(Feedback.occurred_at, Feedback.event_id)
        )
        for prow in session.execute(pq.with_for_update()):
            state.pending.setdefault(prow[1], []).append(PendingFeedback(*prow))
    return state


# -- effects -------------------------------------------------------------------------------
_IMPRESSIONS: Table = Impression.__table__  # type: ignore[assignment]
_FEEDBACK: Table = Feedback.__table__  # type: ignore[assignment]
_ARM_STATS: Table = ArmStats.__table__  # type: ignore[assignment]
_COUNTERS: Table = IngestCounter.__table__  # type: ignore[assignment]

_UPDATE_IMPRESSION = (
    update(_IMPRESSIONS)
    .where(_IMPRESSIONS.c.impression_id == bindparam("b_id"))
    .values(reward=bindparam("b_reward"), feedback_count=bindparam("b_fc"))
)
_UPDATE_FEEDBACK = (
    update(_FEEDBACK)
    .where(_FEEDBACK.c.event_id == bindparam("b_id"))
    .values(status=bindparam("b_status"))
)


def write_effects(session: Session, group: str, fx: Effects) -> None:
    """Write one batch's effects, one statement per table (executed for many rows at once).

    Aggregates are pre-summed per key and upserted once per key, in sorted key order (no
    "cannot affect row a second time", no deadlocks between consumers)."""
    now = utcnow()
    if fx.new_impressions:
        session.execute(_insert(session, _IMPRESSIONS).on_conflict_do_nothing(), [
            {"impression_id": imp.impression_id, "event_id": imp.event_id,
             "experiment_id": imp.experiment_id, "arm_key": imp.arm_key,
             "unit_id": ev.unit_id, "propensity": imp.propensity, "served_at": imp.served_at,
             "partition": imp.partition, "reward": imp.reward,
             "feedback_count": imp.feedback_count, "items": ev.items, "context": ev.context}
            for imp, ev in zip(fx.new_impressions, fx.new_impression_rows, strict=True)
        ])
    if fx.impression_updates:
        session.execute(_UPDATE_IMPRESSION, [
            {"b_id": i.impression_id, "b_reward": i.reward, "b_fc": i.feedback_count}
            for i in sorted(fx.impression_updates.values(), key=lambda i: i.impression_id)
        ])
    if fx.feedback_rows:
        session.execute(_insert(session, _FEEDBACK).on_conflict_do_nothing(), [
            {"event_id": ev.event_id, "impression_id": ev.impression_id,
             "experiment_key": ev.experiment_key, "kind": ev.kind, "value": ev.value,
             "occurred_at": ev.occurred_at, "received_at": now, "partition": part,
             "status": status}
            for ev, part, status in fx.feedback_rows
        ])
    if fx.feedback_status:
        session.execute(_UPDATE_FEEDBACK, [
            {"b_id": k, "b_status": v} for k, v in sorted(fx.feedback_status.items())
        ])
    if fx.stats:
        upsert_stats(session, fx.stats, now)
    if fx.counters:
        upsert_counters(session, group, fx.counters.items())


def upsert_stats(
    session: Session, stats: dict[tuple[int, str, int], ArmSums], now: datetime
) -> None:
    """Add each (experiment, arm, partition) shard's sums to its ``arm_stats`` row."""
    rows = []
    for (exp_id, arm, part), sums in sorted(stats.items()):
        row: dict[str, Any] = {"experiment_id": exp_id, "arm_key": arm, "partition": part,
                               "updated_at": now}
        for name in FIELDS:
            value = getattr(sums, name)
            row[name] = int(value) if name in COUNTS else value
        rows.append(row)
    ins = _insert(session, _ARM_STATS).values(rows)
    set_ = {name: _ARM_STATS.c[name] + ins.excluded[name] for name in FIELDS}
    set_["updated_at"] = ins.excluded.updated_at
    session.execute(ins.on_conflict_do_update(
        index_elements=["experiment_id", "arm_key", "partition"], set_=set_
    ))


def upsert_counters(
    session: Session, group: str, items: Iterable[tuple[tuple[str, int], int]]
) -> None:
    """Add outcome counts by (reason, partition) to ``ingest_counters``."""
    rows = [{"group_id": group, "reason": reason, "partition": part, "count": n}
            for (reason, part), n in sorted(items)]
    if not rows:
        return
    ins = _insert(session, _COUNTERS).values(rows)
    session.execute(ins.on_conflict_do_update(
        index_elements=["group_id", "reason", "partition"],
        set_={"count": _COUNTERS.c["count"] + ins.excluded["count"]},
    ))


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
