"""guardrails: the experiment's guardrail metrics and rolled-back arms, each impression's
guardrail values, and guardrail_stats (per-arm per-metric sums written by the consumer)

Revision ID: 0004_guardrail_stats
Revises: 0002_arm_rollups
Create Date: 2026-11-29 13:15:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_guardrail_stats"
down_revision: str | None = "0003_time_partitions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN (PostgreSQL and SQLite both have it). NOT batch mode: on SQLite a batch
    # that recreates ``experiments`` drops the old table, and with foreign keys on, that
    # cascades to every arm, impression and audit row of the existing experiments.
    op.add_column("experiments", sa.Column("guardrails", sa.JSON(), nullable=False,
                                           server_default=sa.text("'[]'")))
    op.add_column("experiments", sa.Column("rolled_back", sa.JSON(), nullable=False,
                                           server_default=sa.text("'{}'")))
    op.add_column("impressions", sa.Column("guardrail_values", sa.JSON(), nullable=True))
    op.create_table(
        "guardrail_stats",
        sa.Column(
            "experiment_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("arm_key", sa.String(length=64), nullable=False),
        sa.Column("metric", sa.String(length=64), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("reward_sum", sa.Float(), nullable=False),
        sa.Column("reward_sumsq", sa.Float(), nullable=False),
        sa.Column("ipw_n", sa.Float(), nullable=False),
        sa.Column("ipw_sum", sa.Float(), nullable=False),
        sa.Column("ipw_sumsq", sa.Float(), nullable=False),
        sa.Column("ipw_n_sq", sa.Float(), nullable=False),
        sa.Column("feedback_n", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["experiment_id"], ["experiments.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("experiment_id", "arm_key", "metric", "partition"),
    )


def downgrade() -> None:
    op.drop_table("guardrail_stats")
    # ALTER TABLE ... DROP COLUMN (SQLite >= 3.35), never a table rebuild (see upgrade).
    for table, column in (("impressions", "guardrail_values"), ("experiments", "rolled_back"),
                          ("experiments", "guardrails")):
        op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
