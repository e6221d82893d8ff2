"""What both services share: ports, processes, signals, log files and the service-file layout."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from armlab.errors import ServiceUnavailable

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
