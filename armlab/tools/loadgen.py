"""A minimal HTTP/1.1 load generator for ``POST /v1/experiments/{key}/assign``.

Run as its own process (``python -m armlab.tools.loadgen BASE KEY TOKEN N CONC MAX_S UNIT``) so
the client's CPU is not the server's; prints one JSON line with throughput and latency
percentiles. Used by ``armlab bench assign``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any
from urllib.parse import urlsplit


async def drive(
    base: str, key: str, token: str, total: int, conc: int, max_s: float, unit: str
) -> dict[str, Any]:
    """Drive the endpoint from ``conc`` keep-alive connections with a minimal HTTP/1.1 client.

    A general-purpose client (httpx) costs several hundred microseconds of CPU per request,
    which on a 2-core box is taken from the server under test; this one writes a prebuilt
    request and reads the status line, Content-Length and body, so nearly all the CPU left is
    the server's. Every response is checked (status 200 and a propensity in the body).
    """
    parts = urlsplit(base)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = f"/v1/experiments/{key}/assign".encode()
    head = (
        b"POST " + path + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
    )
    lat: list[float] = []
    errors = 0
    counter = iter(range(total))

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, uid: str) -> bool:
        body = b'{"unit_id":"' + uid.encode() + b'"}'
        writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
        hdr = await reader.readuntil(b"\r\n\r\n")
        lower = hdr.lower()
        i = lower.find(b"content-length:")
        if i < 0:
            raise RuntimeError(f"response without Content-Length: {hdr[:200]!r}")
        n = int(lower[i + 15 : lower.find(b"\r\n", i)])
        payload = await reader.readexactly(n)
        return hdr[9:12] == b"200" and b'"propensity"' in payload

    conns = [await asyncio.open_connection(host, port) for _ in range(conc)]
    for r, w in conns:  # warm-up: connections open, experiment cached
        await one(r, w, "warm")
    t_end = time.perf_counter() + max_s

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal errors
        for i in counter:
            if time.perf_counter() > t_end:
                return
            uid = f"user{i % 5000}" if unit == "user" else f"r{i}"
            t0 = time.perf_counter()
            ok = await one(reader, writer, uid)
            lat.append(time.perf_counter() - t0)
            if not ok:
                errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(r, w) for r, w in conns))
    wall = time.perf_counter() - t0
    for _, w in conns:
        w.close()
    arr = sorted(lat)

    def pct(q: float) -> float:
        return round(arr[min(len(arr) - 1, int(q * len(arr)))] * 1e3, 3) if arr else float("nan")

    return {
        "requests": len(arr),
        "errors": errors,
        "wall_s": round(wall, 3),
        "requests_per_s": round(len(arr) / wall, 1) if wall > 0 else None,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
        "concurrency": conc,
    }


if __name__ == "__main__":  # the load process
    b, k, tok, n, c, m, u = sys.argv[1:8]
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    print(json.dumps(asyncio.run(drive(b, k, tok, int(n), int(c), float(m), u))))
