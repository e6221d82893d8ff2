"""PostgreSQL 15 as a child process (as the ``postgres`` user when run as root)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import stat as st
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from armlab.errors import ConfigurationError
from armlab.settings import get_settings
from armlab.tools.devstack.common import (
    LOOPBACK,
    PG_BIN_CANDIDATES,
    ServiceStartError,
    _locked,
    _preexec,
    _rotate,
    _ServiceFiles,
    _signal_and_wait,
    _want_die_with_parent,
    free_port,
    pid_alive,
)


def find_pg_bin(bin_dir: str | os.PathLike[str] | None = None) -> Path:
    """Directory holding ``initdb`` and ``postgres``: explicit (``ARMLAB_PG_BIN``), else
    $PATH, else the Debian layout."""
    candidates: list[Path] = []
    explicit = bin_dir if bin_dir is not None else get_settings().pg_bin
    if explicit:  # an explicit choice is the only candidate: no silent fallback
        candidates.append(Path(explicit))
    else:
        on_path = shutil.which("initdb")
        if on_path:
            candidates.append(Path(on_path).resolve().parent)
        candidates.extend(Path(p) for p in PG_BIN_CANDIDATES)
    for c in candidates:
        if (c / "initdb").is_file() and (c / "postgres").is_file():
            return c
    where = ", ".join(str(c) for c in candidates)
    raise ConfigurationError(
        f"PostgreSQL server binaries (initdb, postgres) not found in {where}; "
        "install them with `apt-get install postgresql` (PostgreSQL 15) or set ARMLAB_PG_BIN"
    )


def _postgres_user() -> tuple[int, int] | None:
    """(uid, gid) to drop to when running as root, else None."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError as exc:
        raise ConfigurationError(
            "running as root but there is no `postgres` user to run the server as; "
            "`apt-get install postgresql` creates it (or run armlab as a normal user)"
        ) from exc
    return pw.pw_uid, pw.pw_gid


@dataclass
class PostgresServer(_ServiceFiles):
    """One PostgreSQL cluster in ``data_dir`` (pgdata/, sock/, postgres.log, service.json).

    ``fast=True`` turns off fsync, synchronous_commit and full_page_writes: only for
    throw-away test clusters; a crash can then lose or corrupt data.
    """

    data_dir: Path
    port: int = 0
    bin_dir: Path | None = None
    fast: bool = False
    user: str = "armlab"
    database: str = "armlab"
    superuser: str = "postgres"
    max_connections: int = 300
    die_with_parent: bool = False
    start_timeout: float = 60.0
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        meta = self._read_meta()
        if not self.port:
            self.port = int(meta.get("port") or 0) or free_port()

    # -- paths and urls
    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def socket_dir(self) -> Path:
        return self.data_dir / "sock"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "postgres.log"

    @property
    def host(self) -> str:
        return LOOPBACK

    def url_for(self, database: str, user: str | None = None) -> str:
        """SQLAlchemy URL (psycopg 3) for ``database`` on this server."""
        return f"postgresql+psycopg://{user or self.user}@{LOOPBACK}:{self.port}/{database}"

    @property
    def url(self) -> str:
        """The application database (role and database ``armlab``)."""
        return self.url_for(self.database)

    @property
    def admin_url(self) -> str:
        """Superuser connection to the maintenance database ``postgres``."""
        return self.url_for("postgres", self.superuser)

    def conninfo(self, database: str = "postgres", user: str | None = None) -> str:
        """libpq conninfo for psycopg.connect (no SQLAlchemy prefix)."""
        return (f"host={LOOPBACK} port={self.port} dbname={database} "
                f"user={user or self.superuser} connect_timeout=3")

    @property
    def pid(self) -> int | None:
        """Postmaster pid from ``postmaster.pid`` (works across processes), if alive."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    # -- lifecycle
    def _init(self, run_as: tuple[int, int] | None) -> None:
        bin_dir = find_pg_bin(self.bin_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if run_as is not None:
            uid, gid = run_as
            for p in (self.data_dir, self.socket_dir):
                os.chown(p, uid, gid)
            _check_traversable(self.data_dir, uid)
        cmd = [str(bin_dir / "initdb"), "-D", str(self.pgdata), "-U", self.superuser,
               "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"]
        with open(self.log_file, "ab") as log:
            res = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.data_dir,
                                 preexec_fn=_preexec(run_as, False), timeout=120, check=False,
                                 env=_clean_env())
        if res.returncode != 0:
            raise ServiceStartError(f"initdb failed (exit {res.returncode}) in {self.pgdata}",
                                    self.log_tail())
        conf = [
            "# added by armlab.tools.devstack",
            f"listen_addresses = '{LOOPBACK}'",
            f"port = {self.port}",
            f"unix_socket_directories = '{self.socket_dir}'",
            f"max_connections = {self.max_connections}",
            "shared_buffers = 128MB",
            "logging_collector = off",
            "log_min_messages = warning",
        ]
        if self.fast:  # test clusters only: durability traded for speed
            conf += ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
        with open(self.pgdata / "postgresql.conf", "a") as fh:
            fh.write("\n" + "\n".join(conf) + "\n")
        self._meta_path().write_text(json.dumps({"port": self.port, "fast": self.fast}))

    @_locked
    def start(self) -> PostgresServer:
        """Start (initialising the cluster on first use) and wait until it takes connections."""
        if self.is_running():
            self._wait_ready(self.pid)
            return self
        run_as = _postgres_user()
        bin_dir = find_pg_bin(self.bin_dir)
        if not (self.pgdata / "PG_VERSION").exists():
            self._init(run_as)
        stale = self.pgdata / "postmaster.pid"
        if stale.exists():  # left by a killed server whose pid is gone
            stale.unlink()
        _rotate(self.log_file)
        die = _want_die_with_parent(self.die_with_parent)
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(
                [str(bin_dir / "postgres"), "-D", str(self.pgdata)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.data_dir, preexec_fn=_preexec(run_as, die),
                start_new_session=True, env=_clean_env(),
            )
        self._wait_ready(self._proc.pid)
        self._ensure_app_role()
        return self

    def _wait_ready(self, pid: int | None) -> None:
        deadline = time.monotonic() + self.start_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            exited = (self._proc.poll() is not None) if self._proc is not None \
                else not pid_alive(pid)
            if exited:
                raise ServiceStartError(
                    f"PostgreSQL exited during start-up (data dir {self.pgdata})", self.log_tail())
            try:
                with psycopg.connect(self.conninfo(), autocommit=True) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.Error as exc:
                last = exc
                time.sleep(0.2)
        raise ServiceStartError(
            f"PostgreSQL did not accept connections on {LOOPBACK}:{self.port} within "
            f"{self.start_timeout:.0f}s ({last})", self.log_tail())

    def _ensure_app_role(self) -> None:
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                            (self.user,)).fetchone() is None:
                # SUPERUSER: a loopback trust-auth dev/test cluster; lets tests kill backends.
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER").format(
                    sql.Identifier(self.user)))
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                            (self.database,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(self.database), sql.Identifier(self.user)))

    @_locked
    def stop(self, mode: str = "fast", timeout: float = 30.0) -> None:
        """Stop: ``fast`` (SIGINT: roll back sessions, checkpoint), ``smart`` or ``immediate``."""
        pid = self.pid
        if pid is None:
            self._proc = None
            return
        sig = {"smart": signal.SIGTERM, "fast": signal.SIGINT,
               "immediate": signal.SIGQUIT}[mode]
        _signal_and_wait(pid, self._proc, sig, timeout)
        self._proc = None

    @_locked
    def kill(self) -> None:
        """SIGKILL the postmaster (a crash); the next start() runs crash recovery."""
        pid = self.pid
        if pid is None:
            return
        _signal_and_wait(pid, self._proc, signal.SIGKILL, 10)
        # Orphaned backends keep the shared memory segment; wait for them to notice and exit.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _backends_alive(self.pgdata):
            time.sleep(0.1)
        self._proc = None

    @_locked
    def restart(self, mode: str = "fast") -> PostgresServer:
        """Stop and start again on the same data directory and port."""
        self.stop(mode=mode)
        return self.start()

    def describe(self) -> dict[str, Any]:
        return {"service": "postgresql", "running": self.is_running(), "pid": self.pid,
                "port": self.port, "data_dir": str(self.data_dir), "url": self.url,
                "log": str(self.log_file)}


def _backends_alive(pgdata: Path) -> bool:
    """Any process still running with ``pgdata`` open as its cwd (postgres backends do)."""
    target = str(pgdata)
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if os.readlink(p / "cwd") == target and pid_alive(int(p.name)):
                return True
        except OSError:
            continue
    return False


def _check_traversable(path: Path, uid: int) -> None:
    """The postgres user must be able to reach ``path``; say which parent blocks it."""
    for parent in list(path.parents)[::-1]:
        try:
            s = parent.stat()
        except OSError:
            continue
        if s.st_uid == uid:
            continue
        if not s.st_mode & st.S_IXOTH:
            raise ConfigurationError(
                f"the postgres user cannot enter {parent} (mode {oct(s.st_mode & 0o777)}); "
                f"choose a data directory outside it (e.g. under /tmp) or `chmod o+x {parent}`"
            )


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "LC_"))}
    env["LANG"] = "C"
    return env


# --------------------------------------------------------------------------------------------
# Kafka
