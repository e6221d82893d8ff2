"""SDK for client apps: ask armlab for arms (:class:`ServingClient`, see
:mod:`armlab.client.serving`) and send impression and feedback events to armlab.

Usage::

    from armlab.client import KafkaEventProducer

    with KafkaEventProducer("127.0.0.1:19092") as producer:
        imp = producer.send_impression(
            experiment_key="homepage-recs", arm_key=assignment.arm_key, unit_id="user-42",
            propensity=assignment.propensity, impression_id=assignment.impression_id,
            items=["m1", "m7", "m3"],
        )
        producer.send_feedback(impression_id=imp.impression_id,
                               experiment_key="homepage-recs", kind="click")
    # leaving the block flushes: every event is acknowledged by the broker (acks=all)

Events are validated before they leave the process (:class:`armlab.errors.InvalidEvent`
with a ``reason``); records are keyed by ``impression_id`` so an impression and all of its
feedback land in the same partition (the consumer joins them locally). The Kafka producer
is idempotent (acks=all, retries without duplicates) and batches (``linger_ms``).
"""

from __future__ import annotations

from armlab.adapters.kafka.producer import (
    EventProducer,
    KafkaEventProducer,
    MemoryEventProducer,
)
from armlab.client.serving import (
    FALLBACK_PREFIX,
    Assignment,
    CircuitBreaker,
    Recommendation,
    ScoredItem,
    ServingClient,
)

__all__ = [
    "FALLBACK_PREFIX",
    "Assignment",
    "CircuitBreaker",
    "EventProducer",
    "KafkaEventProducer",
    "MemoryEventProducer",
    "Recommendation",
    "ScoredItem",
    "ServingClient",
]
