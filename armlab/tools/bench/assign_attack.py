"""``armlab bench assign --under-attack``: assign throughput while someone guesses tokens.

One API process (as ``armlab bench assign``: uvicorn, one worker, the fast path, auth on) is
measured by the load process in alternating phases of the same run: quiet, then while a
thread of this process fires wrong bearer tokens at ``/assign`` as fast as one keep-alive
connection allows, from another loopback address (``127.0.0.2``: the throttle counts per
client address, and the legitimate load comes from ``127.0.0.1``). The attacker's answers
are counted by status: with the throttle, after the free failures nearly all are 429 (no
token checked) and the 401s are the guesses the server actually checked. A second API
process with the throttle off (``ARMLAB_AUTH_THROTTLE_FAILURES=0``) gets the same attack,
for the guesses-per-second baseline.
"""

from __future__ import annotations

import os
import secrets
import socket
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from armlab.errors import ConfigurationError
from armlab.tools.bench.assign import _prepare, api_server, run_load

ATTACK_SOURCE = "127.0.0.2"


class Attacker(threading.Thread):
    """Fires ``Authorization: Bearer <wrong>`` assign requests on one keep-alive connection
    from ``source`` until stopped; counts the answers by status."""

    def __init__(self, base: str, key: str, source: str = ATTACK_SOURCE) -> None:
        super().__init__(daemon=True, name="armlab-bench-attacker")
        parts = urlsplit(base)
        self.address = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.source = source
        self.key = key
        self.statuses: Counter[int] = Counter()
        self.elapsed_s = 0.0
        self.error: str | None = None
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(self.address, timeout=10,
                                        source_address=(self.source, 0))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def run(self) -> None:
        body = b'{"unit_id":"attacker"}'
        start = time.perf_counter()
        try:
            sock = self._connect()
            buf = b""
            n = 0
            while not self._halt.is_set():
                n += 1
                head = (f"POST /v1/experiments/{self.key}/assign HTTP/1.1\r\n"
                        f"Host: {self.address[0]}\r\nAuthorization: Bearer guess-{n:08d}\r\n"
                        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
                sock.sendall(head.encode() + body)
                while b"\r\n\r\n" not in buf:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("the server closed the connection")
                    buf += chunk
                hdr, _, buf = buf.partition(b"\r\n\r\n")
                lower = hdr.lower()
                i = lower.find(b"content-length:")
                length = int(lower[i + 15: lower.find(b"\r\n", i)]) if i >= 0 else 0
                while len(buf) < length:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("the server closed the connection")
                    buf += chunk
                buf = buf[length:]
                self.statuses[int(hdr[9:12])] += 1
            sock.close()
        except OSError as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.elapsed_s = time.perf_counter() - start

    def figures(self) -> dict[str, Any]:
        total = sum(self.statuses.values())
        seconds = max(self.elapsed_s, 1e-9)
        return {
            "requests": total,
            "requests_per_s": round(total / seconds, 1),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "guesses_checked_per_s": round(self.statuses.get(401, 0) / seconds, 2),
            "seconds": round(self.elapsed_s, 2),
            "error": self.error,
        }


def _attacked(base: str, key: str, token: str, requests: int, concurrency: int,
              max_seconds: float) -> tuple[dict[str, Any], dict[str, Any]]:
    attacker = Attacker(base, key)
    attacker.start()
    time.sleep(0.5)  # the attacker is through its free failures and blocked
    try:
        load = run_load(base, key, token, requests, concurrency, max_seconds, "request")
    finally:
        attacker.stop()
    return load, attacker.figures()


def _median(rows: list[dict[str, Any]], field: str) -> float | None:
    values = [float(r[field]) for r in rows if r.get(field) is not None]
    return round(statistics.median(values), 3) if values else None


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"requests_per_s": [r.get("requests_per_s") for r in rows],
            "median_requests_per_s": _median(rows, "requests_per_s"),
            "median_p50_ms": _median(rows, "p50_ms"), "median_p99_ms": _median(rows, "p99_ms"),
            "errors": sum(int(r.get("errors") or 0) for r in rows), "runs": rows}


def _check_attack_source() -> None:
    """ConfigurationError unless this machine can send from the attacker's address."""
    try:
        socket.create_connection(("127.0.0.1", 9), timeout=0.1,
                                 source_address=(ATTACK_SOURCE, 0)).close()
    except ConnectionRefusedError:
        pass  # the source address works (nothing listens on port 9)
    except OSError as exc:
        raise ConfigurationError(f"cannot send from {ATTACK_SOURCE}: {exc}") from exc


def run_assign_attack_bench(*, requests: int = 20_000, concurrency: int = 8,
                            max_seconds: float = 10.0, rounds: int = 3) -> dict[str, Any]:
    """``rounds`` alternations of a quiet and an attacked load phase on one throttled server,
    then one of each on a server with the throttle off; medians of each kind."""
    _check_attack_source()
    env_url = os.environ.get("ARMLAB_DATABASE_URL", "")
    tmp = Path(tempfile.mkdtemp(prefix="armlab-bench-attack-"))
    url = env_url if env_url.startswith("postgresql") else f"sqlite:///{tmp / 'bench.db'}"
    key = _prepare(url, "request")
    token = secrets.token_hex(16)
    quiet: list[dict[str, Any]] = []
    attacked: list[dict[str, Any]] = []
    attackers: list[dict[str, Any]] = []
    with api_server(url, key, token) as base:
        for _ in range(rounds):
            quiet.append(run_load(base, key, token, requests, concurrency, max_seconds,
                                  "request"))
            load, attack = _attacked(base, key, token, requests, concurrency, max_seconds)
            attacked.append(load)
            attackers.append(attack)
    with api_server(url, key, token, env={"ARMLAB_AUTH_THROTTLE_FAILURES": "0"}) as base:
        off_quiet = run_load(base, key, token, requests, concurrency, max_seconds, "request")
        off_attacked, off_attack = _attacked(base, key, token, requests, concurrency,
                                             max_seconds)

    q, a = _summary(quiet), _summary(attacked)

    def ratio(x: float | None, y: float | None) -> float | None:
        return round(x / y, 3) if x and y else None

    return {
        "benchmark": "assign under attack",
        "database": "postgresql" if url.startswith("postgresql") else "sqlite",
        "quiet": q,
        "under_attack": a,
        "ratio_under_attack_to_quiet": ratio(a["median_requests_per_s"],
                                             q["median_requests_per_s"]),
        "attacker": {
            "requests_per_s": [x["requests_per_s"] for x in attackers],
            "guesses_checked_per_s": [x["guesses_checked_per_s"] for x in attackers],
            "runs": attackers,
        },
        "throttle_off": {
            "quiet": off_quiet, "under_attack": off_attacked, "attacker": off_attack,
            "ratio_under_attack_to_quiet": ratio(off_attacked.get("requests_per_s"),
                                                 off_quiet.get("requests_per_s")),
        },
        "server": "uvicorn 1 worker (uvloop, httptools), ASGI fast path, auth on, separate "
                  "process; the throttle at its defaults (5 free failures, back-off capped at "
                  f"60 s), {rounds} rounds of a quiet then an attacked phase; then a second "
                  "server with it off (ARMLAB_AUTH_THROTTLE_FAILURES=0), one phase of each",
        "client": f"load: minimal HTTP/1.1 keep-alive client, {concurrency} connections from "
                  f"127.0.0.1, separate process; attacker: one thread of the bench process, "
                  f"one keep-alive connection from {ATTACK_SOURCE}, wrong tokens back to back",
        "machine": "whatever runs it: client, attacker and server share its cores",
    }
