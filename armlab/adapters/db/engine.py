"""Engine and session factories. Nothing is created at import time."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import DeclarativeBase, sessionmaker

#: Seconds PostgreSQL gets to accept a new connection (libpq ``connect_timeout``).
CONNECT_TIMEOUT_S = 5


log = logging.getLogger("armlab.db")

#: psycopg's libpq transaction status while a command is in progress (PQTRANS_ACTIVE).
_ACTIVE = 1


class Base(DeclarativeBase):
    pass


class CallWatchdog:
    """Cuts the connection of a database call that has been in progress for ``timeout_s``.

    A hung server (processes stopped, a network that drops packets without resetting) leaves a
    client blocked in ``recv`` for good: ``statement_timeout`` is enforced by the server that
    does not answer, and TCP keep-alives and ``tcp_user_timeout`` see a kernel that still
    acknowledges. One thread polls the engine's open connections every ``poll_s``; a connection
    whose libpq status has been ACTIVE (a command in progress: a query, a commit, the pool's
    pre-ping, the rollback on return) since the last statement started, for longer than
    ``timeout_s``, has its socket shut down, so the blocked call fails at once with a
    disconnect error (SQLAlchemy invalidates the connection; the API answers 503). Meant for
    processes whose calls are all short (the API), never for the consumer's batches.
    """

    def __init__(self, timeout_s: float, poll_s: float = 0.25) -> None:
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self._watched: dict[int, tuple[Any, float | None]] = {}  # id -> (dbapi conn, since)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.cut = 0

    def install(self, engine: Engine) -> None:
        event.listen(engine, "connect", self._opened)
        event.listen(engine, "close", self._closed)
        event.listen(engine, "close_detached", self._closed_detached)
        event.listen(engine, "before_cursor_execute", self._started)

    def _opened(self, dbapi_conn: Any, _rec: Any) -> None:
        with self._lock:
            self._watched[id(dbapi_conn)] = (dbapi_conn, None)
        self._ensure_thread()

    def _closed_detached(self, dbapi_conn: Any) -> None:
        self._closed(dbapi_conn, None)

    def _closed(self, dbapi_conn: Any, _rec: Any) -> None:
        with self._lock:
            self._watched.pop(id(dbapi_conn), None)

    def _started(self, conn: Any, *_: Any) -> None:
        raw = conn.connection.dbapi_connection
        with self._lock:
            if id(raw) in self._watched:
                self._watched[id(raw)] = (raw, time.monotonic())

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="armlab-db-watchdog",
                                            daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            now = time.monotonic()
            with self._lock:
                items = list(self._watched.items())
            for key, (raw, since) in items:
                pgconn = getattr(raw, "pgconn", None)
                if pgconn is None:
                    continue
                if pgconn.transaction_status != _ACTIVE:
                    since = None
                elif since is None:
                    since = now
                elif now - since > self.timeout_s:
                    self._cut(pgconn)
                    since = None
                with self._lock:
                    if key in self._watched:
                        self._watched[key] = (raw, since)

    def _cut(self, pgconn: Any) -> None:
        try:
            fd = pgconn.socket
            with socket.socket(fileno=os.dup(fd)) as sock:
                sock.shutdown(socket.SHUT_RDWR)
            self.cut += 1
            log.warning("database call exceeded its timeout; connection cut",
                        extra={"timeout_s": self.timeout_s})
        except Exception as exc:  # noqa: BLE001 - the watchdog must keep running
            log.debug("could not cut a connection: %s", exc)


def make_engine(
    url: str, *, pool_size: int = 10, echo: bool = False, call_timeout_s: float | None = None
) -> Engine:
    """Create an engine for PostgreSQL (psycopg 3) or SQLite (embedded demo).

    ``call_timeout_s`` (PostgreSQL): a :class:`CallWatchdog` cuts any call that runs longer."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, echo=echo, connect_args={"check_same_thread": False, "timeout": 30}
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _rec):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    # connect_timeout: a server that does not answer fails a new connection within seconds
    # instead of blocking its caller for the kernel's TCP timeout; pool_timeout bounds the wait
    # for a pooled connection the same way.
    engine = create_engine(
        url, echo=echo, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True,
        pool_timeout=CONNECT_TIMEOUT_S * 2, connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
    )
    if call_timeout_s:
        CallWatchdog(call_timeout_s).install(engine)
    return engine


def make_session_factory(engine: Engine) -> sessionmaker:
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=False)
