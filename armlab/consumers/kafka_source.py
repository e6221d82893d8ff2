"""Kafka transport for the ingest runner (kafka-python consumer group + DLQ producer).

Offsets live in the database, not in Kafka: ``enable_auto_commit=False`` and a
``ConsumerRebalanceListener`` that hands newly assigned partitions to the runner, which
seeks to the offsets stored with the effects (KafkaConsumer Javadoc, "Storing Offsets Outside
Kafka"). After each database commit the runner may also commit to Kafka, only so that
standard lag tooling sees progress; that commit is never read back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from armlab.errors import ServiceUnavailable

log = logging.getLogger("armlab.consumers.kafka")

TP = tuple[str, int]


def _kafka_unavailable(bootstrap: str, exc: Exception) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"cannot reach Kafka at {bootstrap} ({type(exc).__name__}: {exc}); "
        "start it with `armlab dev up` or set ARMLAB_KAFKA_BOOTSTRAP"
    )


class KafkaSource:
    """A kafka-python consumer in group ``group`` subscribed to ``topics``."""

    def __init__(
        self,
        bootstrap: str,
        topics: Iterable[str],
        group: str,
        *,
        max_poll_records: int = 2000,
        client_id: str = "armlab-consumer",
        **config: Any,
    ) -> None:
        from kafka import KafkaConsumer
        from kafka.errors import KafkaError

        self.bootstrap = bootstrap
        self.topics = list(topics)
        self.group = group
        try:
            self.consumer = KafkaConsumer(
                bootstrap_servers=bootstrap.split(","),
                group_id=group,
                client_id=client_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_poll_records=max_poll_records,
                max_partition_fetch_bytes=4 * 1024 * 1024,
                fetch_max_bytes=64 * 1024 * 1024,
                session_timeout_ms=10_000,
                heartbeat_interval_ms=2_000,
                max_poll_interval_ms=300_000,
                reconnect_backoff_max_ms=2_000,
                request_timeout_ms=30_000,
                **config,
            )
        except KafkaError as exc:
            raise _kafka_unavailable(bootstrap, exc) from exc

    def start(
        self,
        on_assign: Callable[[list[TP]], None],
        on_revoke: Callable[[list[TP]], None],
    ) -> None:
        from kafka import ConsumerRebalanceListener

        class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            # kafka-python calls these from inside poll(), i.e. between two batches: the
            # in-flight batch has already been committed or abandoned by then.
            def on_partitions_revoked(self, revoked: Any) -> None:
                on_revoke([(tp.topic, tp.partition) for tp in revoked])

            def on_partitions_assigned(self, assigned: Any) -> None:
                tps = [(tp.topic, tp.partition) for tp in assigned]
                log.info("assigned", extra={"partitions": [f"{t}:{p}" for t, p in tps]})
                on_assign(tps)

        self.consumer.subscribe(topics=self.topics, listener=_Listener())

    def seek(self, tp: TP, offset: int | None) -> None:
        from kafka import TopicPartition

        ktp = TopicPartition(*tp)
        if offset is None:
            self.consumer.seek_to_beginning(ktp)
        else:
            self.consumer.seek(ktp, offset)

    def poll(self, max_records: int, timeout_s: float) -> list[Any]:
        batches = self.consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        out: list[Any] = []
        for recs in batches.values():
            out.extend(recs)
        return out

    def lag(self, committed: dict[TP, int | None]) -> dict[TP, int]:
        from kafka import TopicPartition

        out: dict[TP, int] = {}
        for tp, pos in committed.items():
            hw = self.consumer.highwater(TopicPartition(*tp))
            if hw is not None:
                out[tp] = max(0, hw - (pos or 0))
        return out

    def commit_progress(self, offsets: dict[TP, int]) -> None:
        """Best-effort Kafka commit for lag tooling only (the database is authoritative)."""
        from kafka import OffsetAndMetadata, TopicPartition

        try:
            self.consumer.commit_async(
                {TopicPartition(*tp): OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()}
            )
        except Exception as exc:  # noqa: BLE001 - purely informational
            log.debug("kafka progress commit failed: %s", exc)

    def close(self) -> None:
        try:
            self.consumer.close(autocommit=False)
        except Exception as exc:  # noqa: BLE001 - shutting down anyway
            log.debug("consumer close failed: %s", exc)


class KafkaDlq:
    """Dead-letter producer (idempotent, acks=all). Flushed before the batch commits, so a
    rejected record is never lost; after a crash it may appear twice (at-least-once)."""

    def __init__(self, bootstrap: str, topic: str, **config: Any) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        self.topic = topic
        self.bootstrap = bootstrap
        try:
            self.producer = KafkaProducer(
                bootstrap_servers=bootstrap.split(","),
                acks="all",
                enable_idempotence=True,
                linger_ms=5,
                retries=2**31 - 1,
                delivery_timeout_ms=120_000,
                max_block_ms=30_000,
                reconnect_backoff_max_ms=2_000,
                client_id="armlab-dlq",
                **config,
            )
        except KafkaError as exc:
            raise _kafka_unavailable(bootstrap, exc) from exc
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
