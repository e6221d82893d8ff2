"""consumer_lag: each consumer's per-partition lag report; dead_letter_buckets: dead letters
by reason per minute (the dashboard's health panel reads both); an index that lets the
dashboard bin an experiment's snapshots by time without reading their rows

Revision ID: 0005_consumer_lag
Revises: 0002_arm_rollups
Create Date: 2026-11-29 13:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_consumer_lag"
down_revision: str | None = "0004_guardrail_stats"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "consumer_lag",
        sa.Column("group_id", sa.String(length=128), nullable=False),
        sa.Column("topic", sa.String(length=249), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("high_watermark", sa.BigInteger(), nullable=True),
        sa.Column("lag", sa.BigInteger(), nullable=True),
        sa.Column("consumer", sa.String(length=255), nullable=False),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("group_id", "topic", "partition"),
    )
    op.create_table(
        "dead_letter_buckets",
        sa.Column("group_id", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("bucket_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("group_id", "reason", "bucket_start", "partition"),
    )
    op.create_index("ix_dead_letter_buckets_start", "dead_letter_buckets", ["bucket_start"])
    op.create_index("ix_alloc_snap_experiment_created", "allocation_snapshots",
                    ["experiment_id", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_alloc_snap_experiment_created", table_name="allocation_snapshots")
    op.drop_index("ix_dead_letter_buckets_start", table_name="dead_letter_buckets")
    op.drop_table("dead_letter_buckets")
    op.drop_table("consumer_lag")
