"""The Kafka side of ``armlab bench consumers`` (:mod:`armlab.tools.bench.consumers`): the
librdkafka producer that fills the topics (:func:`fill`) and the same-run baseline reads
(:func:`baseline_reads`: a bare kafka-python consumer, the same with armlab's guarded batch
decoding installed, and a bare confluent-kafka consumer).

confluent-kafka is a development dependency (pyproject's dev extra): imported in the functions
that use it.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from armlab.adapters.kafka.batches import install_guarded_batches, uninstall_guarded_batches
from armlab.errors import ServiceUnavailable
from armlab.settings import KafkaSettings, Settings
from armlab.tools.bench.ingest import bare_read
from armlab.tools.synth import SynthEvent


def fill(kafka: KafkaSettings, topic_imp: str, topic_fb: str, events: list[SynthEvent],
         codec: str) -> float:
    """Write ``events`` with an idempotent librdkafka producer in ``codec`` (messages built
    beforehand, handed over with produce_batch); events/s. Fast enough that the consumers
    find the topic full."""
    from confluent_kafka import Producer  # the dev extra; see confluent_read

    by_topic: dict[str, list[dict[str, Any]]] = {topic_imp: [], topic_fb: []}
    for ev in events:
        by_topic[topic_imp if ev.kind == "impression" else topic_fb].append(
            {"key": ev.key, "value": ev.value})
    p = Producer({**confluent_config(kafka), "compression.type": codec, "linger.ms": 20,
                  "enable.idempotence": True, "acks": "all",
                  "queue.buffering.max.messages": 2_000_000})
    t0 = time.perf_counter()
    for topic, msgs in by_topic.items():
        for i in range(0, len(msgs), 20_000):
            chunk = msgs[i:i + 20_000]
            if p.produce_batch(topic, chunk) != len(chunk):
                errors = {str(m.get("_error")) for m in chunk if "_error" in m}
                raise ServiceUnavailable(f"benchmark records refused: {sorted(errors)[:3]}")
            p.poll(0)
    left = p.flush(120)
    if left:
        raise ServiceUnavailable(f"{left} benchmark records not delivered")
    return len(events) / (time.perf_counter() - t0)


def confluent_config(kafka: KafkaSettings) -> dict[str, Any]:
    """librdkafka properties for ``kafka`` (the same cluster and security settings)."""
    cfg: dict[str, Any] = {"bootstrap.servers": kafka.bootstrap,
                           "security.protocol": kafka.security_protocol}
    if kafka.sasl_mechanism:
        cfg["sasl.mechanism"] = kafka.sasl_mechanism
        cfg["sasl.username"] = kafka.sasl_username
        cfg["sasl.password"] = (kafka.sasl_password.get_secret_value()
                                if kafka.sasl_password else "")
    for ours, theirs in (("ssl_cafile", "ssl.ca.location"),
                         ("ssl_certfile", "ssl.certificate.location"),
                         ("ssl_keyfile", "ssl.key.location")):
        if getattr(kafka, ours) is not None:
            cfg[theirs] = str(getattr(kafka, ours))
    if kafka.ssl_password is not None:
        cfg["ssl.key.password"] = kafka.ssl_password.get_secret_value()
    return cfg


def confluent_read(kafka: KafkaSettings, topics: list[str], n: int,
                   timeout_s: float = 300.0) -> float:
    """A bare confluent-kafka consumer (manual assignment, from the beginning) that only
    reads (touches each value); events/s from its first record."""
    # confluent-kafka is a development dependency (pyproject's dev extra): imported here.
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({**confluent_config(kafka), "group.id": f"bench-cf-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        meta = c.list_topics(timeout=10)
        c.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t in topics
                  for p in sorted(meta.topics[t].partitions)])
        seen = nbytes = 0
        t0: float | None = None
        deadline = time.monotonic() + timeout_s
        while seen < n and time.monotonic() < deadline:
            for m in c.consume(num_messages=2000, timeout=0.2):
                if m.error():
                    continue
                if t0 is None:
                    t0 = time.perf_counter()
                nbytes += len(m.value() or b"")
                seen += 1
        if seen < n:
            raise ServiceUnavailable(f"confluent-kafka read {seen} of {n} records")
        return seen / (time.perf_counter() - (t0 or time.perf_counter()))
    finally:
        c.close()


def guarded_read(kafka: KafkaSettings, topics: list[str], n: int, max_batch_bytes: int
                 ) -> float:
    """:func:`bare_read` with armlab's guarded batch decoding installed in this process."""
    install_guarded_batches(max_batch_bytes)
    try:
        return bare_read(kafka, topics, n)
    finally:
        uninstall_guarded_batches()


def baseline_reads(settings: Settings, topics: list[str], events: int
                   ) -> dict[str, list[float]]:
    """Two reads each of the bare, guarded and confluent baselines (events/s)."""
    # best of two each, interleaved: a shared machine's noise only ever slows a read down
    reads: dict[str, list[float]] = {"bare": [], "guarded": [], "confluent": []}
    for _ in range(2):
        reads["bare"].append(bare_read(settings.kafka, topics, events))
        reads["guarded"].append(guarded_read(settings.kafka, topics, events,
                                             settings.ingest_max_batch_bytes))
        reads["confluent"].append(confluent_read(settings.kafka, topics, events))
    return reads
