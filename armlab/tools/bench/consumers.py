"""``armlab bench consumers``: consumer scaling, 1, 2 and 4 `armlab consume` processes.

For each process count k: fresh impression/feedback topics of ``partitions`` partitions and a
fresh experiment; k ``armlab consume`` processes join one consumer group on the still empty
topics; once the group is stable with k members (so no process starts alone on the whole
topic), ``events`` synthetic events (:mod:`armlab.tools.synth`, built beforehand) are written
by a librdkafka producer (a few hundred thousand records/s: the consumers find the topic
full), and the processes ingest them into PostgreSQL (decode, validation, joins, dedupe,
aggregation, offsets in the same transaction) until every record is committed. A run's rate is
events / (last commit - first batch start) over all its processes. Each run is checked: the
stored per-arm statistics equal :func:`armlab.tools.synth.expected_stats` of the produced
events, every record is counted once, the offsets end at the log end, nothing is
dead-lettered.

Baselines, same run, on the first run's topics (no database; each the best of two reads): a
bare kafka-python consumer (``baseline``), the same with armlab's guarded batch decoding
installed (``baseline_guarded``: the cost of :mod:`armlab.adapters.kafka.batches`), and a
bare confluent-kafka (librdkafka) consumer (``baseline_confluent``: what a librdkafka
transport could read at most). ``ratio`` is each run's rate over ``baseline``. The producer
and the baseline reads are in :mod:`armlab.tools.bench.consumers_kafka` (re-exported here).

Services: ARMLAB_DATABASE_URL (PostgreSQL) and ARMLAB_KAFKA_BOOTSTRAP (`armlab dev up`), or
``own_stack=True``: a PostgreSQL server and a Kafka broker started for the run in a temporary
directory (armlab.tools.devstack) and removed after it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient
from kafka.errors import KafkaError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from armlab.adapters.db import consumer_store as consumer_store
from armlab.adapters.db import migrate, queries
from armlab.adapters.db.engine import make_engine, make_session_factory
from armlab.adapters.db.models import Arm, ConsumerOffset, Experiment
from armlab.core.event_effects import OK_OUTCOMES, OUT_RESOLVED
from armlab.core.status import ExperimentStatus
from armlab.errors import ServiceUnavailable
from armlab.settings import KafkaSettings, Settings
from armlab.tools.bench.consumers_kafka import baseline_reads, fill
from armlab.tools.bench.consumers_kafka import confluent_config as confluent_config
from armlab.tools.bench.consumers_kafka import confluent_read as confluent_read
from armlab.tools.bench.consumers_kafka import guarded_read as guarded_read
from armlab.tools.bench.ingest import _check_services, create_topics
from armlab.tools.devstack import KafkaBroker, PostgresServer
from armlab.tools.synth import SynthEvent, expected_stats, synthetic_events

ARMS = ("control", "b", "c")
CODECS = ("none", "gzip", "snappy", "lz4", "zstd")


@contextlib.contextmanager
def own_stack(progress: Callable[[str], None]) -> Iterator[tuple[str, str]]:
    """(database URL, bootstrap) of a PostgreSQL server and a Kafka broker started in a
    temporary directory, stopped and removed on exit."""
    root = Path(tempfile.mkdtemp(prefix="armlab-bench-consumers-"))
    root.chmod(0o755)  # PostgreSQL runs as `postgres` when we are root
    pg = PostgresServer(root / "postgres", die_with_parent=True)
    broker = KafkaBroker(root / "kafka", die_with_parent=True)
    try:
        progress(f"starting PostgreSQL and Kafka in {root}")
        pg.start()
        broker.start(progress=progress)
        yield pg.url, broker.bootstrap
    finally:
        broker.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def _committed(sf: sessionmaker[Session], group: str) -> int:
    with sf() as s:
        return int(s.scalar(select(func.coalesce(func.sum(ConsumerOffset.next_offset), 0))
                            .where(ConsumerOffset.group_id == group)) or 0)


def _wait_group(kafka: KafkaSettings, group: str, members: int, procs: list[Any],
                timeout_s: float) -> float:
    """Wait until ``group`` is Stable with ``members`` members (every partition assigned, so
    no process starts alone on the whole topic); the seconds it took."""
    t0 = time.monotonic()
    admin = KafkaAdminClient(**kafka.client_config())
    try:
        while True:
            if any(p.poll() is not None for p in procs):
                raise ServiceUnavailable("a consumer process exited while joining its group")
            try:
                desc = admin.describe_groups([group]).get(group) or {}
            except KafkaError as exc:  # the coordinator is still being set up
                if not exc.retriable:
                    raise
                desc = {}
            if desc.get("group_state") == "Stable" and len(desc.get("members") or []) == members:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout_s:
                raise ServiceUnavailable(f"group {group} not stable with {members} members "
                                         f"after {timeout_s:.0f}s: {desc.get('group_state')}, "
                                         f"{len(desc.get('members') or [])} members")
            time.sleep(0.2)
    finally:
        admin.close()


def run_processes(settings: Settings, processes: int, events: list[SynthEvent], codec: str,
                  sf: sessionmaker[Session], timeout_s: float) -> dict[str, Any]:
    """``processes`` `armlab consume` processes join one group on empty topics; once the
    group is stable the topics are filled with ``events``; when every record is committed
    the processes get SIGTERM and print their metrics. Rate over all of them."""
    env = dict(os.environ, ARMLAB_DATABASE_URL=settings.database_url,
               ARMLAB_KAFKA_BOOTSTRAP=settings.kafka.bootstrap, ARMLAB_TRANSPORT="kafka",
               ARMLAB_TOPIC_IMPRESSIONS=settings.topic_impressions,
               ARMLAB_TOPIC_FEEDBACK=settings.topic_feedback, ARMLAB_TOPIC_DLQ=settings.topic_dlq,
               ARMLAB_CONSUMER_GROUP=settings.consumer_group, ARMLAB_LOG_LEVEL="WARNING")
    cmd = [sys.executable, "-m", "armlab", "consume", "--stats"]
    logs = [tempfile.TemporaryFile() for _ in range(processes)]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=log)
             for log in logs]

    def tail(i: int) -> str:
        logs[i].seek(0)
        return logs[i].read().decode(errors="replace")[-1500:]

    snaps = []
    try:
        join_s = _wait_group(settings.kafka, settings.consumer_group, processes, procs, 120.0)
        fill_rate = fill(settings.kafka, settings.topic_impressions, settings.topic_feedback,
                         events, codec)
        deadline = time.monotonic() + timeout_s
        while _committed(sf, settings.consumer_group) < len(events):
            for i, p in enumerate(procs):
                if p.poll() is not None:
                    raise ServiceUnavailable(f"consumer exited {p.returncode}: {tail(i)}")
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"not all records committed in {timeout_s:.0f}s")
            time.sleep(0.1)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for i, p in enumerate(procs):
            out, _ = p.communicate(timeout=120)
            if p.returncode != 0:
                raise ServiceUnavailable(f"consumer exited {p.returncode}: {tail(i)}")
            snaps.append(json.loads(out.decode().strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
    firsts = [s["first_ts"] for s in snaps if s["first_ts"]]
    lasts = [s["last_ts"] for s in snaps if s["last_ts"]]
    records = sum(s["records"] for s in snaps)
    span = (max(lasts) - min(firsts)) if firsts and lasts else 0.0
    return {"records": records, "events_per_s": records / span if span > 0 else 0.0,
            "ingest_s": round(span, 2), "group_join_s": round(join_s, 2),
            "fill_events_per_s": round(fill_rate),
            "per_process_records": [s["records"] for s in snaps]}


def _check_run(sf: sessionmaker[Session], exp_id: int, sent: list[dict[str, object]],
               group: str) -> dict[str, Any]:
    """The run's accounting against its produced events."""
    with sf() as s:
        stats = {arm: v.as_dict() for (_, arm), v in queries.arm_totals(s, exp_id).items()}
        counters = consumer_store.read_counters(s, group)
    handled = sum(n for reason, n in counters.items() if reason != OUT_RESOLVED)
    rejected = {reason: n for reason, n in counters.items() if reason not in OK_OUTCOMES}
    return {"stats_equal_reference": stats == expected_stats(sent, window_s=3600),
            "records_counted": handled, "offsets_committed": _committed(sf, group),
            "dead_letters": sum(rejected.values()), "rejects": rejected}


def _experiment(sf: sessionmaker[Session], key: str) -> int:
    with sf() as s, s.begin():
        e = Experiment(key=key, name=key, control_arm_key=ARMS[0], salt=key,
                       status=ExperimentStatus.RUNNING, reward_kind="binary", reward_metric="click",
                       attribution_window_s=3600)
        e.arms = [Arm(key=a, is_control=(i == 0), position=i) for i, a in enumerate(ARMS)]
        s.add(e)
        s.flush()
        return int(e.id)


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _one_run(settings: Settings, sf: sessionmaker[Session], *, run_id: str, dlq: str, k: int,
             events: int, partitions: int, codec: str, timeout_s: float,
             say: Callable[[str], None]) -> tuple[dict[str, Any], list[str]]:
    """One process count ``k``: fresh topics and experiment, ``k`` consumers, the accounting
    check; returns the run's result and its two topics."""
    ti, tf = f"benchc-{run_id}-{k}p-imp", f"benchc-{run_id}-{k}p-fb"
    create_topics(settings.kafka, [ti, tf], partitions)
    exp_key = group = f"benchc-{run_id}-{k}p"
    exp_id = _experiment(sf, exp_key)
    batch = list(synthetic_events(events, experiment_key=exp_key, arms=ARMS, seed=k,
                                  id_prefix=f"{run_id}-{k}p-"))
    run_settings = settings.model_copy(update={
        "topic_impressions": ti, "topic_feedback": tf, "topic_dlq": dlq,
        "consumer_group": group, "transport": "kafka"})
    say(f"{k} `armlab consume` process(es) in group {group}; {len(batch)} events "
        f"({codec}) into {partitions}-partition topics once the group is stable")
    res = run_processes(run_settings, k, batch, codec, sf, timeout_s)
    sent = [ev.fields for ev in batch]
    res.update(_check_run(sf, exp_id, sent, group))
    res["processes"] = k
    res["accounting_exact"] = bool(
        res["stats_equal_reference"] and res["records"] == len(sent)
        and res["records_counted"] == len(sent)
        and res["offsets_committed"] == len(sent) and res["dead_letters"] == 0)
    say(f"  {res['events_per_s']:.0f} events/s, accounting exact: "
        f"{res['accounting_exact']}")
    return res, [ti, tf]


def _summary(*, events: int, partitions: int, codec: str, processes: Sequence[int],
             runs: list[dict[str, Any]], reads: dict[str, list[float]],
             load_before: list[float]) -> dict[str, Any]:
    """The JSON-ready result of :func:`run_bench`."""
    base, guarded, confluent = (max(reads[k]) for k in ("bare", "guarded", "confluent"))
    rate = {str(r["processes"]): round(r["events_per_s"]) for r in runs}
    one = next((r["events_per_s"] for r in runs if r["processes"] == 1), None)
    return {
        "events": events,
        "partitions": partitions,
        "codec": codec,
        "processes": list(processes),
        "armlab_events_per_s": rate,
        "baseline_events_per_s": round(base),
        "baseline_guarded_events_per_s": round(guarded),
        "baseline_confluent_events_per_s": round(confluent),
        "baseline_reads_events_per_s": {k: [round(x) for x in v] for k, v in reads.items()},
        "ratio": {k: round(v / base, 3) for k, v in rate.items()},
        "scaling": ({str(r["processes"]): round(r["events_per_s"] / one, 3) for r in runs}
                    if one else {}),
        "confluent_over_kafka_python": round(confluent / base, 3),
        "accounting_exact": all(r["accounting_exact"] for r in runs),
        "runs": runs,
        "machine": f"{os.cpu_count()} CPUs",
        "load_average_1_5_15": {"before": load_before, "after": _load()},
    }


def run_bench(settings: Settings, *, events: int, partitions: int = 4,
              processes: Sequence[int] = (1, 2, 4), codec: str = "none",
              timeout_s: float = 1800.0,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The benchmark on the services of ``settings`` (module doc); JSON-ready dict."""
    say = progress or (lambda _m: None)
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {', '.join(CODECS)}")
    _check_services(settings)
    migrate.upgrade(settings.database_url)
    engine = make_engine(settings.database_url, pool_size=2)
    sf = make_session_factory(engine)
    run_id = uuid.uuid4().hex[:8]
    dlq = f"benchc-{run_id}-dlq"
    create_topics(settings.kafka, [dlq], 1)
    runs: list[dict[str, Any]] = []
    first_topics: list[str] = []
    load_before = _load()
    try:
        for k in processes:
            res, topics = _one_run(settings, sf, run_id=run_id, dlq=dlq, k=k, events=events,
                                   partitions=partitions, codec=codec, timeout_s=timeout_s,
                                   say=say)
            first_topics = first_topics or topics
            runs.append(res)
    finally:
        engine.dispose()
    say("baselines on the first run's topics: kafka-python, guarded kafka-python, "
        "confluent-kafka")
    reads = baseline_reads(settings, first_topics, events)
    return _summary(events=events, partitions=partitions, codec=codec, processes=processes,
                    runs=runs, reads=reads, load_before=load_before)


def run(events: int, *, settings: Settings | None = None, own: bool = False,
        **kw: Any) -> dict[str, Any]:
    """:func:`run_bench` on ``settings``' services, or on its own stack (``own``)."""
    if not own:
        if settings is None:
            raise ValueError("settings are needed unless own=True")
        return run_bench(settings, events=events, **kw)
    progress = kw.get("progress") or (lambda _m: None)
    with own_stack(progress) as (db_url, bootstrap):
        base = settings or Settings()
        own_settings = base.model_copy(update={
            "database_url": db_url, "kafka": KafkaSettings(bootstrap=bootstrap)})
        out = run_bench(own_settings, events=events, **kw)
    out["services"] = "own (armlab.tools.devstack, temporary)"
    return out
