"""Database administration use cases (``armlab db upgrade|downgrade|current|maintain``) and
how the entry points tell a passing database failure from a bug.

Part of the wiring: the entry points call these instead of the database adapter, so the command
line and the API never import :mod:`armlab.adapters.db` (and the services never do).
"""

from __future__ import annotations

from armlab.adapters.db import migrate, partitions
from armlab.adapters.db.engine import make_engine, make_session_factory
from armlab.adapters.db.retry import is_transient

MaintenanceReport = partitions.MaintenanceReport

__all__ = ["MaintenanceReport", "current", "downgrade", "is_transient", "maintain", "upgrade"]


def upgrade(url: str, revision: str = "head") -> str | None:
    """Migrate the database at ``url`` up to ``revision``; returns the revision it is at."""
    migrate.upgrade(url, revision)
    return migrate.current(url)


def downgrade(url: str, revision: str) -> str | None:
    """Migrate the database at ``url`` down to ``revision`` (``base`` drops every table)."""
    migrate.downgrade(url, revision)
    return migrate.current(url)


def current(url: str) -> str | None:
    """The database's current revision (None when unmigrated)."""
    return migrate.current(url)


def maintain(url: str, *, retention_days: float, dry_run: bool = False
             ) -> partitions.MaintenanceReport:
    """One pass of time-partition maintenance (PostgreSQL): the coming weeks created, the
    weeks past the retention dropped (see :func:`armlab.adapters.db.partitions.maintain`)."""
    engine = make_engine(url, pool_size=1)
    try:
        with make_session_factory(engine)() as session, session.begin():
            return partitions.maintain(session, retention_days=retention_days,
                                       dry_run=dry_run)
    finally:
        engine.dispose()
