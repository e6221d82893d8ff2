"""`armlab db maintain [--dry-run]` on PostgreSQL (prints what it created / dropped) and on
SQLite (plain tables: nothing to do)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime

import sqlalchemy as sa

from armlab.adapters.db import partitions
from armlab.adapters.db.engine import make_engine


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ARMLAB_DATABASE_URL=url, ARMLAB_LOG_LEVEL="ERROR")
    return subprocess.run([sys.executable, "-m", "armlab", "db", "maintain", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_db_maintain_dry_run_then_for_real(pg_url: str) -> None:
    old = partitions.week_start(datetime.now(UTC)) - 40 * partitions.PERIOD
    name = partitions.partition_name("impressions", old)
    engine = make_engine(pg_url, pool_size=1)
    end = old + partitions.PERIOD
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {name} PARTITION OF impressions FOR VALUES FROM "
                             f"('{old.isoformat()}') TO ('{end.isoformat()}')"))
    dry = _cli(pg_url, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would have: dropped {name}" in dry.stdout.splitlines()
    real = _cli(pg_url)
    assert real.returncode == 0, real.stderr
    assert f"dropped {name}" in real.stdout.splitlines()
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regclass(:n)"), {"n": name}).scalar() is None
    engine.dispose()
    again = _cli(pg_url, "--retention-days", "0")
    assert again.stdout.splitlines() == ["nothing to do"], again


def test_db_maintain_on_sqlite_does_nothing(sqlite_url: str) -> None:
    p = _cli(sqlite_url)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("skipped: sqlite")
