"""The consumer's positions in the database: offsets with zombie fencing, the ingest locks
that serialise consumers on the ids a batch touches, and the lag reports.

Commit order inside ONE transaction (quix-streams style, KafkaConsumer Javadoc "Storing
Offsets Outside Kafka"): fence + advance offsets -> prefetch (rows locked on PostgreSQL) ->
handle -> write effects -> commit. The fence is a conditional update
``... WHERE next_offset = <offset this batch started from>``: a consumer that lost its
partitions (a zombie) updates 0 rows and rolls back instead of overwriting the new owner.

Re-exported by :mod:`armlab.adapters.db.consumer_store`, whose names callers use.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

from sqlalchemy import delete, select, text, update
from sqlalchemy.orm import Session

from armlab.adapters.db.consumer_json import dialect_insert
from armlab.adapters.db.models import ConsumerLag, ConsumerOffset, IngestLock
from armlab.core.clock import utcnow
from armlab.core.fencing import Fenced

TP = tuple[str, int]


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
                dialect_insert(session, ConsumerOffset.__table__)
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


# -- lag -----------------------------------------------------------------------------------
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
    stmt = dialect_insert(session, ConsumerLag.__table__).values(rows)
    stmt = stmt.on_conflict_do_update(
        index_elements=["group_id", "topic", "partition"],
        set_={c: stmt.excluded[c] for c in ("position", "high_watermark", "lag", "consumer",
                                             "reported_at")})
    session.execute(stmt)


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
