"""SQLAlchemy 2 models: the registry and the evidence the consumers and statistics need.

Schema changes happen only through Alembic revisions in ``armlab/migrations``. Types are
portable between PostgreSQL (production, tests) and SQLite (embedded demo).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from armlab.adapters.db.engine import Base
from armlab.core.clock import utcnow
from armlab.core.status import STATUS_VALUES, ExperimentStatus

EXPERIMENT_STATUSES = STATUS_VALUES


# BigInteger primary keys autoincrement on SQLite only as INTEGER; this variant keeps both happy.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Experiment(Base):
    __tablename__ = "experiments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    description: Mapped[str] = mapped_column(Text, default="", nullable=False)
    status: Mapped[str] = mapped_column(String(16), default=ExperimentStatus.DRAFT.value,
                                        nullable=False)
    unit: Mapped[str] = mapped_column(String(16), default="request", nullable=False)
    # "ab" or "interleaving"; the interleaving settings (InterleavingSpec dump) or None.
    design: Mapped[str] = mapped_column(String(16), default="ab", server_default=text("'ab'"),
                                        nullable=False)
    interleaving: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    reward_kind: Mapped[str] = mapped_column(String(16), default="binary", nullable=False)
    reward_metric: Mapped[str] = mapped_column(String(64), default="click", nullable=False)
    policy_name: Mapped[str] = mapped_column(String(32), default="thompson", nullable=False)
    policy_params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    exploration_floor: Mapped[float] = mapped_column(Float, default=0.0, nullable=False)
    burn_in: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    attribution_window_s: Mapped[int] = mapped_column(Integer, default=3600, nullable=False)
    control_arm_key: Mapped[str] = mapped_column(String(64), nullable=False)
    # alpha, tau2, theta0, min_samples, max_n, auto_stop, correction, method
    sequential: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    salt: Mapped[str] = mapped_column(String(64), nullable=False)
    shipped_arm_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Guardrail metrics as registered (GuardrailSpec dumps); immutable once running.
    guardrails: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list,
                                                             nullable=False)
    # Arms taken out of the allocation by a guardrail breach: arm key -> the evidence.
    rolled_back: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    arms: Mapped[list[Arm]] = relationship(
        back_populates="experiment", order_by="Arm.position", cascade="all, delete-orphan"
    )

    # Optimistic locking: every UPDATE carries WHERE version = <read version>.
    __mapper_args__ = {"version_id_col": version}


class Arm(Base):
    __tablename__ = "arms"
    __table_args__ = (UniqueConstraint("experiment_id", "key", name="uq_arms_experiment_key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), nullable=False
    )
    key: Mapped[str] = mapped_column(String(64), nullable=False)
    is_control: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    position: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    # Immutable once the experiment runs: a change makes a new arm.
    variant: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)

    experiment: Mapped[Experiment] = relationship(back_populates="arms")


class AuditLog(Base):
    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_experiment_at", "experiment_id", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), nullable=False
    )
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    actor: Mapped[str] = mapped_column(String(64), nullable=False)
    action: Mapped[str] = mapped_column(String(32), nullable=False)
    reason: Mapped[str] = mapped_column(Text, default="", nullable=False)
    before: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    after: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)


class AllocationSnapshot(Base):
    """Weights the allocator computed at one moment, with the statistics they came from."""

    __tablename__ = "allocation_snapshots"
    __table_args__ = (
        Index("ix_alloc_snap_experiment_id", "experiment_id", "id"),
        # the dashboard bins an experiment's snapshots by time: an index-only scan
        Index("ix_alloc_snap_experiment_created", "experiment_id", "created_at", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), nullable=False
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    policy_name: Mapped[str] = mapped_column(String(32), nullable=False)
    policy_version: Mapped[str] = mapped_column(String(32), nullable=False, default="1")
    weights: Mapped[dict[str, float]] = mapped_column(JSON, nullable=False)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)


class SumsColumns:
    """The columns of one :class:`armlab.core.evidence.ArmSums` (same names), shared by
    ``arm_stats``, ``guardrail_stats`` and ``arm_rollups``; each table lists them after its
    own key columns."""

    n: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    reward_sum: Mapped[float] = mapped_column(Float, default=0.0, nullable=False)
    reward_sumsq: Mapped[float] = mapped_column(Float, default=0.0, nullable=False)
    ipw_n: Mapped[float] = mapped_column(Float, default=0.0, nullable=False)
    ipw_sum: Mapped[float] = mapped_column(Float, default=0.0, nullable=False)
    ipw_sumsq: Mapped[float] = mapped_column(Float, default=0.0, nullable=False)
    ipw_n_sq: Mapped[float] = mapped_column(Float, default=0.0, nullable=False)
    feedback_n: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)


class ArmStats(SumsColumns, Base):
    """Per-arm sufficient statistics, sharded by Kafka partition (no cross-consumer contention).

    n / reward_sum / reward_sumsq: plain sums over impressions (reward 0 until feedback lands).
    ipw_*: inverse-propensity-weighted sums (1/p, r/p, r^2/p^2, 1/p^2) for the adaptive-valid
    sequential test and off-policy evaluation.
    """

    __tablename__ = "arm_stats"

    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    arm_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    updated_at: Mapped[datetime] = mapped_column(  # after the sums, as the migration has it
        DateTime(timezone=True), default=utcnow, onupdate=utcnow, sort_order=1
    )


class GuardrailStats(SumsColumns, Base):
    """Per-arm sufficient statistics of one guardrail metric (the ``ArmSums`` fields with
    "reward" = the metric's per-impression value), sharded by partition like ``arm_stats`` and
    written in the same batch transaction."""

    __tablename__ = "guardrail_stats"

    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    arm_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    metric: Mapped[str] = mapped_column(String(64), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow, sort_order=1
    )


#: Widths (seconds) of the time buckets the consumer adds each batch's per-arm sums to.
ROLLUP_WIDTHS_S = (60, 3600)


class ArmRollup(SumsColumns, Base):
    """Per-arm sums of the consumer batches committed inside one time bucket.

    The consumer adds a batch's :class:`armlab.core.evidence.ArmSums` (the same increments it
    adds to ``arm_stats``) to the row of the bucket holding the batch's commit time, once per
    width in :data:`ROLLUP_WIDTHS_S` and in the same transaction, so the running sum of a
    width's buckets up to time t is ``arm_stats`` as it stood at t. Sharded by partition like
    ``arm_stats`` (no cross-consumer contention). The dashboard's charts read these instead of
    scanning ``impressions``.
    """

    __tablename__ = "arm_rollups"

    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    width_s: Mapped[int] = mapped_column(Integer, primary_key=True)
    bucket_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    arm_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)


class Impression(Base):
    """One served arm. On PostgreSQL range-partitioned by week on ``served_at``
    (:mod:`armlab.adapters.db.partitions`), so the keys include it; the consumer keeps
    ``impression_id`` and ``event_id`` unique across partitions (it looks both up before
    inserting). SQLite keeps the plain table with ``impression_id`` alone as the key."""

    __tablename__ = "impressions"
    __table_args__ = (
        UniqueConstraint("event_id", "served_at", name="uq_impressions_event_id_served"),
        Index("ix_impressions_exp_arm_served", "experiment_id", "arm_key", "served_at"),
        {"postgresql_partition_by": "RANGE (served_at)"},
    )

    impression_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(64), nullable=False)
    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), nullable=False
    )
    arm_key: Mapped[str] = mapped_column(String(64), nullable=False)
    unit_id: Mapped[str] = mapped_column(String(128), nullable=False)
    propensity: Mapped[float] = mapped_column(Float, nullable=False)
    served_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # Current attributed reward of this impression (binary: 0/1; continuous: sum of values).
    reward: Mapped[float] = mapped_column(Float, default=0.0, nullable=False)
    feedback_count: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    items: Mapped[list[Any]] = mapped_column(JSON, default=list, nullable=False)
    context: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    # Guardrail metric values of this impression: metric key -> [value, feedback events];
    # None when the experiment has no guardrails (a metric absent: not observed).
    guardrail_values: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # An interleaved impression's log as the consumer keeps it (unit, teams by item, pair
    # propensities, clicks per team, credited items); None otherwise.
    interleaving: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Feedback(Base):
    """Ledger of accepted feedback events (dedupe by event_id).

    status: applied (joined to its impression), pending (impression not seen yet; applied
    when it lands), late (outside the attribution window), unknown (no impression ever).
    On PostgreSQL range-partitioned by week on ``occurred_at`` (so the key includes it); the
    partial index serves the pending sweep.
    """

    __tablename__ = "feedback"
    __table_args__ = (
        Index("ix_feedback_impression_status", "impression_id", "status"),
        Index("ix_feedback_pending_received", "received_at",
              postgresql_where=text("status = 'pending'"),
              sqlite_where=text("status = 'pending'")),
        {"postgresql_partition_by": "RANGE (occurred_at)"},
    )

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    impression_id: Mapped[str] = mapped_column(String(64), nullable=False)
    experiment_key: Mapped[str] = mapped_column(String(64), nullable=False)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    value: Mapped[float] = mapped_column(Float, nullable=False)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    partition: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="applied")
    # The shown item the feedback names (``str(item_id)``; interleaving credit), or None.
    item_id: Mapped[str | None] = mapped_column(String(128), nullable=True)


class Decision(Base):
    """One sequential-test evaluation of a treatment arm against control."""

    __tablename__ = "decisions"
    __table_args__ = (
        Index("ix_decisions_experiment_at", "experiment_id", "at"),
        # each arm's newest decision by index probe (the pages read it on every refresh)
        Index("ix_decisions_experiment_arm_id", "experiment_id", "arm_key", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), nullable=False
    )
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    arm_key: Mapped[str] = mapped_column(String(64), nullable=False)
    decision: Mapped[str] = mapped_column(String(32), nullable=False)
    estimate: Mapped[float | None] = mapped_column(Float, nullable=True)
    p_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    ci_low: Mapped[float | None] = mapped_column(Float, nullable=True)
    ci_high: Mapped[float | None] = mapped_column(Float, nullable=True)
    n_control: Mapped[float] = mapped_column(Float, default=0.0, nullable=False)
    n_treatment: Mapped[float] = mapped_column(Float, default=0.0, nullable=False)
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)


class UnitAssignment(Base):
    """Sticky arm of a user-unit experiment, fixed at first exposure."""

    __tablename__ = "unit_assignments"

    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    unit_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    arm_key: Mapped[str] = mapped_column(String(64), nullable=False)
    propensity: Mapped[float] = mapped_column(Float, nullable=False)
    assigned_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Catalog(Base):
    __tablename__ = "catalogs"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    content_hash: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    item_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class CatalogItem(Base):
    __tablename__ = "catalog_items"

    catalog_name: Mapped[str] = mapped_column(
        ForeignKey("catalogs.name", ondelete="CASCADE"), primary_key=True
    )
    item_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    title: Mapped[str] = mapped_column(Text, nullable=False, default="")
    text: Mapped[str] = mapped_column(Text, nullable=False, default="")
    attrs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    popularity: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)


# The consumer's bookkeeping and the interleaving tables live in their own modules; imported
# here so every table is on the metadata whenever the models are.
from armlab.adapters.db.models_ingest import (  # noqa: E402
    DEAD_LETTER_BUCKET_S,
    ConsumerLag,
    ConsumerOffset,
    DeadLetterBucket,
    IngestCounter,
    IngestLock,
)
from armlab.adapters.db.models_interleaving import (  # noqa: E402
    InterleavingCredit,
    InterleavingPair,
    InterleavingUnit,
)

__all__ = ["Experiment", "Arm", "AuditLog", "AllocationSnapshot", "ArmStats", "GuardrailStats",
           "ArmRollup", "Impression", "Feedback", "ConsumerOffset", "IngestCounter",
           "ConsumerLag", "DeadLetterBucket", "IngestLock", "Decision", "UnitAssignment",
           "Catalog", "CatalogItem", "InterleavingCredit", "InterleavingPair",
           "InterleavingUnit", "EXPERIMENT_STATUSES", "ROLLUP_WIDTHS_S", "DEAD_LETTER_BUCKET_S"]
