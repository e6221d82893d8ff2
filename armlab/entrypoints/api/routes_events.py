"""``POST /v1/events``: the HTTP bridge for clients that cannot speak Kafka.

It validates each event with the same rules as the consumers and produces it to the same
topics (keyed by impression_id), then waits for the acknowledgements, so 202 means the broker
acknowledged every event (acks=all). Bad events: 422 naming the field and reason.

The API never blocks on Kafka (:class:`EventGate`): a publish waits at most
``ARMLAB_EVENTS_PUBLISH_TIMEOUT_S``, in a thread of the route's own small pool (never the
AnyIO pool that the sync routes share), at most ``ARMLAB_EVENTS_MAX_WAITING`` at once; after a
failed publish the route answers 503 at once for ``ARMLAB_EVENTS_BREAKER_S`` (a circuit
breaker), then lets one request try again. Every refusal is a 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from fastapi import APIRouter, Depends, Request

from armlab.bootstrap import Services
from armlab.core.events import DecodeFailure, FeedbackV1, ImpressionV1, decode
from armlab.entrypoints.api.auth import Principal
from armlab.entrypoints.api.deps import get_services, require_role
from armlab.entrypoints.api.schemas import AUTHED, error_responses
from armlab.errors import ServiceUnavailable, ValidationFailed
from armlab.settings import Settings

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


#: What a publish may overrun its bound by (thread hand-off, building the producer) before
#: the request answers 503 without it.
GRACE_S = 0.5


class EventGate:
    """Bounds what ``POST /v1/events`` can cost the server when Kafka is away.

    * Each publish runs in a thread of this gate's own pool of ``max_waiting`` threads, never
      the AnyIO pool the sync routes (and their dependencies) share, so publishes cannot starve
      them. At most ``max_waiting`` publishes run at once; one more answers 503 at once (the
      pool has a thread for each admitted publish, so none ever queues).
    * A request waits at most ``timeout_s`` (plus :data:`GRACE_S`) and then answers 503 even if
      its thread is still inside kafka-python; that thread keeps its slot until it returns.
    * Circuit breaker: a failed publish (unreachable, timed out) makes the next publishes answer
      503 at once for ``breaker_s``; then a single trial publish goes through (the others keep
      answering 503 until it ends); its success closes the breaker, its failure opens it again.
    """

    def __init__(self, *, timeout_s: float, max_waiting: int, breaker_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s = timeout_s
        self.max_waiting = max_waiting
        self.breaker_s = breaker_s
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_waiting, thread_name_prefix="armlab-events")
        self._lock = threading.Lock()
        self._waiting = 0
        self._failed = False  # the breaker is open (or half-open once open_until has passed)
        self._open_until = 0.0
        self._trial = False  # a trial publish is in flight (half-open)
        #: Held while a publish builds (connects) the Kafka producer.
        self.build_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> EventGate:
        return cls(timeout_s=settings.events_publish_timeout_s,
                   max_waiting=settings.events_max_waiting, breaker_s=settings.events_breaker_s)

    @property
    def waiting(self) -> int:
        """Publishes whose thread has not returned yet."""
        return self._waiting

    def _admit(self) -> bool:
        """Take a slot or raise 503; True when this publish is the breaker's trial."""
        with self._lock:
            if self._failed:
                left = self._open_until - self._clock()
                if left > 0:
                    raise ServiceUnavailable(
                        f"Kafka was unreachable moments ago; event publishing resumes in "
                        f"{left:.1f} s; retry later")
                if self._trial:
                    raise ServiceUnavailable(
                        "Kafka was unreachable; a trial publish is checking whether it is back; "
                        "retry later")
            if self._waiting >= self.max_waiting:
                raise ServiceUnavailable(
                    f"{self._waiting} event requests are already waiting on Kafka; retry later")
            self._waiting += 1
            trial = self._trial = self._failed
            return trial

    def _release(self, _: Future[None]) -> None:
        with self._lock:
            self._waiting -= 1

    def _outcome(self, ok: bool, trial: bool) -> None:
        with self._lock:
            if trial:
                self._trial = False
            if ok:
                self._failed = False
            elif self.breaker_s > 0:
                self._failed = True
                self._open_until = self._clock() + self.breaker_s

    async def run(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` (a blocking publish) under the gate; :class:`ServiceUnavailable` when
        refused, when it fails, or when it outlasts ``timeout_s``."""
        trial = self._admit()
        try:
            fut = self._executor.submit(fn)
        except BaseException:
            with self._lock:
                self._waiting -= 1
            self._outcome(False, trial)
            raise
        fut.add_done_callback(self._release)
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(fut)),
                                   self.timeout_s + GRACE_S)
        except TimeoutError as exc:
            self._outcome(False, trial)
            raise ServiceUnavailable(
                f"Kafka did not take the events within {self.timeout_s:g} s; retry later"
            ) from exc
        except ServiceUnavailable:
            self._outcome(False, trial)
            raise
        except asyncio.CancelledError:  # the request was cancelled: no verdict on Kafka
            if trial:
                with self._lock:
                    self._trial = False
            raise
        except Exception as exc:  # kafka-python errors surface as 503, never as 500
            self._outcome(False, trial)
            raise ServiceUnavailable(
                f"could not produce events: {type(exc).__name__}: {exc}") from exc
        self._outcome(True, trial)

    def close(self) -> None:
        """Stop taking publishes; threads still inside kafka-python end on their own."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def _send(services: Services, events: list[Any], gate: EventGate) -> None:
    if not services.has("producer"):
        # Kafka was away at start-up: one thread at a time tries to connect (each try takes up
        # to the bound); the others give up when their bound is over instead of queueing to try.
        if not gate.build_lock.acquire(timeout=gate.timeout_s):
            raise ServiceUnavailable("the event producer is still connecting to Kafka; "
                                     "retry later")
        try:
            services.producer  # noqa: B018 - building it is the point
        finally:
            gate.build_lock.release()
    services.producer.publish(events, gate.timeout_s)


_ONE = {"oneOf": [ImpressionV1.model_json_schema(by_alias=True),
                  FeedbackV1.model_json_schema(by_alias=True)]}
_EVENT_SCHEMA = {
    "oneOf": [_ONE, {"type": "array", "minItems": 1, "maxItems": MAX_EVENTS_PER_REQUEST,
                     "items": _ONE}]
}


@router.post(
    "/v1/events",
    status_code=202,
    responses=error_responses(*AUTHED),
    openapi_extra={"requestBody": {"required": True,
                                   "content": {"application/json": {"schema": _EVENT_SCHEMA}}}},
)
async def post_events(
    request: Request,
    services: Services = Depends(get_services),
    principal: Principal = Depends(require_role("producer")),
) -> dict[str, Any]:
    """Accept one event or a list (impression.v1 / feedback.v1); 202 once Kafka has them.

    422 names the first bad field (``[i].field`` in a list) and its reason; 503 with
    Retry-After when Kafka cannot take them within ``ARMLAB_EVENTS_PUBLISH_TIMEOUT_S`` (or at
    once while the breaker is open or too many requests wait on Kafka). Nothing from a request
    with a bad event is produced; a 503 may still have delivered some events (retry: the
    consumer keeps one copy per event_id).
    """
    del principal
    events = _validate(await request.body())
    gate: EventGate = request.app.state.event_gate
    await gate.run(lambda: _send(services, events, gate))
    return {"accepted": len(events), "event_ids": [e.event_id for e in events]}
