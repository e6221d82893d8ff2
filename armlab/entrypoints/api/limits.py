"""Request-body size limit, enforced before anything reads the body (or authenticates).

:class:`BodyLimit` is the outermost ASGI middleware: a request whose ``Content-Length`` is over
the limit is answered 413 at once, without reading a byte of its body; a chunked body is
counted as it arrives and cut off with 413 as soon as it passes the limit. So a 50 MB body
costs the server nothing, whoever sends it (the 413 comes before the 401 of a bad token).
"""

from __future__ import annotations

from typing import Any

import orjson


def _too_large(limit: int) -> tuple[dict[str, Any], dict[str, Any]]:
    body = orjson.dumps({"type": "PayloadTooLarge", "title": "Payload too large",
                         "detail": f"request body over {limit} bytes"})
    start = {"type": "http.response.start", "status": 413,
             "headers": [(b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode()),
                         (b"connection", b"close")]}
    return start, {"type": "http.response.body", "body": body}


class BodyLimit:
    """ASGI middleware: bodies over ``max_bytes`` get 413 (module doc)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = self.max_bytes + 1
                if declared > self.max_bytes:
                    for message in _too_large(self.max_bytes):
                        await send(message)
                    return
                break
        seen = 0
        started = False
        refused = False

        async def counted() -> dict[str, Any]:
            nonlocal seen, refused, started
            if refused:
                return {"type": "http.disconnect"}
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # Answer 413 now and tell the app the client went away; whatever the app
                    # answers after that is dropped.
                    refused = True
                    if not started:
                        started = True
                        for out in _too_large(self.max_bytes):
                            await send(out)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, counted, guarded_send)
