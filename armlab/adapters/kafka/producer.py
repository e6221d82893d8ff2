"""Event producers: Kafka (production) and the in-process memory bus (embedded demo).

This is the producer SDK that client apps use (re-exported as :mod:`armlab.client`), and what
the events route, the demo and the replay send with.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError

from armlab.adapters.kafka.memory import MemoryBus
from armlab.core.events import (
    Event,
    FeedbackV1,
    ImpressionV1,
    InterleavingLog,
    make_feedback,
    make_impression,
    parse_event,
)
from armlab.errors import InvalidEvent, ServiceUnavailable
from armlab.settings import KafkaSettings, Settings

log = logging.getLogger("armlab.client")

DEFAULT_TOPIC_IMPRESSIONS = "armlab.impressions"
DEFAULT_TOPIC_FEEDBACK = "armlab.feedback"


@runtime_checkable
class EventProducer(Protocol):
    """What client apps, the HTTP bridge and the demo use to emit events."""

    def send(self, event: Event | Mapping[str, Any]) -> Event: ...
    def send_impression(self, **fields: Any) -> ImpressionV1: ...
    def send_feedback(self, **fields: Any) -> FeedbackV1: ...
    def flush(self, timeout: float | None = None) -> None: ...
    def close(self) -> None: ...


class _Base:
    topic_impressions: str
    topic_feedback: str

    def _produce(self, topic: str, key: bytes, value: bytes) -> None:
        raise NotImplementedError

    def topic_for(self, event: Event) -> str:
        return self.topic_impressions if isinstance(event, ImpressionV1) else self.topic_feedback

    def send(self, event: Event | Mapping[str, Any]) -> Event:
        """Validate (if given a dict) and send one event; returns the validated event."""
        ev = parse_event(event) if not isinstance(event, (ImpressionV1, FeedbackV1)) else event
        self._produce(self.topic_for(ev), ev.impression_id.encode(), ev.to_json())
        return ev

    def send_many(self, events: Iterable[Event | Mapping[str, Any]]) -> list[Event]:
        return [self.send(e) for e in events]

    def publish(self, events: Iterable[Event], timeout_s: float) -> None:
        """Send validated events and wait until every one is acknowledged, at most about
        ``timeout_s`` seconds in all (the events route); :class:`ServiceUnavailable` if not."""
        for ev in events:
            self.send(ev)
        self.flush(timeout_s)

    def send_impression(
        self,
        *,
        experiment_key: str,
        arm_key: str,
        unit_id: str,
        propensity: float,
        impression_id: str | None = None,
        event_id: str | None = None,
        served_at: datetime | None = None,
        items: Iterable[str | int] = (),
        context: Mapping[str, Any] | None = None,
        interleaving: Mapping[str, Any] | InterleavingLog | None = None,
    ) -> ImpressionV1:
        """Send an impression; ids and ``served_at`` are generated when omitted.
        ``interleaving``: the ``/recommend`` answer's log of an interleaved list."""
        ev = make_impression(
            experiment_key=experiment_key, arm_key=arm_key, unit_id=unit_id,
            propensity=propensity, impression_id=impression_id, event_id=event_id,
            served_at=served_at, items=list(items), context=context,
            interleaving=interleaving,
        )
        self._produce(self.topic_impressions, ev.impression_id.encode(), ev.to_json())
        return ev

    def send_feedback(
        self,
        *,
        impression_id: str,
        experiment_key: str,
        kind: str,
        value: float = 1.0,
        event_id: str | None = None,
        occurred_at: datetime | None = None,
        item_id: str | int | None = None,
    ) -> FeedbackV1:
        """Send feedback for an impression (same partition as the impression); ``item_id``:
        the shown item it is about (needed by an interleaving experiment's clicks)."""
        ev = make_feedback(
            impression_id=impression_id, experiment_key=experiment_key, kind=kind,
            value=value, event_id=event_id, occurred_at=occurred_at, item_id=item_id,
        )
        self._produce(self.topic_feedback, ev.impression_id.encode(), ev.to_json())
        return ev

    def flush(self, timeout: float | None = None) -> None:
        return None

    def close(self) -> None:
        return None

    def __enter__(self) -> _Base:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class KafkaEventProducer(_Base):
    """Idempotent (acks=all) batching producer over kafka-python.

    Errors: :class:`InvalidEvent` for an event that fails validation (nothing is sent);
    :class:`ServiceUnavailable` when the brokers cannot be reached at construction, or when
    ``flush()`` finds that a send failed (the message names the first failure).
    """

    def __init__(
        self,
        kafka: KafkaSettings | str,
        *,
        topic_impressions: str = DEFAULT_TOPIC_IMPRESSIONS,
        topic_feedback: str = DEFAULT_TOPIC_FEEDBACK,
        linger_ms: int = 5,
        batch_size: int = 256 * 1024,
        compression_type: str | None = None,
        max_block_ms: int = 10_000,
        bootstrap_timeout_ms: int = 10_000,
        request_timeout_ms: int = 15_000,
        delivery_timeout_ms: int = 60_000,
        client_id: str = "armlab-producer",
        **config: Any,
    ) -> None:
        """``kafka``: the cluster's settings, or a plaintext bootstrap string."""
        if isinstance(kafka, str):
            kafka = KafkaSettings(bootstrap=kafka)
        self.bootstrap = kafka.bootstrap
        self.topic_impressions = topic_impressions
        self.topic_feedback = topic_feedback
        try:
            self._producer = KafkaProducer(
                **kafka.client_config(),
                acks="all",
                enable_idempotence=True,
                linger_ms=linger_ms,
                batch_size=batch_size,
                compression_type=compression_type,
                max_block_ms=max_block_ms,
                bootstrap_timeout_ms=bootstrap_timeout_ms,
                request_timeout_ms=request_timeout_ms,
                delivery_timeout_ms=delivery_timeout_ms,
                reconnect_backoff_max_ms=2_000,
                client_id=client_id,
                **config,
            )
        except KafkaError as exc:
            raise ServiceUnavailable(
                f"cannot reach Kafka at {kafka.bootstrap} ({type(exc).__name__}); is the broker "
                "running? (`armlab dev up`, ARMLAB_KAFKA_BOOTSTRAP)"
            ) from exc
        self._lock = threading.Lock()
        self._errors: list[BaseException] = []
        self._closed = False

    def _on_error(self, exc: BaseException) -> None:
        with self._lock:
            self._errors.append(exc)

    def _produce(self, topic: str, key: bytes, value: bytes) -> None:
        if self._closed:
            raise ServiceUnavailable("producer is closed")
        try:
            fut = self._producer.send(topic, key=key, value=value)
        except KafkaError as exc:
            raise ServiceUnavailable(
                f"cannot send to {topic} on {self.bootstrap}: {type(exc).__name__}: {exc}"
            ) from exc
        fut.add_errback(self._on_error)

    def publish(self, events: Iterable[Event], timeout_s: float) -> None:
        """Send, then wait on these events' own acknowledgements (not the rest of the
        producer's traffic, unlike :meth:`flush`) until ``timeout_s`` from the call.

        ``send`` itself blocks at most ``max_block_ms`` (unknown topic metadata, full buffer),
        so a broker that is away costs at most that plus what is left of ``timeout_s``. On a
        503 an event may still be in the producer's buffer and be delivered once the broker
        is back (within ``delivery_timeout_ms``); a retry is safe: the consumer keeps one
        copy per ``event_id``.
        """
        if self._closed:
            raise ServiceUnavailable("producer is closed")
        deadline = time.monotonic() + timeout_s
        futures = []
        try:
            for ev in events:
                if time.monotonic() >= deadline:
                    raise KafkaTimeoutError(f"not all events sent within {timeout_s:g} s")
                futures.append(self._producer.send(self.topic_for(ev),
                                                   key=ev.impression_id.encode(),
                                                   value=ev.to_json()))
            for fut in futures:
                fut.get(timeout=max(0.0, deadline - time.monotonic()))
        except KafkaTimeoutError as exc:
            raise ServiceUnavailable(
                f"Kafka at {self.bootstrap} did not acknowledge the events within "
                f"{timeout_s:g} s; retry later"
            ) from exc
        except KafkaError as exc:
            raise ServiceUnavailable(
                f"could not produce events to {self.bootstrap}: {type(exc).__name__}: {exc}"
            ) from exc

    def send_raw(self, topic: str, value: bytes | None, key: bytes | None = None) -> None:
        """Send bytes as they are (no validation); for tools and tests."""
        fut = self._producer.send(topic, key=key, value=value)
        fut.add_errback(self._on_error)

    def flush(self, timeout: float | None = 30.0) -> None:
        """Block until every sent event is acknowledged; raise if any failed."""
        try:
            self._producer.flush(timeout=timeout)
        except KafkaError as exc:
            raise ServiceUnavailable(
                f"flush to {self.bootstrap} did not complete: {type(exc).__name__}: {exc}"
            ) from exc
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            raise ServiceUnavailable(
                f"{len(errors)} event(s) were not delivered to {self.bootstrap}; first: "
                f"{type(errors[0]).__name__}: {errors[0]}"
            )

    def close(self) -> None:
        """Flush, then close the connection (also on ``with`` exit)."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._producer.close(timeout=10)


class MemoryEventProducer(_Base):
    """Same interface over :class:`armlab.adapters.kafka.memory.MemoryBus` (embedded demo)."""

    def __init__(
        self,
        bus: MemoryBus,
        *,
        topic_impressions: str = DEFAULT_TOPIC_IMPRESSIONS,
        topic_feedback: str = DEFAULT_TOPIC_FEEDBACK,
    ) -> None:
        self.bus = bus
        self.topic_impressions = topic_impressions
        self.topic_feedback = topic_feedback

    def _produce(self, topic: str, key: bytes, value: bytes) -> None:
        self.bus.produce(topic, value, key)


def producer_from_settings(
    settings: Settings, *, bus: MemoryBus | None = None, fail_fast: bool = False
) -> KafkaEventProducer | MemoryEventProducer:
    """Kafka or memory producer from armlab settings (topics from ARMLAB_TOPIC_*).

    ``fail_fast`` (the events route) gives up on an unreachable broker within
    ``settings.events_publish_timeout_s`` (connecting, topic metadata, a full buffer), so a
    request answers 503 instead of hanging.
    """
    if settings.transport == "memory":
        if bus is None:
            raise InvalidEvent("memory transport needs a MemoryBus", reason="no_bus")
        return MemoryEventProducer(
            bus, topic_impressions=settings.topic_impressions,
            topic_feedback=settings.topic_feedback,
        )
    bound_ms = max(1, round(settings.events_publish_timeout_s * 1000))
    timeouts = {"max_block_ms": bound_ms, "bootstrap_timeout_ms": bound_ms} if fail_fast else {}
    return KafkaEventProducer(
        settings.kafka, topic_impressions=settings.topic_impressions,
        topic_feedback=settings.topic_feedback, **timeouts,  # type: ignore[arg-type]
    )
