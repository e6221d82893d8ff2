"""time partitions: impressions by served_at and feedback by occurred_at (PostgreSQL), and
an index for the pending-feedback sweep

Revision ID: 0003_time_partitions
Revises: 0002_arm_rollups
Create Date: 2026-11-29 13:30:00

On PostgreSQL each table is converted in place: the old table is renamed, a partitioned table
with the same columns is created (primary keys widened by the partition key, see
``armlab.adapters.db.partitions``), a DEFAULT partition and one partition per week that holds
data (plus the current week and the weeks ahead) are created, the rows are moved, and the old
table is dropped. SQLite keeps plain tables and only gets the sweep's index. The downgrade moves
the rows back into plain tables with the old keys (a second row with an impression_id or
event_id already copied is left out: the consumer never stores one).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.orm import Session

from armlab.adapters.db import partitions

revision: str = "0003_time_partitions"
down_revision: str | None = "0002_arm_rollups"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING_INDEX = "ix_feedback_pending_received"

# table -> (partitioned primary key, unique constraints, indexes) of the partitioned table
_NEW = {
    "impressions": ("impression_id, served_at",
                    {"uq_impressions_event_id_served": "event_id, served_at"},
                    {"ix_impressions_exp_arm_served": "experiment_id, arm_key, served_at"}),
    "feedback": ("event_id, occurred_at", {},
                 {"ix_feedback_impression_status": "impression_id, status"}),
}
# table -> (old primary key, old unique constraints, old indexes)
_OLD = {
    "impressions": ("impression_id", {"impressions_event_id_key": "event_id"},
                    {"ix_impressions_exp_arm_served": "experiment_id, arm_key, served_at"}),
    "feedback": ("event_id", {}, {"ix_feedback_impression_status": "impression_id, status"}),
}


def _drop_keys(table: str) -> None:
    """Drop the primary key, unique constraints and indexes of ``table`` (their names are
    schema-wide and the new table reuses them)."""
    bind = op.get_bind()
    for (name,) in bind.execute(sa.text(
        "SELECT conname FROM pg_constraint WHERE conrelid = CAST(:t AS regclass) "
        "AND contype IN ('p', 'u')"), {"t": table}).all():
        op.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    for (name,) in bind.execute(sa.text(
        "SELECT indexname FROM pg_indexes WHERE tablename = :t "
        "AND schemaname = current_schema()"), {"t": table}).all():
        op.execute(f'DROP INDEX "{name}"')


def _add_keys(table: str, pk: str, uniques: dict[str, str], indexes: dict[str, str]) -> None:
    op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY ({pk})")
    for name, cols in uniques.items():
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} UNIQUE ({cols})")
    for name, cols in indexes.items():
        op.execute(f"CREATE INDEX {name} ON {table} ({cols})")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        with op.batch_alter_table("feedback", schema=None) as batch_op:
            batch_op.create_index(PENDING_INDEX, ["received_at"], unique=False,
                                  sqlite_where=sa.text("status = 'pending'"))
        return
    session = Session(bind=bind)
    now = datetime.now(UTC)
    for table, key in partitions.PARTITIONED.items():
        old = f"{table}_unpartitioned"
        op.execute(f"ALTER TABLE {table} RENAME TO {old}")
        _drop_keys(old)
        op.execute(f"CREATE TABLE {table} (LIKE {old} INCLUDING DEFAULTS) "
                   f"PARTITION BY RANGE ({key})")
        pk, uniques, indexes = _NEW[table]
        _add_keys(table, pk, uniques, indexes)
        if table == "impressions":
            op.execute("ALTER TABLE impressions ADD CONSTRAINT impressions_experiment_id_fkey "
                       "FOREIGN KEY (experiment_id) REFERENCES experiments (id) "
                       "ON DELETE CASCADE")
        have: set[str] = set()
        partitions.ensure_default(session, table, have)
        weeks = {partitions.week_start(t) for (t,) in bind.execute(sa.text(
            f"SELECT DISTINCT date_trunc('day', {key} AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' "
            f"FROM {old}")).all()}
        weeks |= {partitions.week_start(now) + k * partitions.PERIOD
                  for k in range(-1, partitions.AHEAD_WEEKS + 1)}
        for start in sorted(weeks):
            partitions.create_week(session, table, start, have)
        op.execute(f"INSERT INTO {table} SELECT * FROM {old}")
        op.execute(f"DROP TABLE {old}")
    op.execute(f"CREATE INDEX {PENDING_INDEX} ON feedback (received_at) "
               "WHERE status = 'pending'")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        with op.batch_alter_table("feedback", schema=None) as batch_op:
            batch_op.drop_index(PENDING_INDEX)
        return
    for table in partitions.PARTITIONED:
        plain = f"{table}_plain"
        op.execute(f"CREATE TABLE {plain} (LIKE {table} INCLUDING DEFAULTS)")
        pk, uniques, _ = _OLD[table]
        op.execute(f"ALTER TABLE {plain} ADD PRIMARY KEY ({pk})")
        for cols in uniques.values():
            op.execute(f"ALTER TABLE {plain} ADD UNIQUE ({cols})")
        op.execute(f"INSERT INTO {plain} SELECT * FROM {table} ON CONFLICT DO NOTHING")
        op.execute(f"DROP TABLE {table}")  # with its partitions and indexes
        op.execute(f"ALTER TABLE {plain} RENAME TO {table}")
        _drop_keys(table)
        _add_keys(table, *_OLD[table])
        if table == "impressions":
            op.execute("ALTER TABLE impressions ADD CONSTRAINT impressions_experiment_id_fkey "
                       "FOREIGN KEY (experiment_id) REFERENCES experiments (id) "
                       "ON DELETE CASCADE")
