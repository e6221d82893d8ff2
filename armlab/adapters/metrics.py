"""Prometheus metrics for ingestion, on a registry per runner (tests build many runners).

armlab_ingest_events_total{topic,outcome}  counter: every record, by what happened to it
armlab_ingest_batch_seconds                histogram: wall time of one batch (decode..commit)
armlab_ingest_lag{topic,partition}         gauge: high watermark - committed next offset
armlab_ingest_dlq_total{reason}            counter: dead-lettered records by reason
armlab_ingest_retries_total{cause}         counter: batch retries (database / kafka outages)
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as PCounter


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.events = PCounter(
            "armlab_ingest_events", "Records ingested by topic and outcome",
            ["topic", "outcome"], registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "armlab_ingest_batch_seconds", "Wall time of one ingest batch",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.lag = Gauge(
            "armlab_ingest_lag", "Records not yet committed per partition",
            ["topic", "partition"], registry=self.registry,
        )
        self.dlq = PCounter(
            "armlab_ingest_dlq", "Dead-lettered records by reason", ["reason"],
            registry=self.registry,
        )
        self.retries = PCounter(
            "armlab_ingest_retries", "Batch retries by cause", ["cause"], registry=self.registry
        )
        # Plain mirrors for --stats / drain() results.
        self.outcomes: Counter[str] = Counter()
        self.dlq_reasons: Counter[str] = Counter()
        self.batches = 0
        self.records = 0
        self.busy_s = 0.0
        self.lag_now: dict[str, int] = {}
        self.first_ts: float | None = None  # wall clock when the first batch started
        self.last_ts: float | None = None  # wall clock when the last batch committed

    def observe_batch(
        self, outcomes: Counter[tuple[str, str]], rejects: Counter[str], seconds: float,
        n_records: int,
    ) -> None:
        for (topic, outcome), n in outcomes.items():
            self.events.labels(topic, outcome).inc(n)
            self.outcomes[outcome] += n
        for reason, n in rejects.items():
            self.dlq.labels(reason).inc(n)
            self.dlq_reasons[reason] += n
        now = time.time()
        if self.first_ts is None:
            self.first_ts = now - seconds
        self.last_ts = now
        self.batch_seconds.observe(seconds)
        self.batches += 1
        self.records += n_records
        self.busy_s += seconds

    def set_lag(self, lag: dict[tuple[str, int], int]) -> None:
        for (topic, part), v in lag.items():
            self.lag.labels(topic, str(part)).set(v)
            self.lag_now[f"{topic}:{part}"] = v

    def snapshot(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "batches": self.batches,
            "busy_s": round(self.busy_s, 3),
            "outcomes": dict(self.outcomes),
            "dlq": dict(self.dlq_reasons),
            "lag": dict(self.lag_now),
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
        }
