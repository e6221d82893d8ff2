"""The dead-letter topic's producer for the ingest runner (idempotent, acks=all)."""

from __future__ import annotations

import logging
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from armlab.adapters.kafka.source import kafka_unavailable
from armlab.settings import KafkaSettings

log = logging.getLogger("armlab.consumers.kafka")


#: The DLQ producer's largest request, set explicitly (kafka-python's default, and the
#: broker's default ``message.max.bytes`` is about the same). Dead letters stay far below it:
#: :meth:`armlab.core.event_effects.Reject.to_dlq` truncates the original record to 256 KiB.
DLQ_MAX_REQUEST_BYTES = 1024 * 1024


class KafkaDlq:
    """Dead-letter producer (idempotent, acks=all). Flushed before the batch commits, so a
    rejected record is never lost; after a crash it may appear twice (at-least-once)."""

    def __init__(self, kafka: KafkaSettings, topic: str, **config: Any) -> None:
        self.topic = topic
        self.bootstrap = kafka.bootstrap
        try:
            self.producer = KafkaProducer(
                **kafka.client_config(),
                acks="all",
                enable_idempotence=True,
                linger_ms=5,
                retries=2**31 - 1,
                delivery_timeout_ms=120_000,
                max_block_ms=30_000,
                reconnect_backoff_max_ms=2_000,
                client_id="armlab-dlq",
                max_request_size=DLQ_MAX_REQUEST_BYTES,
                **config,
            )
        except KafkaError as exc:
            raise kafka_unavailable(kafka.bootstrap, exc) from exc
        self._futures: list[Any] = []

    def send(self, value: bytes, key: bytes | None = None) -> None:
        self._futures.append(self.producer.send(self.topic, value=value, key=key))

    def flush(self) -> None:
        """Wait until every dead letter is acknowledged; raise if any failed (the batch is
        then rolled back and retried)."""
        futures, self._futures = self._futures, []
        self.producer.flush(timeout=60)
        for f in futures:
            f.get(timeout=60)

    def close(self) -> None:
        try:
            self.producer.close(timeout=10)
        except Exception as exc:  # noqa: BLE001
            log.debug("dlq close failed: %s", exc)
