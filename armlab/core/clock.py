"""Time in armlab: every timestamp is timezone-aware UTC.

SQLite hands back naive datetimes for ``DateTime(timezone=True)`` columns; :func:`as_utc`
turns them (and anything else armlab stored) back into aware UTC values. This is the one place
that rule lives.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


def as_utc(ts: datetime) -> datetime:
    """``ts`` as an aware UTC datetime; naive values are taken to be UTC already."""
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def as_utc_or_none(ts: datetime | None) -> datetime | None:
    """:func:`as_utc` that passes ``None`` through (nullable columns)."""
    return None if ts is None else as_utc(ts)
