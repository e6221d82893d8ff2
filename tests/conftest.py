"""Shared fixtures: a real PostgreSQL 15 server and a real Kafka 4.x KRaft broker.

Services start lazily (the first test that asks for them), on free loopback ports in temporary
directories, and stop at the end of the session. If one cannot start, every test that needs it
FAILS with the service's log tail — it is never skipped.

Fixtures (names fixed in the common brief; other areas code against them):

- ``pg_server`` (session): :class:`armlab.tools.devstack.PostgresServer` with ``.admin_url``,
  ``.url_for(db)``, ``.port``, ``.start()``, ``.stop(mode)``, ``.restart()``, ``.kill()``.
- ``pg_url`` (function): URL of a FRESH database already at alembic head
  (``postgresql+psycopg://armlab@127.0.0.1:PORT/t_...``), cloned from a template migrated once
  per session; dropped after the test.
- ``kafka`` (session): :class:`armlab.tools.devstack.KafkaBroker` with ``.bootstrap``,
  ``.start()``, ``.stop()``, ``.restart()``, ``.kill()``, ``.create_topic(name, partitions)``.
- ``kafka_bootstrap`` (session): ``"127.0.0.1:PORT"``.
- ``kafka_topic_factory`` (function): ``make(partitions=1, prefix="t") -> str`` creates a fresh
  uniquely named topic and waits until its metadata is visible.
- ``sqlite_url`` (function): a migrated SQLite file in ``tmp_path`` (copied from a template).

Tests that stop or kill a service must start it again (``try/finally``); the function-scoped
fixtures also restart a service a previous test left down.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TEMPLATE_DB = "armlab_tmpl"


def pytest_configure(config: pytest.Config) -> None:
    # kafka-python 3.0 loads its protocol schemas with deprecated importlib.resources calls.
    for msg in ("read_text is deprecated", "open_text is deprecated"):
        config.addinivalue_line("filterwarnings", f"ignore:{msg}:DeprecationWarning")


def _announce(config: pytest.Config, message: str) -> None:
    """Print past pytest's output capture so the line shows in `make test` output."""
    reporter = config.pluginmanager.getplugin("terminalreporter")
    capman = config.pluginmanager.getplugin("capturemanager")
    ctx = capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext()
    with ctx:
        if reporter is not None:
            reporter.write_line(message, bold=True)
        else:  # pragma: no cover - reporter disabled (-p no:terminal)
            print(message, file=sys.__stderr__, flush=True)


def _fail(what: str, exc: BaseException) -> None:
    pytest.fail(f"{what} could not start: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def _service_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="armlab-test-services-"))
    root.chmod(0o755)  # PostgreSQL runs as the `postgres` user when we are root
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server(request: pytest.FixtureRequest, _service_root: Path) -> Iterator[object]:
    """A PostgreSQL server for the whole session (fsync off: a throw-away test cluster)."""
    from armlab.tools.devstack import PostgresServer, find_pg_bin

    server = PostgresServer(_service_root / "postgres", fast=True, die_with_parent=True)
    started = time.monotonic()
    try:
        server.start()
        version = (find_pg_bin(server.bin_dir) / "postgres").parent.parent.name
    except Exception as exc:
        server.stop()
        _fail("PostgreSQL", exc)
    _announce(request.config,
              f"PostgreSQL {version} ready on 127.0.0.1:{server.port} "
              f"(pid {server.pid}, {time.monotonic() - started:.1f}s, data {server.data_dir})")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def _pg_template(pg_server: object) -> str:
    """Create and migrate the template database once; each test clones it (fast)."""
    import psycopg

    from armlab.adapters.db import migrate

    with psycopg.connect(pg_server.conninfo(), autocommit=True) as conn:  # type: ignore[attr-defined]
        conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{TEMPLATE_DB}" OWNER armlab')
    try:
        migrate.upgrade(pg_server.url_for(TEMPLATE_DB))  # type: ignore[attr-defined]
    except Exception as exc:
        pytest.fail(f"alembic upgrade head failed on PostgreSQL: {exc}", pytrace=False)
    return TEMPLATE_DB


_db_counter = itertools.count()


@pytest.fixture()
def pg_url(pg_server: object, _pg_template: str) -> Iterator[str]:
    """A fresh PostgreSQL database at alembic head, dropped after the test."""
    import psycopg

    if not pg_server.is_running():  # type: ignore[attr-defined]  # a previous test left it down
        pg_server.start()  # type: ignore[attr-defined]
    name = f"t_{os.getpid()}_{next(_db_counter)}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(pg_server.conninfo(), autocommit=True) as conn:  # type: ignore[attr-defined]
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{_pg_template}" OWNER armlab')
    yield pg_server.url_for(name)  # type: ignore[attr-defined]
    if not pg_server.is_running():  # type: ignore[attr-defined]
        pg_server.start()  # type: ignore[attr-defined]
    try:
        with psycopg.connect(pg_server.conninfo(), autocommit=True) as conn:  # type: ignore[attr-defined]
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except psycopg.Error:
        pass  # a leftover database in a throw-away cluster is harmless


@pytest.fixture(scope="session")
def kafka(request: pytest.FixtureRequest, _service_root: Path) -> Iterator[object]:
    """A single-node KRaft Kafka broker for the whole session."""
    from armlab.tools.devstack import KafkaBroker

    broker = KafkaBroker(_service_root / "kafka", die_with_parent=True)
    started = time.monotonic()
    try:
        broker.start()
    except Exception as exc:
        broker.stop()
        _fail("Kafka", exc)
    _announce(request.config,
              f"Kafka {broker.version} ready on {broker.bootstrap} "
              f"(pid {broker.pid}, {time.monotonic() - started:.1f}s, data {broker.data_dir})")
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka: object) -> str:
    """``"127.0.0.1:PORT"`` of the session's real Kafka broker."""
    return str(kafka.bootstrap)  # type: ignore[attr-defined]


_topic_counter = itertools.count()


@pytest.fixture()
def kafka_topic_factory(kafka: object) -> Callable[..., str]:
    """``make(partitions=1, prefix="t")`` creates a fresh, uniquely named topic."""
    if not kafka.is_running():  # type: ignore[attr-defined]  # a previous test left it down
        kafka.start()  # type: ignore[attr-defined]

    def make(partitions: int = 1, prefix: str = "t") -> str:
        name = f"{prefix}-{next(_topic_counter)}-{uuid.uuid4().hex[:8]}"
        return str(kafka.create_topic(name, partitions))  # type: ignore[attr-defined]

    return make


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from armlab.adapters.db import migrate

    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    migrate.upgrade(f"sqlite:///{path}")
    import sqlite3

    with sqlite3.connect(path) as conn:  # fold any WAL into the file before copying it
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


@pytest.fixture()
def sqlite_url(tmp_path: Path, _sqlite_template: Path) -> str:
    """A migrated SQLite database file in ``tmp_path`` (a copy of a per-session template)."""
    target = tmp_path / "armlab.db"
    shutil.copyfile(_sqlite_template, target)
    return f"sqlite:///{target}"
