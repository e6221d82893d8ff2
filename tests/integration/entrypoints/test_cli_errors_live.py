"""`armlab consume` on a database nobody migrated: one readable line, exit 1."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from typing import Any

import psycopg


def test_consume_on_an_unmigrated_database_prints_one_line(
    pg_server: Any, kafka_bootstrap: str
) -> None:
    name = f"empty_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.conninfo(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" OWNER armlab')
    url = pg_server.url_for(name).replace("armlab@", "armlab:hunter2@")
    env = dict(os.environ, ARMLAB_DATABASE_URL=url, ARMLAB_KAFKA_BOOTSTRAP=kafka_bootstrap,
               ARMLAB_TRANSPORT="kafka", ARMLAB_LOG_LEVEL="ERROR")
    try:
        p = subprocess.run([sys.executable, "-m", "armlab", "consume", "--exit-when-idle", "5"],
                           env=env, capture_output=True, text=True, timeout=120)
    finally:
        with psycopg.connect(pg_server.conninfo(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    err = p.stderr.strip()
    assert p.returncode == 1, (p.stdout, err)
    assert "Traceback" not in err and "hunter2" not in err
    last = err.splitlines()[-1]
    assert last.startswith("error: the database has no armlab tables"), err
    assert "armlab db upgrade" in last
