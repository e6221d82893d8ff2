"""feedback.item_id: the shown item a feedback event names, kept in the ledger so a click
that waits for its impression (status pending) can still be credited to the ranker that
placed the item when the impression arrives (interleaving experiments)

Revision ID: 0008_feedback_item_id
Revises: 0007_interleaving
Create Date: 2026-12-05 18:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_feedback_item_id"
down_revision: str | None = "0007_interleaving"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN (nullable, no default): no table rewrite; on PostgreSQL the
    # partitioned ``feedback`` table passes it on to every partition.
    op.add_column("feedback", sa.Column("item_id", sa.String(length=128), nullable=True))


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN (SQLite >= 3.35), never a table rebuild.
    op.execute("ALTER TABLE feedback DROP COLUMN item_id")
