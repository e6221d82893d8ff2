"""A minimal HTTP/1.1 load generator for ``POST /v1/experiments/{key}/assign``.

Run as its own process (``python -m armlab.tools.loadgen BASE KEY TOKEN N CONC MAX_S UNIT
[CONTEXTS]``) so the client's CPU is not the server's; prints one JSON line with throughput and
latency percentiles. ``CONTEXTS``: a JSON file with a list of context objects; request ``i``
sends ``contexts[i % len]`` as its ``context``. Used by ``armlab bench assign``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


def _request_head(base: str, key: str, token: str) -> tuple[str, int, bytes]:
    """(host, port, the request up to its Content-Length value) of the assign endpoint."""
    parts = urlsplit(base)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = f"/v1/experiments/{key}/assign".encode()
    head = (
        b"POST " + path + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
    )
    return host, port, head


async def _call(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes,
                uid: str, context: bytes | None = None) -> bool:
    """One request on a keep-alive connection; True when it answered 200 with a propensity.
    ``context``: the serialised context object to send with it."""
    body = b'{"unit_id":"' + uid.encode() + (
        b'"}' if context is None else b'","context":' + context + b"}")
    writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
    hdr = await reader.readuntil(b"\r\n\r\n")
    lower = hdr.lower()
    i = lower.find(b"content-length:")
    if i < 0:
        raise RuntimeError(f"response without Content-Length: {hdr[:200]!r}")
    n = int(lower[i + 15 : lower.find(b"\r\n", i)])
    payload = await reader.readexactly(n)
    return hdr[9:12] == b"200" and b'"propensity"' in payload


@dataclass
class _Load:
    """What the workers share: the request numbers still to send, the deadline, and the
    latencies and errors so far."""

    head: bytes
    unit: str
    counter: Iterator[int]
    t_end: float
    lat: list[float] = field(default_factory=list)
    errors: int = 0
    contexts: list[bytes] = field(default_factory=list)


async def _worker(load: _Load, reader: asyncio.StreamReader,
                  writer: asyncio.StreamWriter) -> None:
    """Send requests on one connection until the numbers or the time run out."""
    for i in load.counter:
        if time.perf_counter() > load.t_end:
            return
        uid = f"user{i % 5000}" if load.unit == "user" else f"r{i}"
        t0 = time.perf_counter()
        ctx = load.contexts[i % len(load.contexts)] if load.contexts else None
        ok = await _call(reader, writer, load.head, uid, ctx)
        load.lat.append(time.perf_counter() - t0)
        if not ok:
            load.errors += 1


def _report(load: _Load, wall: float, conc: int) -> dict[str, Any]:
    """Throughput and latency percentiles (ms) of the timed requests."""
    arr = sorted(load.lat)

    def pct(q: float) -> float:
        return round(arr[min(len(arr) - 1, int(q * len(arr)))] * 1e3, 3) if arr else float("nan")

    return {
        "requests": len(arr),
        "errors": load.errors,
        "wall_s": round(wall, 3),
        "requests_per_s": round(len(arr) / wall, 1) if wall > 0 else None,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
        "concurrency": conc,
    }


async def drive(
    base: str, key: str, token: str, total: int, conc: int, max_s: float, unit: str,
    contexts: list[bytes] | None = None,
) -> dict[str, Any]:
    """Drive the endpoint from ``conc`` keep-alive connections with a minimal HTTP/1.1 client.

    A general-purpose client (httpx) costs several hundred microseconds of CPU per request,
    which on a 2-core box is taken from the server under test; this one writes a prebuilt
    request and reads the status line, Content-Length and body, so nearly all the CPU left is
    the server's. Every response is checked (status 200 and a propensity in the body).
    """
    host, port, head = _request_head(base, key, token)
    conns = [await asyncio.open_connection(host, port) for _ in range(conc)]
    for r, w in conns:  # warm-up: connections open, experiment cached
        await _call(r, w, head, "warm")
    load = _Load(head, unit, iter(range(total)), time.perf_counter() + max_s,
                 contexts=list(contexts or ()))
    t0 = time.perf_counter()
    await asyncio.gather(*(_worker(load, r, w) for r, w in conns))
    wall = time.perf_counter() - t0
    for _, w in conns:
        w.close()
    return _report(load, wall, conc)


if __name__ == "__main__":  # the load process
    b, k, tok, n, c, m, u = sys.argv[1:8]
    ctxs = ([json.dumps(x, separators=(",", ":")).encode()
             for x in json.loads(Path(sys.argv[8]).read_text())] if len(sys.argv) > 8 else None)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    print(json.dumps(asyncio.run(drive(b, k, tok, int(n), int(c), float(m), u, ctxs))))
