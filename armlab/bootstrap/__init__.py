"""The one wiring point: builds a process's adapters and long-lived services, once each.

Entry points (the API, the CLI, the demo, the benchmarks) call :func:`bootstrap` and receive a
typed :class:`Services`. The database engine and session factory exist from the start; the rest
is built on first use and then kept for the life of the process:

* ``bus``: the in-process event bus (transport ``memory`` only; the producer and the consumer
  share it);
* ``producer``: the event producer for ``settings.transport`` (Kafka or the bus);
* ``assigner``: the in-memory assignment cache (not started: the API starts its threads);
* ``consumer_store`` / ``allocation_store`` / ``assignment_store``: the storage ports of the
  ingest runner, the allocator and the assignment cache, on this process's database;
* ``scorer_pool`` / ``scoring`` / ``catalogs``: the scoring side of ``/recommend``.

Nothing happens at import time. :func:`make_settings` and :func:`open_services` give the demo,
the replay, ``armlab report`` and ``armlab ope`` their two stacks:

- ``embedded``: SQLite under ``ARMLAB_HOME`` and the in-process bus; nothing to start;
- ``local``: whatever ``ARMLAB_DATABASE_URL`` / ``ARMLAB_KAFKA_BOOTSTRAP`` say, for example the
  PostgreSQL and Kafka of ``armlab dev up``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from armlab.adapters.db import migrate
from armlab.adapters.db.allocation_store import SqlAllocationStore
from armlab.adapters.db.assignment_store import SqlAssignmentStore
from armlab.adapters.db.consumer_batches import SqlIngestStore
from armlab.adapters.db.engine import make_engine, make_session_factory
from armlab.adapters.db.uow import UnitOfWork
from armlab.adapters.kafka.admin import log_end_offsets
from armlab.adapters.kafka.dlq import KafkaDlq
from armlab.adapters.kafka.memory import MemoryBus, MemoryDlq, MemorySource
from armlab.adapters.kafka.producer import (
    KafkaEventProducer,
    MemoryEventProducer,
    producer_from_settings,
)
from armlab.adapters.kafka.source import KafkaSource
from armlab.adapters.metrics import IngestMetrics
from armlab.adapters.scoring.batching import ScorerPool, ScoringService
from armlab.adapters.scoring.checkpoints import set_cpu_threads
from armlab.errors import ValidationFailed
from armlab.services.assignment import Assigner
from armlab.services.catalog import CatalogCache
from armlab.services.consumer import IngestRunner
from armlab.services.dashboard import DashboardReads
from armlab.services.experiments import ExperimentUseCases
from armlab.services.ports_allocation import AllocationStore
from armlab.services.ports_assignment import AssignmentStore
from armlab.services.ports_consumer import IngestStore
from armlab.services.report import ReportReads
from armlab.settings import Settings, get_settings

STACKS = ("embedded", "local")
_T = TypeVar("_T")


class Services:
    """What one process needs, built once. Close it when the process is done."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        assigner: Assigner | None = None,
        assigner_seed: int | None = None,
        bus: MemoryBus | None = None,
    ) -> None:
        self.settings = settings
        self._assigner_seed = assigner_seed
        self.engine = engine
        self.session_factory: sessionmaker[Session] = make_session_factory(engine)
        self._lock = threading.Lock()
        self._build_locks: dict[str, threading.Lock] = {}
        self._built: dict[str, Any] = {}
        if assigner is not None:
            self._built["assigner"] = assigner
        if bus is not None:
            self._built["bus"] = bus

    def uow(self) -> UnitOfWork:
        """A new unit of work on this process's database."""
        return UnitOfWork(self.session_factory)

    def _once(self, name: str, build: Callable[[], _T]) -> _T:
        # One lock per member: a slow build (the producer connecting to a Kafka that is away)
        # never holds up building another member (the catalogs of /recommend, say).
        got = self._built.get(name)
        if got is None:
            with self._lock:
                lock = self._build_locks.setdefault(name, threading.Lock())
            with lock:
                got = self._built.get(name)
                if got is None:
                    got = self._built[name] = build()
        return got

    def has(self, name: str) -> bool:
        """Whether the member ``name`` has been built (without building it)."""
        return name in self._built

    @property
    def bus(self) -> MemoryBus:
        """The in-process event bus shared by the producer and the consumer (memory transport)."""
        return self._once("bus", MemoryBus)

    @property
    def producer(self) -> KafkaEventProducer | MemoryEventProducer:
        """The event producer for ``settings.transport`` (ServiceUnavailable without Kafka)."""
        bus = self.bus if self.settings.transport == "memory" else None
        return self._once(
            "producer", lambda: producer_from_settings(self.settings, bus=bus, fail_fast=True)
        )

    @property
    def experiments(self) -> ExperimentUseCases:
        """The experiment use cases; each change drops the experiment from this process's
        assignment cache (other processes catch up at their next refresh)."""
        return self._once("experiments",
                          lambda: ExperimentUseCases(self.uow, on_change=self._forget_cached))

    @property
    def dashboard(self) -> DashboardReads:
        """The dashboard's read use cases."""
        return self._once("dashboard", lambda: DashboardReads(self.uow))

    @property
    def reports(self) -> ReportReads:
        """The report's read use case."""
        return self._once("reports", lambda: ReportReads(self.uow))

    @property
    def consumer_store(self) -> IngestStore:
        """The ingest runner's storage (offsets, batch transactions, upkeep)."""
        return self._once("consumer_store", lambda: SqlIngestStore(self.session_factory))

    @property
    def allocation_store(self) -> AllocationStore:
        """The allocator's storage (the experiments of a pass, one unit of work each)."""
        return self._once("allocation_store", lambda: SqlAllocationStore(self.session_factory))

    @property
    def assignment_store(self) -> AssignmentStore:
        """The assignment cache's storage (its loads and refreshes, sticky assignments)."""
        return self._once("assignment_store", lambda: SqlAssignmentStore(self.session_factory))

    def _forget_cached(self, key: str) -> None:
        if self.has("assigner"):
            self.assigner.invalidate(key)

    @property
    def assigner(self) -> Assigner:
        """The assignment cache (call ``start()`` to load it and run its threads)."""
        s = self.settings
        return self._once(
            "assigner",
            lambda: Assigner(self.assignment_store, seed=self._assigner_seed,
                             refresh_s=s.snapshot_refresh_s),
        )

    @property
    def scorer_pool(self) -> ScorerPool:
        """Scorers by variant config (models load on first use; torch only then)."""

        def build() -> ScorerPool:
            s = self.settings
            set_cpu_threads(s.scoring_threads)
            return ScorerPool(device=s.scoring_device, models_dir=s.models_dir,
                              cache_dir=s.home / "model-cache")

        return self._once("scorer_pool", build)

    @property
    def scoring(self) -> ScoringService:
        """The batching scorer in front of :attr:`scorer_pool`."""
        return self._once("scoring", lambda: ScoringService(self.scorer_pool))

    @property
    def catalogs(self) -> CatalogCache:
        return self._once(
            "catalogs",
            lambda: CatalogCache(self.uow, ttl_s=self.settings.snapshot_refresh_s),
        )

    def ingest_runner(
        self,
        *,
        transport: str | None = None,
        group: str | None = None,
        max_batch: int | None = None,
        poll_timeout_s: float = 0.2,
        metrics: IngestMetrics | None = None,
    ) -> IngestRunner:
        """A consumer for ``transport`` (default ``settings.transport``): Kafka or the bus."""
        s = self.settings
        transport = transport or s.transport
        group = group or s.consumer_group
        batch = max_batch or s.ingest_batch
        topics = [s.topic_impressions, s.topic_feedback]
        if transport == "memory":
            source: Any = MemorySource(self.bus, topics)
            dlq: Any = MemoryDlq(self.bus, s.topic_dlq)
        else:
            source = KafkaSource(s.kafka, topics, group, max_poll_records=batch,
                                 align=(s.topic_impressions, s.topic_feedback),
                                 max_batch_bytes=s.ingest_max_batch_bytes)
            dlq = KafkaDlq(s.kafka, s.topic_dlq)
        return IngestRunner(self.consumer_store, source, dlq=dlq, group=group,
                            topic_impressions=s.topic_impressions,
                            topic_feedback=s.topic_feedback, max_batch=batch,
                            poll_timeout_s=poll_timeout_s, metrics=metrics,
                            retention_days=None if s.is_sqlite else s.retention_days,
                            lag_report_interval_s=s.lag_report_interval_s,
                            max_clock_skew_s=s.ingest_max_clock_skew_s,
                            reset_offsets_on_start=transport == "memory"
                            and self.bus.first_consumer(group))

    def log_end_offsets(self, topics: list[str]) -> dict[tuple[str, int], int]:
        """The end offset of every partition of ``topics`` on this process's transport."""
        if self.settings.transport == "memory":
            return {(t, p): self.bus.end_offset(t, p)
                    for t in topics for p in range(self.bus.partitions(t))}
        return log_end_offsets(self.settings.kafka, topics)

    def close(self) -> None:
        """Stop what was started (assigner threads, scorer thread, producer), then the engine."""
        for name in ("assigner", "scoring", "producer"):
            obj = self._built.pop(name, None)
            closer = getattr(obj, "close", None)
            if callable(closer):
                try:
                    closer()
                except Exception:  # noqa: BLE001,S110 - best effort on shutdown
                    pass
        self.engine.dispose()


def bootstrap(
    settings: Settings,
    *,
    engine: Engine | None = None,
    assigner: Assigner | None = None,
    assigner_seed: int | None = None,
    bus: MemoryBus | None = None,
    db_call_timeout_s: float | None = None,
) -> Services:
    """Services for ``settings``. ``assigner`` / ``bus`` replace the default ones (tests);
    ``assigner_seed`` makes the assigner's draws and impression ids reproducible (the demo);
    ``db_call_timeout_s`` cuts database calls that run longer (the API's engine)."""
    engine = engine or make_engine(settings.database_url, call_timeout_s=db_call_timeout_s)
    return Services(settings, engine,
                    assigner=assigner, assigner_seed=assigner_seed, bus=bus)


def make_settings(stack: str, **overrides: object) -> Settings:
    """Settings for ``stack``; environment variables still apply to everything not forced."""
    if stack not in STACKS:
        raise ValidationFailed(f"--stack must be one of {', '.join(STACKS)}, got {stack!r}",
                               field="stack")
    base = get_settings()
    if stack == "embedded":
        home = Path(base.home)
        url = base.database_url if base.is_sqlite else f"sqlite:///{home / 'armlab.db'}"
        forced: dict[str, object] = {"transport": "memory", "database_url": url,
                                     "auth_disabled": True}
    else:
        forced = {"transport": "kafka"}
    forced.update(overrides)
    return base.model_copy(update=forced)


def open_services(settings: Settings, *, upgrade: bool = True, **kwargs: Any) -> Services:
    """Bootstrap services after upgrading the schema to head (SQLite folders are created)."""
    if upgrade:
        migrate.upgrade(settings.database_url)
    return bootstrap(settings, **kwargs)
