"""ingest_locks: the ids an ingest batch touches, upserted at the start of its transaction so
two consumers handling copies of one impression or event run one after the other

Revision ID: 0006_ingest_locks
Revises: 0005_consumer_lag
Create Date: 2026-12-05 15:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_ingest_locks"
down_revision: str | None = "0005_consumer_lag"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ingest_locks",
        sa.Column("key", sa.String(length=80), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index("ix_ingest_locks_at", "ingest_locks", ["at"])


def downgrade() -> None:
    op.drop_index("ix_ingest_locks_at", table_name="ingest_locks")
    op.drop_table("ingest_locks")
