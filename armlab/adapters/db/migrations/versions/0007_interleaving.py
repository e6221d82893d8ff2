"""interleaving: the experiment's design and interleaving settings, each impression's
interleaving log, and the per-unit credits and per-pair tallies the consumer writes

Revision ID: 0007_interleaving
Revises: 0006_ingest_locks
Create Date: 2026-12-05 18:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_interleaving"
down_revision: str | None = "0006_ingest_locks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_EXP_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # Plain ADD COLUMN, never a batch table rebuild (see 0004: a rebuild of ``experiments`` on
    # SQLite cascades deletes).
    op.add_column("experiments", sa.Column("design", sa.String(length=16), nullable=False,
                                           server_default=sa.text("'ab'")))
    op.add_column("experiments", sa.Column("interleaving", sa.JSON(), nullable=True))
    op.add_column("impressions", sa.Column("interleaving", sa.JSON(), nullable=True))
    op.create_table(
        "interleaving_units",
        sa.Column("experiment_id", _EXP_ID, nullable=False),
        sa.Column("unit_id", sa.String(length=128), nullable=False),
        sa.Column("impressions", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["experiment_id"], ["experiments.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("experiment_id", "unit_id"),
    )
    op.create_table(
        "interleaving_credits",
        sa.Column("experiment_id", _EXP_ID, nullable=False),
        sa.Column("unit_id", sa.String(length=128), nullable=False),
        sa.Column("ranker_a", sa.String(length=64), nullable=False),
        sa.Column("ranker_b", sa.String(length=64), nullable=False),
        sa.Column("credit", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["experiment_id"], ["experiments.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("experiment_id", "unit_id", "ranker_a", "ranker_b"),
    )
    op.create_table(
        "interleaving_pairs",
        sa.Column("experiment_id", _EXP_ID, nullable=False),
        sa.Column("ranker_a", sa.String(length=64), nullable=False),
        sa.Column("ranker_b", sa.String(length=64), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("compared", sa.BigInteger(), nullable=False),
        sa.Column("a_wins", sa.BigInteger(), nullable=False),
        sa.Column("b_wins", sa.BigInteger(), nullable=False),
        sa.Column("a_clicks", sa.BigInteger(), nullable=False),
        sa.Column("b_clicks", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["experiment_id"], ["experiments.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("experiment_id", "ranker_a", "ranker_b", "partition"),
    )


def downgrade() -> None:
    for table in ("interleaving_pairs", "interleaving_credits", "interleaving_units"):
        op.drop_table(table)
    # ALTER TABLE ... DROP COLUMN (SQLite >= 3.35), never a table rebuild (see upgrade).
    for table, column in (("impressions", "interleaving"), ("experiments", "interleaving"),
                          ("experiments", "design")):
        op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
