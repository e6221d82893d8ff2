"""The consumer's bookkeeping tables: its offsets (committed with each batch's effects), its
outcome counters, lag reports, dead letters per minute and the ingest locks."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from armlab.adapters.db.engine import Base
from armlab.core.clock import utcnow


class ConsumerOffset(Base):
    """Next offset to read per (group, topic, partition), committed with the batch's effects."""

    __tablename__ = "consumer_offsets"

    group_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    topic: Mapped[str] = mapped_column(String(249), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    next_offset: Mapped[int] = mapped_column(BigInteger, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class IngestCounter(Base):
    """Counts of ingestion outcomes by reason (rejected, late, unknown...), per partition."""

    __tablename__ = "ingest_counters"

    group_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    reason: Mapped[str] = mapped_column(String(64), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)


class ConsumerLag(Base):
    """Each consumer's last report on a partition it owns: the next offset committed with the
    effects (``position``), the broker's high watermark then, and their difference.

    Written by the ingest runner on a timer (not inside the batch transaction: it is
    informational), so the dashboard can show lag per partition without a Kafka client; the
    age of ``reported_at`` shows a consumer that stopped reporting.
    """

    __tablename__ = "consumer_lag"

    group_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    topic: Mapped[str] = mapped_column(String(249), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger, nullable=False)
    high_watermark: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    lag: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    consumer: Mapped[str] = mapped_column(String(255), nullable=False)
    reported_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


#: Width (seconds) of the time buckets dead letters are counted in, and how long they are kept.
DEAD_LETTER_BUCKET_S = 60


class DeadLetterBucket(Base):
    """Dead letters by reason per minute (and partition), added in the batch's transaction
    next to ``ingest_counters``; buckets older than
    :data:`armlab.core.records.DEAD_LETTER_RETENTION_S` are pruned by the consumer, so the
    table stays small."""

    __tablename__ = "dead_letter_buckets"
    __table_args__ = (Index("ix_dead_letter_buckets_start", "bucket_start"),)

    group_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    reason: Mapped[str] = mapped_column(String(64), primary_key=True)
    bucket_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)


class IngestLock(Base):
    """One row per id an ingest batch touches (``i:<impression_id>``, ``e:<impression
    event_id>``, ``f:<feedback event_id>``), upserted in sorted order at the start of the
    batch's transaction (PostgreSQL only). The upsert locks the row until COMMIT, so two
    consumers handling the same impression or event at the same moment (copies spread over
    partitions that different members own) run one after the other, and the second reads
    what the first stored. Rows are pruned after
    :data:`armlab.core.records.INGEST_LOCK_RETENTION_S`."""

    __tablename__ = "ingest_locks"
    __table_args__ = (Index("ix_ingest_locks_at", "at"),)

    key: Mapped[str] = mapped_column(String(80), primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
