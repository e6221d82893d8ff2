"""Alembic migrations go up, down to base and up again on PostgreSQL and SQLite."""

from __future__ import annotations

import sqlalchemy as sa

from armlab.adapters.db import (
    migrate,
    models,  # noqa: F401  (registers every table)
)
from armlab.adapters.db.engine import Base, make_engine


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _cycle(url: str) -> None:
    expected = set(Base.metadata.tables)
    assert expected, "models define no tables?"
    assert _tables(url) >= expected
    head = migrate.current(url)
    assert head is not None
    migrate.downgrade(url, "base")
    assert migrate.current(url) is None
    assert _tables(url) == set(), f"left behind after downgrade: {_tables(url)}"
    migrate.upgrade(url, "head")
    assert migrate.current(url) == head
    assert _tables(url) >= expected
    # the ORM's view of every table matches what the migration created (columns by name)
    engine = make_engine(url)
    try:
        insp = sa.inspect(engine)
        for name, table in Base.metadata.tables.items():
            cols = {c["name"] for c in insp.get_columns(name)}
            assert {c.name for c in table.columns} == cols, name
    finally:
        engine.dispose()


def test_postgres_up_down_up(pg_url):
    _cycle(pg_url)


def test_sqlite_up_down_up(sqlite_url):
    _cycle(sqlite_url)


def test_postgres_enum_types_dropped_on_downgrade(pg_url):
    """Downgrade to base leaves no named types behind, so a second upgrade cannot collide."""
    migrate.downgrade(pg_url, "base")
    engine = make_engine(pg_url)
    try:
        with engine.connect() as conn:
            leftovers = conn.execute(sa.text(
                "SELECT typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
                "WHERE n.nspname = 'public' AND t.typtype = 'e'")).scalars().all()
    finally:
        engine.dispose()
    assert leftovers == []


def _keeps_rows(url: str) -> None:
    """Existing experiments keep their arms, impressions and audit rows through the guardrail
    revision, up and down (a SQLite table rebuild of ``experiments`` once cascaded them away)."""
    migrate.downgrade(url, "base")
    migrate.upgrade(url, "0002_arm_rollups")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO experiments (id, key, name, description, status, unit, reward_kind,"
                " reward_metric, policy_name, policy_params, exploration_floor, burn_in,"
                " attribution_window_s, control_arm_key, sequential, salt, version, created_at,"
                " updated_at) VALUES (7, 'old', 'old', '', 'running', 'request', 'binary',"
                " 'click', 'thompson', '{}', 0, 0, 60, 'a', '{}', 's', 1, CURRENT_TIMESTAMP,"
                " CURRENT_TIMESTAMP)"))
            conn.execute(sa.text("INSERT INTO arms (experiment_id, key, is_control, position,"
                                 " variant) VALUES (7, 'a', true, 0, '{}'), (7, 'b', false, 1,"
                                 " '{}')"))
            conn.execute(sa.text(
                "INSERT INTO impressions (impression_id, event_id, experiment_id, arm_key,"
                " unit_id, propensity, served_at, partition, reward, feedback_count, items,"
                " context) VALUES ('i1', 'e1', 7, 'a', 'u', 0.5, CURRENT_TIMESTAMP, 0, 1, 1,"
                " '[]', '{}')"))
            conn.execute(sa.text("INSERT INTO audit_log (experiment_id, at, actor, action,"
                                 " reason, before, after, evidence) VALUES (7,"
                                 " CURRENT_TIMESTAMP, 'x', 'create', '', '{}', '{}', '{}')"))
        counts = "SELECT (SELECT count(*) FROM arms), (SELECT count(*) FROM impressions), " \
                 "(SELECT count(*) FROM audit_log)"
        migrate.upgrade(url, "head")
        with engine.connect() as conn:
            assert tuple(conn.execute(sa.text(counts)).one()) == (2, 1, 1)
            g = conn.execute(sa.text("SELECT guardrails, rolled_back FROM experiments")).one()
            assert [str(v).replace(" ", "") for v in g] in (["[]", "{}"], ["[]", "{}"])
        migrate.downgrade(url, "0002_arm_rollups")
        with engine.connect() as conn:
            assert tuple(conn.execute(sa.text(counts)).one()) == (2, 1, 1)
    finally:
        engine.dispose()
        migrate.downgrade(url, "base")
        migrate.upgrade(url, "head")


def test_postgres_guardrail_revision_keeps_existing_rows(pg_url):
    _keeps_rows(pg_url)


def test_sqlite_guardrail_revision_keeps_existing_rows(sqlite_url):
    _keeps_rows(sqlite_url)
