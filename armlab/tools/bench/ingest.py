"""``armlab bench ingest``: armlab's consumer against a bare kafka-python reader, same run.

(a) bare: a kafka-python consumer (manual assignment) that only reads the records;
(b) armlab: the IngestRunner doing decode, validation, joins, dedupe, aggregation and the
    offsets-in-the-same-transaction commit into PostgreSQL;
(c) the same on fresh topics with ``processes`` consumer processes in one group.
Rates are events / (last commit - first batch start), so process start-up is excluded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from sqlalchemy import text

from armlab.adapters.db import migrate
from armlab.adapters.db.engine import make_engine
from armlab.adapters.db.models import Arm, Experiment
from armlab.bootstrap import bootstrap
from armlab.core.status import ExperimentStatus
from armlab.errors import ConfigurationError, ServiceUnavailable
from armlab.settings import KafkaSettings, Settings
from armlab.tools.synth import synthetic_events

ARMS = ("control", "b", "c")


def _check_services(settings: Settings) -> None:
    if not settings.database_url.startswith("postgresql"):
        raise ConfigurationError(
            "bench ingest needs PostgreSQL: set ARMLAB_DATABASE_URL=postgresql+psycopg://... "
            f"(got {settings.database_url}); `eval \"$(armlab dev up)\"` starts one"
        )
    try:
        with make_engine(settings.database_url).connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        raise ServiceUnavailable(
            f"cannot reach PostgreSQL at ARMLAB_DATABASE_URL ({type(exc).__name__}); "
            "start it with `eval \"$(armlab dev up)\"`"
        ) from exc
    try:
        KafkaAdminClient(**settings.kafka.client_config(), request_timeout_ms=5000).close()
    except Exception as exc:
        raise ServiceUnavailable(
            f"cannot reach Kafka at ARMLAB_KAFKA_BOOTSTRAP={settings.kafka.bootstrap} "
            f"({type(exc).__name__}); start it with `eval \"$(armlab dev up)\"`"
        ) from exc


def create_topics(kafka: KafkaSettings, names: list[str], partitions: int) -> None:
    admin = KafkaAdminClient(**kafka.client_config())
    try:
        admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    finally:
        admin.close()


def produce(kafka: KafkaSettings, topic_imp: str, topic_fb: str, n: int, experiment_key: str,
            prefix: str, seed: int = 0) -> float:
    """Produce ``n`` synthetic events; returns events/s of the producer."""
    p = KafkaProducer(**kafka.client_config(), acks="all",
                      enable_idempotence=True, linger_ms=20, batch_size=1 << 20)
    t0 = time.perf_counter()
    for ev in synthetic_events(n, experiment_key=experiment_key, arms=ARMS, seed=seed,
                               id_prefix=prefix):
        p.send(topic_imp if ev.kind == "impression" else topic_fb, key=ev.key, value=ev.value)
    p.flush()
    dt = time.perf_counter() - t0
    p.close()
    return n / dt


def bare_read(kafka: KafkaSettings, topics: list[str], n: int) -> float:
    """A kafka-python consumer that only reads (touches each value); events/s."""
    c = KafkaConsumer(**kafka.client_config(), enable_auto_commit=False,
                      max_poll_records=2000, max_partition_fetch_bytes=4 << 20,
                      fetch_max_bytes=64 << 20, group_id=None)
    tps = [TopicPartition(t, p) for t in topics for p in sorted(c.partitions_for_topic(t) or {0})]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    seen = 0
    nbytes = 0
    t0: float | None = None
    while seen < n:
        batch = c.poll(timeout_ms=200, max_records=2000)
        for recs in batch.values():
            if t0 is None:
                t0 = time.perf_counter()
            for r in recs:
                nbytes += len(r.value or b"")  # tombstones have no value
            seen += len(recs)
    dt = time.perf_counter() - (t0 or time.perf_counter())
    c.close()
    return seen / dt


def _make_experiment(settings: Settings, key: str) -> None:
    services = bootstrap(settings)
    try:
        with services.session_factory() as s, s.begin():
            e = Experiment(key=key, name=key, control_arm_key=ARMS[0], salt=key,
                           status=ExperimentStatus.RUNNING, reward_kind="binary",
                           reward_metric="click", attribution_window_s=3600)
            e.arms = [Arm(key=a, is_control=(i == 0), position=i) for i, a in enumerate(ARMS)]
            s.add(e)
    finally:
        services.close()


def armlab_inprocess(settings: Settings, n: int) -> dict[str, Any]:
    services = bootstrap(settings)
    runner = services.ingest_runner(transport="kafka")
    try:
        while runner.metrics.records < n:
            runner.step()
    finally:
        runner.close()
        services.close()
    m = runner.metrics
    dt = (m.last_ts or 0) - (m.first_ts or 0)
    return {"events_per_s": m.records / dt if dt > 0 else 0.0, "outcomes": dict(m.outcomes),
            "batches": m.batches}


def armlab_processes(settings: Settings, n: int, processes: int) -> dict[str, Any]:
    # The Kafka security settings (ARMLAB_KAFKA_*) reach the consumers through os.environ.
    env = dict(os.environ, ARMLAB_DATABASE_URL=settings.database_url,
               ARMLAB_KAFKA_BOOTSTRAP=settings.kafka.bootstrap,
               ARMLAB_TOPIC_IMPRESSIONS=settings.topic_impressions,
               ARMLAB_TOPIC_FEEDBACK=settings.topic_feedback,
               ARMLAB_TOPIC_DLQ=settings.topic_dlq,
               ARMLAB_CONSUMER_GROUP=settings.consumer_group, ARMLAB_LOG_LEVEL="WARNING")
    cmd = [sys.executable, "-m", "armlab", "consume", "--exit-when-idle", "3", "--stats"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(processes)]
    snaps = []
    for p in procs:
        out, err = p.communicate(timeout=900)
        if p.returncode != 0:
            raise ServiceUnavailable(f"consumer process failed: {err.decode()[-500:]}")
        snaps.append(json.loads(out.decode().strip().splitlines()[-1]))
    records = sum(s["records"] for s in snaps)
    first = min(s["first_ts"] for s in snaps if s["first_ts"])
    last = max(s["last_ts"] for s in snaps if s["last_ts"])
    return {"events_per_s": records / (last - first), "records": records,
            "per_process_records": [s["records"] for s in snaps]}


def run_bench(settings: Settings, *, events: int, partitions: int, processes: int,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    say = progress or (lambda _m: None)
    _check_services(settings)
    migrate.upgrade(settings.database_url)
    run_id = uuid.uuid4().hex[:8]
    exp_key = f"bench-{run_id}"
    _make_experiment(settings, exp_key)
    sets = ["a", "b"] if processes else ["a"]
    topics = {s: (f"bench-{run_id}-{s}-imp", f"bench-{run_id}-{s}-fb") for s in sets}
    create_topics(settings.kafka,
                  [t for pair in topics.values() for t in pair] + [f"bench-{run_id}-dlq"],
                  partitions)
    prod_rate = 0.0
    for s, (ti, tf) in topics.items():
        say(f"producing {events} events to {ti}/{tf} ({partitions} partitions)")
        prod_rate = produce(settings.kafka, ti, tf, events, exp_key, f"{s}{run_id}")
    say("bare kafka-python read")
    bare = bare_read(settings.kafka, list(topics["a"]), events)

    def _for(s: str) -> Settings:
        return settings.model_copy(update={
            "topic_impressions": topics[s][0], "topic_feedback": topics[s][1],
            "topic_dlq": f"bench-{run_id}-dlq", "consumer_group": f"bench-{run_id}-{s}",
            "transport": "kafka"})

    say("armlab consumer, 1 process")
    one = armlab_inprocess(_for("a"), events)
    result: dict[str, Any] = {
        "events": events,
        "partitions": partitions,
        "armlab_events_per_s": round(one["events_per_s"]),
        "bare_events_per_s": round(bare),
        "ratio": round(one["events_per_s"] / bare, 3),
        "producer_events_per_s": round(prod_rate),
        "outcomes": one["outcomes"],
        "machine": f"{os.cpu_count()} CPUs",
    }
    if processes:
        say(f"armlab consumer, {processes} processes in one group")
        multi = armlab_processes(_for("b"), events, processes)
        result[f"armlab_{processes}proc_events_per_s"] = round(multi["events_per_s"])
        result["per_process_records"] = multi["per_process_records"]
        result["scaling"] = round(multi["events_per_s"] / one["events_per_s"], 3)
    return result
