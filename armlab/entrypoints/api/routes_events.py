"""``POST /v1/events``: the HTTP bridge for clients that cannot speak Kafka.

It validates each event with the same rules as the consumers and produces it to the same
topics (keyed by impression_id), then flushes, so 202 means the broker acknowledged every
event (acks=all). Bad events: 422 naming the field and reason; Kafka down: 503.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from armlab.bootstrap import Services
from armlab.core.events import DecodeFailure, FeedbackV1, ImpressionV1, decode
from armlab.entrypoints.api.auth import Principal
from armlab.entrypoints.api.deps import get_services, require_role
from armlab.errors import ServiceUnavailable, ValidationFailed

log = logging.getLogger("armlab.api.events")
router = APIRouter(tags=["events"])

MAX_EVENTS_PER_REQUEST = 1000


def warm_producer(services: Services) -> None:
    """Build the producer in the background so API start-up never waits on Kafka.

    If Kafka is down, requests build it lazily and answer 503 until it is reachable.
    """

    def warm() -> None:
        try:
            services.producer  # noqa: B018 - building it is the point
        except ServiceUnavailable as exc:
            log.warning("event producer not ready: %s", exc.message)

    threading.Thread(target=warm, name="armlab-events-warmup", daemon=True).start()


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _validate(body: bytes) -> list[Any]:
    # The standard library's parser keeps integers past 64 bits as integers (orjson would
    # turn them into floats silently), so each event is re-encoded exactly as sent and checked
    # by the consumer's own rule; NaN/Infinity tokens are not JSON.
    try:
        data = json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise ValidationFailed(f"body is not JSON: {exc}", field="body") from exc
    items = data if isinstance(data, list) else [data]
    if not items:
        raise ValidationFailed("no events in the body", field="body")
    if len(items) > MAX_EVENTS_PER_REQUEST:
        raise ValidationFailed(
            f"{len(items)} events; at most {MAX_EVENTS_PER_REQUEST} per request", field="body"
        )
    events = []
    for i, item in enumerate(items):
        ev = decode(json.dumps(item, separators=(",", ":")).encode())
        if isinstance(ev, DecodeFailure):
            prefix = f"[{i}]." if isinstance(data, list) else ""
            field = f"{prefix}{ev.field}" if ev.field else (prefix.rstrip(".") or "body")
            raise ValidationFailed(f"{field}: {ev.reason}: {ev.detail}", field=field)
        events.append(ev)
    return events


def _send(services: Services, events: list[Any]) -> None:
    prod = services.producer
    try:
        for ev in events:
            prod.send(ev)
        prod.flush()
    except ServiceUnavailable:
        raise
    except Exception as exc:  # kafka-python errors surface as 503, never as 500
        raise ServiceUnavailable(f"could not produce events: {type(exc).__name__}: {exc}") from exc


_ONE = {"oneOf": [ImpressionV1.model_json_schema(by_alias=True),
                  FeedbackV1.model_json_schema(by_alias=True)]}
_EVENT_SCHEMA = {
    "oneOf": [_ONE, {"type": "array", "minItems": 1, "maxItems": MAX_EVENTS_PER_REQUEST,
                     "items": _ONE}]
}


@router.post(
    "/v1/events",
    status_code=202,
    openapi_extra={"requestBody": {"required": True,
                                   "content": {"application/json": {"schema": _EVENT_SCHEMA}}}},
)
async def post_events(
    request: Request,
    services: Services = Depends(get_services),
    principal: Principal = Depends(require_role("producer")),
) -> dict[str, Any]:
    """Accept one event or a list (impression.v1 / feedback.v1); 202 once Kafka has them.

    422 names the first bad field (``[i].field`` in a list) and its reason; 503 when Kafka
    cannot be reached. Nothing from a request with a bad event is produced.
    """
    del principal
    events = _validate(await request.body())
    await run_in_threadpool(_send, services, events)
    return {"accepted": len(events), "event_ids": [e.event_id for e in events]}
