"""The consumer's outcome counts: ``ingest_counters`` per (group, reason, partition) and the
dead letters among them per minute in ``dead_letter_buckets`` (written in the batch's own
transaction), and their reads and pruning.

Re-exported by :mod:`armlab.adapters.db.consumer_store`, whose names callers use.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from armlab.adapters.db.consumer_json import JsonParam, insert_rows
from armlab.adapters.db.models import DEAD_LETTER_BUCKET_S, DeadLetterBucket, IngestCounter
from armlab.core.clock import as_utc, utcnow
from armlab.core.event_effects import OK_OUTCOMES

_COUNTER_ROW = [("group_id", "text"), ("reason", "text"), ("partition", "int"),
                ("count", "int")]
_BUCKET_ROW = [("group_id", "text"), ("reason", "text"), ("bucket_start", "ts"),
               ("partition", "int"), ("count", "int")]


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
    j = JsonParam(session)
    insert_rows(session, j, "ingest_counters", _COUNTER_ROW, rows,
                "ON CONFLICT (group_id, reason, partition) DO UPDATE SET "
                "count = ingest_counters.count + excluded.count")
    start = dead_letter_bucket(now or utcnow())
    dead = [{**r, "bucket_start": start} for r in rows if r["reason"] not in OK_OUTCOMES]
    if dead:
        insert_rows(session, j, "dead_letter_buckets", _BUCKET_ROW, dead,
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


def read_counters(session: Session, group: str | None = None) -> dict[str, int]:
    """Ingest counters summed over partitions (and groups when ``group`` is None)."""
    q = select(IngestCounter.reason, IngestCounter.count)
    if group is not None:
        q = q.where(IngestCounter.group_id == group)
    out: dict[str, int] = {}
    for reason, n in session.execute(q):
        out[reason] = out.get(reason, 0) + int(n)
    return out
