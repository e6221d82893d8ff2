"""Time partitions of the raw event tables on PostgreSQL, and their retention.

``impressions`` is range-partitioned on ``served_at`` and ``feedback`` on ``occurred_at``
(PostgreSQL declarative partitioning), one partition per UTC week (Monday 00:00 to the next
Monday) plus a DEFAULT partition that catches anything outside the created weeks (replayed old
data when retention is off, a client clock far in the future). The key is the event's own
time, not the time it was received, because an exact redelivery of an event carries the same
time: the primary keys ``(impression_id, served_at)`` and ``(event_id, occurred_at)`` (a unique
index on a partitioned table must contain the partition key) still refuse a second copy at the
database, and the consumer's rule "events older than the retention horizon are refused"
(reason ``expired``) also covers every copy of an event whose partition was dropped. Weeks, not
days: a lookup by id alone (the consumer's dedup and join) probes every partition's index, so
fewer partitions keep it cheap (about 15 with 90 days of retention).

:func:`maintain` (the consumer runs it every hour; ``armlab db maintain`` by hand) creates the
previous, the current and the next ``AHEAD_WEEKS`` weeks' partitions (moving any DEFAULT rows that
belong to a new week into it), and, when a retention is set, drops each partition whose whole
week ended more than ``retention + DROP_SLACK`` ago and deletes DEFAULT rows older than that.
It runs under a transaction-level advisory lock (``pg_try_advisory_xact_lock``): a second
process that finds the lock held skips the pass instead of waiting, so several consumers can
run it safely. DDL waits at most ``LOCK_TIMEOUT_MS`` for its table lock; a pass that times out
changes nothing and is retried at the next interval. Only ``impressions`` and ``feedback`` are
ever touched: ``arm_stats``, rollups, snapshots, decisions and the audit log are kept whole.

SQLite (the embedded demo) keeps plain tables: :func:`maintain` reports ``sqlite`` and does
nothing there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session

#: Partitioned table -> its partition key column.
PARTITIONED = {"impressions": "served_at", "feedback": "occurred_at"}
PERIOD = timedelta(days=7)
#: Weeks created ahead of the current one (the previous week is kept created too, for events
#: served just before the week changed that arrive after it).
AHEAD_WEEKS = 2
#: Extra age past the retention before a partition is dropped (clock skew between the
#: consumer's horizon and the maintaining process must not drop rows the consumer still
#: accepts duplicates of).
DROP_SLACK = timedelta(days=1)
LOCK_TIMEOUT_MS = 5000
#: pg_advisory lock id of a maintenance pass ("armlab" in ASCII).
ADVISORY_LOCK_ID = 0x61726D6C6162
_NAME = re.compile(r"^(impressions|feedback)_p(\d{8})$")


def week_start(t: datetime) -> datetime:
    """Monday 00:00 UTC of the week holding ``t``."""
    t = t.astimezone(UTC)
    day = datetime(t.year, t.month, t.day, tzinfo=UTC)
    return day - timedelta(days=day.weekday())


def partition_name(table: str, start: datetime) -> str:
    return f"{table}_p{start:%Y%m%d}"


def default_name(table: str) -> str:
    return f"{table}_default"


def horizon(now: datetime, retention_days: float | None) -> datetime | None:
    """Oldest event time kept (and accepted by the consumer); None: keep forever."""
    if not retention_days:
        return None
    return now - timedelta(days=retention_days)


@dataclass
class MaintenanceReport:
    """What a pass did (or, with ``dry_run``, would do)."""

    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    moved: dict[str, int] = field(default_factory=dict)  # new partition -> DEFAULT rows moved
    purged: dict[str, int] = field(default_factory=dict)  # DEFAULT partition -> rows deleted
    skipped: str | None = None  # why nothing was done ("sqlite", "locked", "not partitioned")

    def lines(self) -> list[str]:
        """One human-readable line per action."""
        if self.skipped:
            return [f"skipped: {self.skipped}"]
        out = [f"created {n}" + (f" (moved {self.moved[n]} rows from DEFAULT)"
                                 if self.moved.get(n) else "") for n in self.created]
        out += [f"dropped {n}" for n in self.dropped]
        out += [f"deleted {k} rows older than retention from {n}"
                for n, k in self.purged.items() if k]
        return out or ["nothing to do"]


def is_partitioned(session: Session, table: str) -> bool:
    if session.get_bind().dialect.name != "postgresql":
        return False
    kind = session.execute(
        text("SELECT relkind FROM pg_class WHERE relname = :t "
             "AND relnamespace = to_regnamespace(current_schema())"), {"t": table}
    ).scalar()
    return kind == "p"


def existing(session: Session, table: str) -> set[str]:
    """Names of ``table``'s partitions."""
    rows = session.execute(text(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = :t "
        "AND p.relnamespace = to_regnamespace(current_schema())"), {"t": table})
    return {r[0] for r in rows}


def create_week(session: Session, table: str, start: datetime, have: set[str]) -> int | None:
    """Create the week partition starting at ``start`` unless present; returns the DEFAULT rows
    moved into it (None when it already existed). Rows of that week that sit in DEFAULT are
    moved in the same transaction (PostgreSQL refuses a new partition whose range DEFAULT still
    holds rows)."""
    name = partition_name(table, start)
    if name in have:
        return None
    key = PARTITIONED[table]
    end = start + PERIOD
    bounds = f"FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
    dflt = default_name(table)
    params = {"s": start, "e": end}
    moved = 0
    if dflt in have and session.execute(
        text(f"SELECT EXISTS (SELECT 1 FROM {dflt} WHERE {key} >= :s AND {key} < :e)"), params
    ).scalar():
        session.execute(text(f"CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS)"))
        moved = int(session.execute(text(
            f"WITH m AS (DELETE FROM {dflt} WHERE {key} >= :s AND {key} < :e RETURNING *), "
            f"i AS (INSERT INTO {name} SELECT * FROM m) SELECT count(*) FROM m"), params
        ).scalar() or 0)
        session.execute(text(f"ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES {bounds}"))
    else:
        session.execute(text(f"CREATE TABLE {name} PARTITION OF {table} FOR VALUES {bounds}"))
    have.add(name)
    return moved


def ensure_default(session: Session, table: str, have: set[str]) -> bool:
    """Create the DEFAULT partition unless present; True when created."""
    name = default_name(table)
    if name in have:
        return False
    session.execute(text(f"CREATE TABLE {name} PARTITION OF {table} DEFAULT"))
    have.add(name)
    return True


def _skip_reason(session: Session, dry_run: bool) -> str | None:
    """Why this pass does nothing (SQLite, tables not partitioned, the lock held elsewhere),
    or None; a real pass takes the advisory lock and sets the DDL lock timeout."""
    if session.get_bind().dialect.name != "postgresql":
        return "sqlite (plain tables, no partitions, no retention)"
    if not all(is_partitioned(session, t) for t in PARTITIONED):
        return "tables not partitioned (run `armlab db upgrade`)"
    if not dry_run:
        if not session.execute(text("SELECT pg_try_advisory_xact_lock(:k)"),
                               {"k": ADVISORY_LOCK_ID}).scalar():
            return "locked (another process is maintaining the partitions)"
        session.execute(text(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}"))
    return None


def _create_ahead(session: Session, table: str, have: set[str], first: datetime,
                  report: MaintenanceReport, dry_run: bool) -> None:
    """The DEFAULT partition and the previous, current and next AHEAD_WEEKS weeks."""
    if dry_run:
        if default_name(table) not in have:
            report.created.append(default_name(table))
    elif ensure_default(session, table, have):
        report.created.append(default_name(table))
    for k in range(-1, AHEAD_WEEKS + 1):
        start = first + k * PERIOD
        name = partition_name(table, start)
        if name in have:
            continue
        if dry_run:
            report.created.append(name)
            continue
        moved = create_week(session, table, start, have)
        report.created.append(name)
        if moved:
            report.moved[name] = moved


def _drop_expired(session: Session, table: str, have: set[str], drop_before: datetime,
                  report: MaintenanceReport, dry_run: bool) -> None:
    """Drop the week partitions that ended before ``drop_before``; delete (count, with
    ``dry_run``) the DEFAULT rows older than that."""
    key = PARTITIONED[table]
    for name in sorted(have):
        m = _NAME.match(name)
        if m is None or m.group(1) != table:
            continue
        start = datetime.strptime(m.group(2), "%Y%m%d").replace(tzinfo=UTC)
        if start + PERIOD <= drop_before:
            report.dropped.append(name)
            if not dry_run:
                session.execute(text(f"DROP TABLE {name}"))
    dflt = default_name(table)
    if dflt in have:
        if dry_run:
            n = session.execute(text(f"SELECT count(*) FROM {dflt} WHERE {key} < :c"),
                                {"c": drop_before}).scalar()
        else:
            n = session.execute(text(f"WITH d AS (DELETE FROM {dflt} WHERE {key} < :c "
                                     "RETURNING 1) SELECT count(*) FROM d"),
                                {"c": drop_before}).scalar()
        report.purged[dflt] = int(n or 0)


def maintain(
    session: Session,
    *,
    retention_days: float | None,
    now: datetime | None = None,
    dry_run: bool = False,
) -> MaintenanceReport:
    """One maintenance pass inside the caller's transaction (module doc). The caller commits;
    with ``dry_run`` nothing is changed and the report says what would be."""
    report = MaintenanceReport()
    report.skipped = _skip_reason(session, dry_run)
    if report.skipped:
        return report
    now = (now or datetime.now(UTC)).astimezone(UTC)
    cut = horizon(now, retention_days)
    drop_before = None if cut is None else cut - DROP_SLACK
    first = week_start(now)
    for table in PARTITIONED:
        have = existing(session, table)
        _create_ahead(session, table, have, first, report, dry_run)
        if drop_before is not None:
            _drop_expired(session, table, have, drop_before, report, dry_run)
    return report
