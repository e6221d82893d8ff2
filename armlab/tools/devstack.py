"""A real local stack for development and tests: PostgreSQL 15 and a KRaft Apache Kafka 4.x broker.

Both run on 127.0.0.1 on free ports with their own data directories, are started as plain
child processes (no Docker), and expose ``start()``, ``stop()``, ``restart()`` (same data dir,
same port) and ``kill()`` (SIGKILL, for crash tests). ``armlab dev up`` and the pytest
fixtures in ``tests/conftest.py`` both use this module, so what the tests exercise is what a
developer runs.

PostgreSQL refuses to run as root, so when the effective uid is 0 the server and ``initdb``
run as the ``postgres`` system user (setuid/setgid in the child, the same as
``runuser -u postgres --``) and the data directory is owned by that user.

Kafka runs from the broker jars on Maven Central: the pom that lists them ships inside this
package (``armlab/tools/kafka/pom.xml``); ``mvn dependency:copy-dependencies`` fetches them
once into the jars directory (``ARMLAB_KAFKA_LIBS``, default ``<ARMLAB_HOME>/kafka-libs``), and
later starts need no network. The pom adds what the published POMs leave out: the log4j2
binding (without it the broker logs nothing) and log4j-api/core, which kafka_2.13 declares
compile-only. ``StorageTool format --standalone`` runs once per data dir, then
``java -cp libs/* kafka.Kafka``. Readiness is the log line "Kafka Server started" AND a
successful metadata call from kafka-python, because a bare TCP connect succeeds before the
broker is unfenced.

Nothing here depends on where armlab is installed: file locations come from settings or from
the package's own data, so an installed (non-editable) armlab runs the same stack.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import functools
import json
import os
import pwd
import shutil
import signal
import socket
import stat as st
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from kafka.admin import KafkaAdminClient, NewTopic
from psycopg import sql

from armlab.adapters.db import migrate as db_migrate
from armlab.errors import ConfigurationError, ServiceUnavailable
from armlab.settings import KafkaSettings, get_settings

LOOPBACK = "127.0.0.1"
PG_BIN_CANDIDATES = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin",
                     "/usr/lib/postgresql/17/bin", "/usr/pgsql-15/bin")
# The Maven project listing the broker jars, shipped as package data.
KAFKA_POM = resources.files("armlab.tools") / "kafka" / "pom.xml"


class ServiceStartError(ServiceUnavailable):
    """A local service would not start; the message carries the tail of its log."""

    title = "Local service failed to start"

    def __init__(self, message: str, log_tail: str = "") -> None:
        full = message if not log_tail else f"{message}\n--- log tail ---\n{log_tail}"
        super().__init__(full)
        self.log_tail = log_tail


# --------------------------------------------------------------------------------------------
# process helpers


def free_port() -> int:
    """Ask the kernel for a free loopback port (small race window; fine on a test box)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int | None) -> bool:
    """True if ``pid`` is a live (non-zombie) process."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return True


def tail(path: Path, lines: int = 60) -> str:
    """Last ``lines`` lines of a log file ('' if it does not exist)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64_000))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def _set_pdeathsig() -> None:
    """Linux: let the kernel SIGKILL the child when the parent thread dies (test fixtures)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: S110  (best effort only; not available off Linux)
        pass


def _preexec(run_as: tuple[int, int] | None, die_with_parent: bool) -> Callable[[], None]:
    def fn() -> None:
        if run_as is not None:
            uid, gid = run_as
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        # After the uid change: a credential change clears PDEATHSIG (prctl(2)).
        if die_with_parent:
            _set_pdeathsig()

    return fn


def _wait_exit(pid: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                return True
        elif not pid_alive(pid):
            return True
        time.sleep(0.1)
    return False


def _signal_and_wait(pid: int, proc: subprocess.Popen[bytes] | None, sig: int,
                     timeout: float) -> None:
    """Send ``sig``; escalate to SIGKILL after ``timeout`` seconds; reap our own child."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    if not _wait_exit(pid, proc, timeout):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_exit(pid, proc, 10)
    if proc is not None:
        with contextlib.suppress(Exception):
            proc.wait(timeout=5)


_F = TypeVar("_F", bound=Callable[..., Any])


def _locked(fn: _F) -> _F:
    """Serialise start/stop/kill/restart: tests may restart a service from another thread."""

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return fn(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _rotate(log: Path) -> None:
    if log.exists():
        with contextlib.suppress(OSError):
            log.replace(log.with_name(log.name + ".prev"))


def _want_die_with_parent(requested: bool) -> bool:
    # PDEATHSIG fires when the *thread* that forked exits; only trust it from the main thread
    # (a reliability test may call restart() from a worker thread that ends soon after).
    return requested and threading.current_thread() is threading.main_thread()


# --------------------------------------------------------------------------------------------
# PostgreSQL


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


class _ServiceFiles:
    """What PostgresServer and KafkaBroker share: liveness, log tail, ``service.json``."""

    data_dir: Path

    @property
    def pid(self) -> int | None:  # overridden by each service
        raise NotImplementedError

    @property
    def log_file(self) -> Path:  # overridden by each service
        raise NotImplementedError

    def is_running(self) -> bool:
        return self.pid is not None

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log_file, lines)

    def _meta_path(self) -> Path:
        return self.data_dir / "service.json"

    def _read_meta(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self._meta_path().read_text()))
        except (OSError, ValueError):
            return {}


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


def kafka_libs_dir() -> Path:
    """Where the broker jars are kept: ``ARMLAB_KAFKA_LIBS``, else ``<ARMLAB_HOME>/kafka-libs``."""
    settings = get_settings()
    return Path(settings.kafka_libs or (settings.home / "kafka-libs")).resolve()


def kafka_jars_present(libs: Path) -> bool:
    return any(libs.glob("kafka_2.13-*.jar")) and any(libs.glob("kafka-clients-*.jar"))


def kafka_version(libs: Path | None = None) -> str:
    libs = libs or kafka_libs_dir()
    jars = sorted(libs.glob("kafka_2.13-*.jar"))
    return jars[-1].name[len("kafka_2.13-"):-len(".jar")] if jars else "unknown"


def ensure_kafka_jars(libs: Path | None = None, progress: Callable[[str], None] | None = None
                      ) -> Path:
    """Fetch the broker jars with Maven once (cached; later starts need no network)."""
    libs = libs or kafka_libs_dir()
    if kafka_jars_present(libs):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ConfigurationError(
            f"Kafka broker jars missing in {libs} and `mvn` is not installed (apt-get install "
            "maven openjdk-17-jre-headless); or point ARMLAB_KAFKA_LIBS at a directory of jars")
    if progress:
        progress(f"fetching Kafka broker jars with Maven into {libs} (first run only)")
    libs.mkdir(parents=True, exist_ok=True)
    with resources.as_file(KAFKA_POM) as pom:
        res = subprocess.run([mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
                              f"-DoutputDirectory={libs}"], cwd=libs, capture_output=True,
                             text=True, timeout=900, check=False)
    if res.returncode != 0 or not kafka_jars_present(libs):
        raise ServiceStartError("mvn could not fetch the Kafka jars",
                                (res.stdout + res.stderr)[-4000:])
    (libs / ".complete").touch()
    return libs


def find_java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise ConfigurationError(
            "java not found: Kafka 4.x needs Java 17+ (apt-get install openjdk-17-jre-headless)")
    return java


def _cluster_id() -> str:
    """A Kafka Uuid in its base64url form, as StorageTool random-uuid prints it."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):  # Kafka's Uuid.randomUuid rejects these too
            return cid


SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers={host}:{cport}
listeners={proto}://{host}:{port},CONTROLLER://{host}:{cport}
advertised.listeners={proto}://{host}:{port},CONTROLLER://{host}:{cport}
listener.security.protocol.map=CONTROLLER:PLAINTEXT,{proto}:{proto}
controller.listener.names=CONTROLLER
inter.broker.listener.name={proto}
log.dirs={data}/kraft
num.partitions=1
default.replication.factor=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
"""

LOG4J2_PROPERTIES = """\
status = warn
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = STDERR
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = INFO
"""

JVM_OPTS = ["-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-Djava.awt.headless=true"]


@dataclass
class KafkaBroker(_ServiceFiles):
    """A single-node KRaft broker+controller in ``data_dir``: ``server.properties`` and a
    log4j2 config written there, the metadata log formatted once (``--standalone``: the
    dynamic KIP-853 quorum, so the controller endpoint is fixed at format time and the ports
    are kept in ``service.json``), then ``kafka.Kafka`` with the G1 options of
    ``kafka-run-class.sh``."""

    data_dir: Path
    port: int = 0
    controller_port: int = 0
    libs_dir: Path | None = None
    heap: str = "512m"
    die_with_parent: bool = False
    start_timeout: float = 120.0
    # user -> password: listen with SASL_PLAINTEXT (mechanism PLAIN) only, for testing
    # clients against an authenticating cluster; the first user is the broker's own.
    sasl_users: dict[str, str] | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        meta = self._read_meta()
        # The formatted metadata log records the controller endpoint: keep ports once chosen.
        self.port = self.port or int(meta.get("port") or 0) or free_port()
        self.controller_port = (self.controller_port or int(meta.get("controller_port") or 0)
                                or free_port())

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "logs" / "kafka.out"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "kafka.pid"

    @property
    def version(self) -> str:
        return kafka_version(self.libs_dir)

    @property
    def pid(self) -> int | None:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if not pid_alive(pid):
            return None
        try:  # guard against pid reuse
            if b"kafka.Kafka" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                return None
        except OSError:
            pass
        return pid

    def _java_base(self, libs: Path) -> list[str]:
        return [find_java(), f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
                f"-Dkafka.logs.dir={self.data_dir / 'logs'}", "-cp", f"{libs}/*"]

    @property
    def kafka_settings(self) -> KafkaSettings:
        """How a client reaches this broker (with the second SASL user when there are any)."""
        if not self.sasl_users:
            return KafkaSettings(bootstrap=self.bootstrap, security_protocol="PLAINTEXT")
        user, password = list(self.sasl_users.items())[-1]
        return KafkaSettings(bootstrap=self.bootstrap, security_protocol="SASL_PLAINTEXT",
                             sasl_mechanism="PLAIN", sasl_username=user,
                             sasl_password=password)

    def _server_properties(self) -> str:
        proto = "SASL_PLAINTEXT" if self.sasl_users else "PLAINTEXT"
        text = SERVER_PROPERTIES.format(host=LOOPBACK, port=self.port,
                                        cport=self.controller_port, data=self.data_dir,
                                        proto=proto)
        if self.sasl_users:
            (admin, admin_pw), users = next(iter(self.sasl_users.items())), self.sasl_users
            jaas = (f'org.apache.kafka.common.security.plain.PlainLoginModule required '
                    f'username="{admin}" password="{admin_pw}" '
                    + " ".join(f'user_{u}="{pw}"' for u, pw in users.items()) + ";")
            text += ("sasl.enabled.mechanisms=PLAIN\n"
                     "sasl.mechanism.inter.broker.protocol=PLAIN\n"
                     f"listener.name.sasl_plaintext.plain.sasl.jaas.config={jaas}\n")
        return text

    def _configure(self, libs: Path) -> None:
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        (self.data_dir / "kraft").mkdir(exist_ok=True)
        (self.data_dir / "server.properties").write_text(self._server_properties())
        (self.data_dir / "log4j2.properties").write_text(LOG4J2_PROPERTIES)
        self._meta_path().write_text(json.dumps(
            {"port": self.port, "controller_port": self.controller_port}))
        if not (self.data_dir / "kraft" / "meta.properties").exists():
            res = subprocess.run(
                [*self._java_base(libs), "-Xmx256m", "kafka.tools.StorageTool", "format",
                 "--standalone", "-t", _cluster_id(), "-c",
                 str(self.data_dir / "server.properties")],
                capture_output=True, text=True, timeout=120, check=False)
            if res.returncode != 0:
                raise ServiceStartError("Kafka StorageTool format failed",
                                        (res.stdout + res.stderr)[-4000:])

    @_locked
    def start(self, progress: Callable[[str], None] | None = None) -> KafkaBroker:
        """Start (format on first use) and wait until the broker serves metadata."""
        if self.is_running():
            self._wait_ready(check_log=False)
            return self
        libs = ensure_kafka_jars(self.libs_dir, progress)
        self._configure(libs)
        _rotate(self.log_file)
        die = _want_die_with_parent(self.die_with_parent)
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(
                [*self._java_base(libs)[:1], f"-Xms{self.heap}", f"-Xmx{self.heap}", *JVM_OPTS,
                 *self._java_base(libs)[1:], "kafka.Kafka",
                 str(self.data_dir / "server.properties")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.data_dir, preexec_fn=_preexec(None, die), start_new_session=True,
            )
        self.pid_file.write_text(str(self._proc.pid))
        self._wait_ready(check_log=True)
        return self

    def _wait_ready(self, check_log: bool) -> None:
        deadline = time.monotonic() + self.start_timeout
        logged = not check_log
        last: Exception | None = None
        while time.monotonic() < deadline:
            if not self.is_running():
                raise ServiceStartError(
                    f"Kafka exited during start-up (data dir {self.data_dir})", self.log_tail())
            if not logged:
                logged = "Kafka Server started" in tail(self.log_file, 400)
            if logged and port_open(self.port):
                try:
                    self.list_topics(timeout_ms=5000)
                    return
                except Exception as exc:  # kafka.errors.*: not ready yet
                    last = exc
            time.sleep(0.3)
        raise ServiceStartError(
            f"Kafka did not become ready on {self.bootstrap} within {self.start_timeout:.0f}s "
            f"(log line seen: {logged}; last admin error: {last})", self.log_tail())

    def admin(self, timeout_ms: int = 10000) -> Any:
        """A kafka-python KafkaAdminClient for this broker (caller closes it)."""
        return KafkaAdminClient(**self.kafka_settings.client_config(),
                                request_timeout_ms=timeout_ms, client_id="armlab-devstack")

    def list_topics(self, timeout_ms: int = 10000) -> list[str]:
        admin = self.admin(timeout_ms)
        try:
            return sorted(admin.list_topics())
        finally:
            admin.close()

    def create_topic(self, name: str, partitions: int = 1) -> str:
        admin = self.admin()
        try:
            admin.create_topics([NewTopic(name, partitions, 1)], wait_for_metadata=True)
        finally:
            admin.close()
        return name

    @_locked
    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (controlled shutdown), SIGKILL after ``timeout`` seconds."""
        pid = self.pid
        if pid is not None:
            _signal_and_wait(pid, self._proc, signal.SIGTERM, timeout)
        self._proc = None
        with contextlib.suppress(OSError):
            self.pid_file.unlink()

    @_locked
    def kill(self) -> None:
        """SIGKILL the broker (a crash); the next start() recovers its logs."""
        pid = self.pid
        if pid is not None:
            _signal_and_wait(pid, self._proc, signal.SIGKILL, 10)
        self._proc = None
        with contextlib.suppress(OSError):
            self.pid_file.unlink()

    @_locked
    def restart(self) -> KafkaBroker:
        """Stop and start again on the same data directory and ports."""
        self.stop()
        return self.start()

    def describe(self) -> dict[str, Any]:
        return {"service": "kafka", "running": self.is_running(), "pid": self.pid,
                "port": self.port, "controller_port": self.controller_port,
                "bootstrap": self.bootstrap, "data_dir": str(self.data_dir),
                "version": self.version, "log": str(self.log_file)}


# --------------------------------------------------------------------------------------------
# the dev stack (armlab dev up|down|status)


@dataclass
class DevStack:
    """Both services under ``<home>/dev`` plus an ``env`` file a shell can source."""

    home: Path

    @property
    def root(self) -> Path:
        return Path(self.home).resolve() / "dev"

    @property
    def env_file(self) -> Path:
        return self.root / "env"

    def postgres(self) -> PostgresServer:
        return PostgresServer(self.root / "postgres")

    def kafka(self) -> KafkaBroker:
        return KafkaBroker(self.root / "kafka")

    def env(self) -> dict[str, str]:
        pg, kafka = self.postgres(), self.kafka()
        return {"ARMLAB_DATABASE_URL": pg.url, "ARMLAB_KAFKA_BOOTSTRAP": kafka.bootstrap,
                "ARMLAB_TRANSPORT": "kafka"}

    def up(self, progress: Callable[[str], None] = lambda _m: None, migrate: bool = True
           ) -> dict[str, str]:
        self.root.mkdir(parents=True, exist_ok=True)
        pg = self.postgres()
        if pg.is_running():
            progress(f"PostgreSQL already running on {LOOPBACK}:{pg.port} (pid {pg.pid})")
        else:
            progress(f"starting PostgreSQL on {LOOPBACK}:{pg.port} ({pg.data_dir})")
            pg.start()
            progress(f"PostgreSQL ready on {LOOPBACK}:{pg.port} (pid {pg.pid})")
        kafka = self.kafka()
        if kafka.is_running():
            progress(f"Kafka already running on {kafka.bootstrap} (pid {kafka.pid})")
        else:
            progress(f"starting Kafka on {kafka.bootstrap} ({kafka.data_dir})")
            kafka.start(progress=progress)
            progress(f"Kafka {kafka.version} ready on {kafka.bootstrap} (pid {kafka.pid})")
        if migrate:
            db_migrate.upgrade(pg.url)
            progress(f"database migrated to {db_migrate.current(pg.url)}")
        env = self.env()
        self.env_file.write_text("".join(f"export {k}={v}\n" for k, v in env.items()))
        return env

    def down(self, progress: Callable[[str], None] = lambda _m: None) -> None:
        for svc, name in ((self.kafka(), "Kafka"), (self.postgres(), "PostgreSQL")):
            if svc.is_running():
                progress(f"stopping {name} (pid {svc.pid})")
                svc.stop()
            else:
                progress(f"{name} not running")

    def status(self) -> list[dict[str, Any]]:
        return [self.postgres().describe(), self.kafka().describe()]
