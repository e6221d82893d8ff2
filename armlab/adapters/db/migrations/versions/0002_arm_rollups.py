"""arm_rollups: time-bucketed per-arm sums written by the consumer; an index for each arm's
newest decision

Revision ID: 0002_arm_rollups
Revises: 0001_initial
Create Date: 2026-11-29 10:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_arm_rollups"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "arm_rollups",
        sa.Column(
            "experiment_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("width_s", sa.Integer(), nullable=False),
        sa.Column("bucket_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("arm_key", sa.String(length=64), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("reward_sum", sa.Float(), nullable=False),
        sa.Column("reward_sumsq", sa.Float(), nullable=False),
        sa.Column("ipw_n", sa.Float(), nullable=False),
        sa.Column("ipw_sum", sa.Float(), nullable=False),
        sa.Column("ipw_sumsq", sa.Float(), nullable=False),
        sa.Column("ipw_n_sq", sa.Float(), nullable=False),
        sa.Column("feedback_n", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["experiment_id"], ["experiments.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("experiment_id", "width_s", "bucket_start", "arm_key",
                                "partition"),
    )


    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.create_index("ix_decisions_experiment_arm_id",
                              ["experiment_id", "arm_key", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.drop_index("ix_decisions_experiment_arm_id")
    op.drop_table("arm_rollups")
