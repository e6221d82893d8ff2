"""``armlab bench fuzz``: the consumer fuzz test at full size, as a benchmark.

Produces ``records`` hostile records (:mod:`armlab.tools.fuzz`) interleaved with ``good``
synthetic events onto fresh topics, runs one in-process ingest runner until every record is
committed, and reports: the ingest rate of the mix against a bare kafka-python read of the same
topics (same run), the record-level accounting (counted + dead-lettered = produced), whether
the good experiment's statistics equal the reference computed from the good events alone
(:func:`armlab.tools.synth.expected_stats`), and the dead-letter reasons.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer
from sqlalchemy import func, select

from armlab.adapters.db import consumer_store as consumer_store
from armlab.adapters.db import migrate, queries
from armlab.adapters.db.models import Arm, ConsumerOffset, Experiment
from armlab.bootstrap import bootstrap
from armlab.core.event_effects import OK_OUTCOMES, OUT_RESOLVED
from armlab.core.status import ExperimentStatus
from armlab.errors import ServiceUnavailable
from armlab.settings import Settings
from armlab.tools.bench.ingest import ARMS, _check_services, bare_read, create_topics
from armlab.tools.fuzz import fuzz_records
from armlab.tools.synth import expected_stats, synthetic_events


def _experiment(settings: Settings, key: str, arms: tuple[str, ...], kind: str) -> int:
    services = bootstrap(settings)
    try:
        with services.session_factory() as s, s.begin():
            e = Experiment(key=key, name=key, control_arm_key=arms[0], salt=key,
                           status=ExperimentStatus.RUNNING, reward_kind=kind, reward_metric="click",
                           attribution_window_s=3600)
            e.arms = [Arm(key=a, is_control=(i == 0), position=i) for i, a in enumerate(arms)]
            s.add(e)
            s.flush()
            return int(e.id)
    finally:
        services.close()


@dataclass(frozen=True)
class _Run:
    """One bench run's names: its experiment (good events) and sink (fuzz records), the
    topics and the consumer group."""

    run_id: str
    exp_key: str
    sink_key: str
    ti: str
    tf: str
    td: str

    @classmethod
    def new(cls) -> _Run:
        run_id = uuid.uuid4().hex[:8]
        return cls(run_id, f"fuzzbench-{run_id}", f"fuzzsink-{run_id}", f"fuzz-{run_id}-imp",
                   f"fuzz-{run_id}-fb", f"fuzz-{run_id}-dlq")


def _produce(settings: Settings, run: _Run, *, records: int, good: int, seed: int
             ) -> tuple[int, list[dict[str, Any]]]:
    """Send the fuzz records with the good events interleaved at an even ratio (the rest of
    the good events after them); returns (records produced, fields of the good events)."""
    topic = {"impression": run.ti, "feedback": run.tf}
    p = KafkaProducer(**settings.kafka.client_config(), acks="all", enable_idempotence=True,
                      linger_ms=20, batch_size=1 << 20, max_request_size=2 << 20)
    sent: list[dict[str, Any]] = []
    good_events = synthetic_events(good, experiment_key=run.exp_key, arms=ARMS, seed=seed,
                                   id_prefix=f"g{run.run_id}")
    ratio = good / max(records, 1)
    produced = 0
    owed = 0.0
    for r in fuzz_records(records, seed=seed, experiment_key=run.sink_key, arms=("a", "b")):
        p.send(topic[r.topic], key=b"fuzz", value=r.value)
        produced += 1
        owed += ratio
        while owed >= 1.0:
            owed -= 1.0
            ev = next(good_events, None)
            if ev is None:
                break
            p.send(run.ti if ev.kind == "impression" else run.tf, key=ev.key, value=ev.value)
            sent.append(ev.fields)
            produced += 1
    for ev in good_events:
        p.send(run.ti if ev.kind == "impression" else run.tf, key=ev.key, value=ev.value)
        sent.append(ev.fields)
        produced += 1
    p.flush()
    p.close()
    return produced, sent


@dataclass(frozen=True)
class _Consumed:
    """What the consumer did: its metrics, the offsets committed, the ingest counters and the
    good experiment's per-arm statistics."""

    metrics: Any
    committed: int
    counters: dict[str, int]
    stats: dict[str, Any]


def _consume(cfg: Settings, exp_id: int, produced: int, timeout_s: float) -> _Consumed:
    """Run one in-process ingest runner until every produced record is processed."""
    services = bootstrap(cfg)
    runner = services.ingest_runner(transport="kafka")
    deadline = time.monotonic() + timeout_s
    try:
        while runner.metrics.records < produced:
            if time.monotonic() > deadline:
                raise ServiceUnavailable(
                    f"fuzz bench: {runner.metrics.records} of {produced} records after "
                    f"{timeout_s:.0f}s")
            runner.step()
        with services.session_factory() as s:
            committed = int(s.scalar(
                select(func.coalesce(func.sum(ConsumerOffset.next_offset), 0))
                .where(ConsumerOffset.group_id == cfg.consumer_group)) or 0)
            counters = consumer_store.read_counters(s, cfg.consumer_group)
            stats = {arm: v.as_dict() for (_, arm), v in queries.arm_totals(s, exp_id).items()}
    finally:
        runner.close()
        services.close()
    return _Consumed(runner.metrics, committed, counters, stats)


def _result(c: _Consumed, *, records: int, good: int, produced: int,
            sent: list[dict[str, Any]], bare: float) -> dict[str, Any]:
    """The JSON: accounting, the statistics against the reference, the reasons, the rates."""
    m = c.metrics
    dt = (m.last_ts or 0) - (m.first_ts or 0)
    rate = m.records / dt if dt > 0 else 0.0
    ok = sum(n for k, n in c.counters.items() if k in OK_OUTCOMES and k != OUT_RESOLVED)
    rejected = {k: n for k, n in c.counters.items() if k not in OK_OUTCOMES}
    return {
        "fuzz_records": records,
        "good_events": good,
        "produced": produced,
        "committed": c.committed,
        "counted": ok,
        "dead_lettered": sum(rejected.values()),
        # exact: no fuzz feedback can be rejected on resolution (it never joins a good
        # event, and fuzz impressions share its time stamps), so each record counts once
        "accounting_exact": (c.committed == produced
                             and ok + sum(rejected.values()) == produced),
        "stats_equal_reference": c.stats == expected_stats(sent, window_s=3600),
        "unprocessable": rejected.get("unprocessable", 0),
        "reasons": dict(sorted(rejected.items(), key=lambda kv: -kv[1])),
        "armlab_events_per_s": round(rate),
        "bare_events_per_s": round(bare),
        "ratio": round(rate / bare, 3) if bare else None,
        "machine": f"{os.cpu_count()} CPUs",
    }


def run_fuzz_bench(settings: Settings, *, records: int, good: int, seed: int = 2026,
                   partitions: int = 2, timeout_s: float = 1800.0,
                   progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    say = progress or (lambda _m: None)
    _check_services(settings)
    migrate.upgrade(settings.database_url)
    run = _Run.new()
    exp_id = _experiment(settings, run.exp_key, ARMS, "binary")
    _experiment(settings, run.sink_key, ("a", "b"), "continuous")
    create_topics(settings.kafka, [run.ti, run.tf, run.td], partitions)
    say(f"producing {records} fuzz records and {good} good events")
    produced, sent = _produce(settings, run, records=records, good=good, seed=seed)
    say("bare kafka-python read")
    bare = bare_read(settings.kafka, [run.ti, run.tf], produced)
    cfg = settings.model_copy(update={"topic_impressions": run.ti, "topic_feedback": run.tf,
                                      "topic_dlq": run.td,
                                      "consumer_group": f"fuzz-{run.run_id}",
                                      "transport": "kafka"})
    say("armlab consumer")
    consumed = _consume(cfg, exp_id, produced, timeout_s)
    return _result(consumed, records=records, good=good, produced=produced, sent=sent,
                   bare=bare)
