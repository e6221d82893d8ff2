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
down_revision: str | None = "0002_arm_rollups"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("guardrails", sa.JSON(), nullable=False,
                                      server_default=sa.text("'[]'")))
        batch_op.add_column(sa.Column("rolled_back", sa.JSON(), nullable=False,
                                      server_default=sa.text("'{}'")))
    with op.batch_alter_table("impressions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("guardrail_values", sa.JSON(), nullable=True))
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
    with op.batch_alter_table("impressions", schema=None) as batch_op:
        batch_op.drop_column("guardrail_values")
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.drop_column("rolled_back")
        batch_op.drop_column("guardrails")
