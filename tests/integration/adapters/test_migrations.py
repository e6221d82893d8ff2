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
