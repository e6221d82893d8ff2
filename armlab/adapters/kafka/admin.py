"""Log end offsets of whole topics, asked of the broker without joining a consumer group
(``armlab offsets reset --to latest``)."""

from __future__ import annotations

from collections.abc import Iterable

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from armlab.errors import ServiceUnavailable
from armlab.settings import KafkaSettings

TP = tuple[str, int]


def log_end_offsets(kafka: KafkaSettings, topics: Iterable[str],
                    timeout_s: float = 10.0) -> dict[TP, int]:
    """The end offset of every partition of ``topics`` (a topic the broker does not know has
    none). Raises :class:`ServiceUnavailable` when the broker cannot be reached."""
    try:
        consumer = KafkaConsumer(**kafka.client_config(), enable_auto_commit=False,
                                 request_timeout_ms=int(timeout_s * 1000) + 1000,
                                 client_id="armlab-offsets")
    except KafkaError as exc:
        raise ServiceUnavailable(
            f"cannot reach Kafka at {kafka.bootstrap} ({type(exc).__name__}: {exc})") from exc
    try:
        tps = [TopicPartition(t, p) for t in topics
               for p in sorted(consumer.partitions_for_topic(t) or ())]
        if not tps:
            return {}
        ends = consumer.end_offsets(tps, timeout_ms=int(timeout_s * 1000))
        return {(tp.topic, tp.partition): int(end) for tp, end in ends.items()
                if end is not None}
    except KafkaError as exc:
        raise ServiceUnavailable(
            f"Kafka at {kafka.bootstrap} did not give the end offsets "
            f"({type(exc).__name__}: {exc})") from exc
    finally:
        consumer.close(autocommit=False)
