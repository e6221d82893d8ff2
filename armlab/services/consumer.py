"""The ingest runner: one loop, two transports (Kafka, in-process memory bus).

Per batch: poll -> decode -> BEGIN -> fence and advance offsets -> prefetch state ->
``handle_batch`` (pure) -> dead letters flushed -> write effects -> COMMIT. A crash anywhere
before COMMIT leaves nothing behind and the batch is read again from the stored offsets; a
crash after COMMIT leaves offsets that already skip the batch. So every record affects the
statistics exactly once (dead letters are at-least-once: flushed before the commit).

Outages: a database error rolls the batch back and retries it with backoff (the records stay
in memory; the Kafka consumer keeps heartbeating in its own thread). Kafka outages are
handled by kafka-python's reconnects; a DLQ flush failure also rolls back and retries.

Poison records: validation (:func:`armlab.core.events.decode`) is meant to reject every value
the database cannot store, but if a batch still fails for a reason that depends on its records'
content (a database ``DataError`` or ``IntegrityError``, or an arithmetic / value / type /
encoding error while handling or encoding it: :func:`is_record_error`), the batch is bisected:
each half is committed on its own, in order, until the one failing record is isolated; that
record is dead-lettered with reason ``unprocessable`` (the error in ``detail``) and the rest
are counted as usual. More than MAX_UNPROCESSABLE_PER_POLL such records in one poll means the
failure is systematic (a bug, a schema mismatch), and the error is raised instead. Errors of
the environment (transient database errors, Kafka) never bisect: they retry the whole batch,
so nothing is lost or reordered.
``stop()`` (SIGTERM) lets the in-flight batch finish, then the loop exits.

Retention (PostgreSQL): with ``retention_days`` set, events older than the horizon
(now - retention) are dead-lettered as ``expired``, and the loop runs the time-partition
maintenance (:func:`armlab.adapters.db.partitions.maintain`: weeks created ahead, weeks older
than the retention dropped) when it starts and every ``maintenance_interval_s``; a failed or
locked pass is retried at the next interval and never stops the consumer.

Storage is a port (:class:`armlab.services.ports_consumer.IngestStore`; the database one is
:class:`armlab.adapters.db.consumer_batches.SqlIngestStore`): ``store.batch()`` is the one
transaction of a batch, and whether a failure lies in the records' content is, for database
errors, :func:`armlab.adapters.db.retry.is_data_error`'s call. The runner is this module (the
loop, the batches, the bisection), :mod:`armlab.services.consumer_offsets` (the partitions and
their stored offsets) and :mod:`armlab.services.consumer_upkeep` (lag, sweeps, pruning,
partition maintenance).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta

from armlab.adapters.metrics import IngestMetrics
from armlab.core.clock import utcnow
from armlab.core.event_effects import (
    Effects,
    ExperimentInfo,
    RecordLike,
    handle_batch,
    referenced_ids,
)
from armlab.core.events import DecodeFailure, Event, FeedbackV1, ImpressionV1, decode
from armlab.core.fencing import TP, Fenced, StoredRowsDiffer
from armlab.core.status import ExperimentStatus
from armlab.services.consumer_offsets import (
    OffsetsBeyondLog,
    PartitionOffsets,
    reset_offsets,
    stored_offsets,
)
from armlab.services.consumer_upkeep import IngestUpkeep
from armlab.services.consumer_upkeep import RetryBatch as _Retry
from armlab.services.ports import StorageFailures
from armlab.services.ports_consumer import DlqSink, IngestStore, Source
from armlab.services.retrying import retrying
from armlab.settings import DEFAULT_INGEST_BATCH

__all__ = [
    "MAX_UNPROCESSABLE_PER_POLL", "DlqSink", "IngestRunner", "IngestStore", "OffsetsBeyondLog",
    "Source", "is_record_error", "reset_offsets", "stored_offsets",
]

log = logging.getLogger("armlab.consumers")

UNPROCESSABLE = "unprocessable"
#: At most this many records of one poll are dead-lettered as ``unprocessable``; one more
#: means the failure is not in the records, and the consumer stops instead.
MAX_UNPROCESSABLE_PER_POLL = 10
#: Oldest the consumer's copy of the registry (status, arms, windows) may be, in seconds.
EXPERIMENTS_MAX_AGE_S = 5.0
_RECORD_ERRORS = (ArithmeticError, ValueError, TypeError, UnicodeError, LookupError)


def is_record_error(exc: BaseException, store: StorageFailures) -> bool:
    """True when ``exc`` depends on the content of the records being written (the batch is
    bisected and the culprit dead-lettered), False for failures of the environment (retried
    or raised as they are)."""
    if isinstance(exc, _Retry | Fenced | StoredRowsDiffer) or store.is_transient(exc):
        return False
    # the database refused a value (or binding one raised a record error): the store knows
    return store.is_data_error(exc, _RECORD_ERRORS) or isinstance(exc, _RECORD_ERRORS)


class IngestRunner(PartitionOffsets, IngestUpkeep):
    """Consume impressions and feedback into arm statistics, exactly once in effect.

    ``IngestRunner(store, source, dlq=..., group=..., topic_impressions=...,
    topic_feedback=...)`` then ``drain()`` (consume until the source is empty; the demo) or
    ``run(exit_when_idle=...)`` (the service loop; SIGTERM-safe via :meth:`stop`). Both return
    a dict of counts by outcome. ``store`` is the storage port (:class:`IngestStore`).
    ``armlab.bootstrap.Services.ingest_runner`` wires one from settings. The partitions and
    their offsets are :class:`PartitionOffsets`' part, the upkeep between batches (lag,
    sweeps, pruning, partitions) :class:`IngestUpkeep`'s.
    """

    def __init__(
        self,
        store: IngestStore,
        source: Source,
        *,
        dlq: DlqSink | None = None,
        group: str = "armlab-ingest",
        topic_impressions: str = "armlab.impressions",
        topic_feedback: str = "armlab.feedback",
        max_batch: int = DEFAULT_INGEST_BATCH,
        poll_timeout_s: float = 0.2,
        metrics: IngestMetrics | None = None,
        retry_max_s: float = 5.0,
        sweep_interval_s: float = 60.0,
        sweep_grace_s: float = 60.0,
        retention_days: float | None = None,
        maintenance_interval_s: float = 3600.0,
        lag_report_interval_s: float = 2.0,
        consumer_id: str | None = None,
        max_clock_skew_s: float | None = 300.0,
        reset_offsets_on_start: bool = False,
    ) -> None:
        self.store = store
        self.source = source
        self.dlq = dlq
        self.group = group
        self.topic_impressions = topic_impressions
        self.topic_feedback = topic_feedback
        self.expected: dict[str, type[ImpressionV1] | type[FeedbackV1]] = {
            self.topic_impressions: ImpressionV1, self.topic_feedback: FeedbackV1,
        }
        self.max_batch = max_batch
        self.poll_timeout_s = poll_timeout_s
        self.metrics = metrics or IngestMetrics()
        self.retry_max_s = retry_max_s
        self._committed: dict[TP, int | None] = {}  # next offset stored in the DB (None: none)
        self._experiments: dict[str, ExperimentInfo] = {}
        self._experiments_at = 0.0
        self._poison_budget = MAX_UNPROCESSABLE_PER_POLL
        self.sweep_interval_s = sweep_interval_s
        self.sweep_grace_s = sweep_grace_s
        self._last_sweep = time.monotonic()
        self.retention_days = retention_days or None
        self.maintenance_interval_s = maintenance_interval_s
        self._last_maintenance: float | None = None
        self._stop = threading.Event()
        self._started = False
        self._last_lag = 0.0
        # The dashboard's lag per partition: written to ``consumer_lag`` at most every
        # lag_report_interval_s (0: after every step), after a batch or while idle.
        self.lag_report_interval_s = lag_report_interval_s
        self.consumer_id = consumer_id or f"{socket.gethostname()}:{os.getpid()}"
        self._last_lag_report = float("-inf")
        self._lag_warned = float("-inf")
        self.max_clock_skew_s = max_clock_skew_s
        # A new in-process bus starts every log at offset 0: offsets stored by an earlier run
        # describe logs that no longer exist (the embedded demo sets this).
        self.reset_offsets_on_start = reset_offsets_on_start
        # partitions assigned whose stored offset is not yet compared with the log end
        self._unchecked: dict[TP, int] = {}

    # -- lifecycle ---------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to exit after the in-flight batch (safe from a signal handler)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _ensure_started(self) -> None:
        if not self._started:
            # Read the offsets table once before joining the group: an unmigrated database
            # fails here, plainly, instead of inside a Kafka rebalance callback.
            self._with_db_retry(lambda: self._read_offsets([(self.topic_impressions, 0)]),
                                what="check the database schema")
            if self.reset_offsets_on_start:
                n = self._with_db_retry(lambda: reset_offsets(self.store, self.group),
                                        what="reset the offsets of a new bus")
                if n:
                    log.info("offsets of an earlier bus forgotten",
                             extra={"group": self.group, "partitions": n})
            self.source.start(self._on_assign, self._on_revoke)
            self._started = True

    def close(self) -> None:
        self.source.close()
        if self.dlq is not None:
            self.dlq.close()

    # -- loops -------------------------------------------------------------------------
    def drain(self, max_idle_polls: int = 1) -> dict[str, int]:
        """Consume until ``max_idle_polls`` polls in a row return nothing; return counts."""
        self._ensure_started()
        idle = 0
        while idle < max_idle_polls and not self._stop.is_set():
            n = self.step()
            idle = idle + 1 if n == 0 else 0
        self.observe_lag(force=True)  # the table shows where the drain ended
        return dict(self.metrics.outcomes)

    def run(self, *, exit_when_idle: float | None = None) -> dict[str, int]:
        """The service loop. Exits on :meth:`stop` or after ``exit_when_idle`` idle seconds."""
        self._ensure_started()
        last_work = time.monotonic()
        log.info("consumer started", extra={"group": self.group,
                                            "topics": sorted(self.expected)})
        while not self._stop.is_set():
            n = self.step()
            now = time.monotonic()
            if n:
                last_work = now
            elif exit_when_idle is not None and now - last_work >= exit_when_idle:
                log.info("idle, exiting", extra={"idle_s": exit_when_idle})
                break
        self.observe_lag(force=True)
        log.info("consumer stopped", extra=self.metrics.snapshot())
        return dict(self.metrics.outcomes)

    def step(self) -> int:
        """Poll once and process what came back as one batch; returns records handled."""
        self._ensure_started()
        records = self.source.poll(self.max_batch, self.poll_timeout_s)
        if self._unchecked:
            self._check_offsets()
            if self._unchecked:  # not known yet: nothing of those partitions is handled
                records = [r for r in records if (r.topic, r.partition) not in self._unchecked]
        now = time.monotonic()
        if now - self._last_sweep > self.sweep_interval_s:
            self._last_sweep = now
            self.sweep_pending()
            self.prune_dead_letters()
            self.prune_locks()
        if (self._last_maintenance is None
                or now - self._last_maintenance > self.maintenance_interval_s):
            self._last_maintenance = now
            self.maintain_partitions()
        n = self._handle(records)
        self.observe_lag()
        return n

    def _handle(self, records: Sequence[RecordLike]) -> int:
        if not records:
            return 0
        # Drop records of partitions we no longer own (revoked during poll) and records
        # below the stored offset (already applied; e.g. fetched before a re-seek).
        committed = self._committed
        records = [
            r for r in records
            if (r.topic, r.partition) in committed
            and r.offset >= (committed[(r.topic, r.partition)] or 0)
        ]
        if not records:
            return 0
        self._poison_budget = MAX_UNPROCESSABLE_PER_POLL
        self.process(records)
        return len(records)

    # -- one batch ---------------------------------------------------------------------
    def process(self, records: Sequence[RecordLike]) -> bool:
        """Commit ``records`` (one partition's records in offset order) as one batch, or, when
        the batch fails because of a record's content, bisect it (module doc). True when
        every record was committed; False when the batch was abandoned (a fence, or a stop
        during an outage: the records are read again from the stored offsets)."""
        try:
            return self._process(records)
        except Exception as exc:
            if not is_record_error(exc, self.store):
                raise
            if len(records) == 1:
                if self._poison_budget <= 0:
                    # More content failures in one poll than any real poison record would
                    # cause: a systematic failure (a bug, a schema mismatch) that must stop
                    # the consumer rather than dead-letter every record.
                    log.error("too many unprocessable records in one batch; stopping",
                              extra={"limit": MAX_UNPROCESSABLE_PER_POLL})
                    raise
                self._poison_budget -= 1
                detail = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"
                log.warning("record could not be processed; dead-lettering it",
                            extra={"topic": records[0].topic, "partition": records[0].partition,
                                   "offset": records[0].offset, "error": detail})
                return self._process(records, poison=detail)
            mid = len(records) // 2
            log.info("batch failed on a record's content; bisecting",
                     extra={"records": len(records), "error": str(exc)[:200]})
            return self.process(records[:mid]) and self.process(records[mid:])

    def _process(self, records: Sequence[RecordLike], poison: str | None = None) -> bool:
        t0 = time.perf_counter()
        # (A record the source could not decode carries its own ``failure``: a Kafka batch
        # with an unknown codec, corrupt data or a decompression bomb, one record per batch.)
        decoded: list[tuple[RecordLike, Event | DecodeFailure]] = [
            (r, DecodeFailure(UNPROCESSABLE, poison) if poison is not None
             else getattr(r, "failure", None) or decode(r.value, self.expected.get(r.topic)))
            for r in records
        ]
        # Impressions before feedback (a stable sort: each partition keeps its own order).
        # A poll often returns a feedback partition's records ahead of the impressions they
        # refer to; joined in memory here, they skip the pending write + resolve round trip.
        # The result is the same either way (pending feedback is applied on arrival); only
        # the extra ledger writes are saved.
        imp_topic = self.topic_impressions
        decoded.sort(key=lambda d: d[0].topic != imp_topic)
        moves = self._moves(records)

        def on_retry(exc: BaseException, wait_s: float) -> None:
            cause = ("kafka" if isinstance(exc, _Retry) else
                     "contention" if isinstance(exc, StoredRowsDiffer) else
                     "database")
            self.metrics.retries.labels(cause).inc()
            log.warning("batch failed, retrying",
                        extra={"cause": cause, "error": str(exc)[:300], "wait_s": wait_s})

        policy = retrying(
            self.store.is_transient, stop_event=self._stop, max_wait_s=self.retry_max_s,
            retry_also=lambda e: isinstance(e, _Retry | StoredRowsDiffer),
            on_retry=on_retry)
        try:
            for attempt in policy:
                with attempt:
                    fx = self._commit_batch(decoded, moves)
        except Fenced as exc:
            log.warning("fenced: another consumer owns these partitions",
                        extra={"partitions": [f"{t}:{p}" for t, p in exc.tps]})
            self._resync(list(moves))
            return False
        except Exception as exc:
            outage = isinstance(exc, _Retry) or self.store.is_transient(exc)
            if not (self._stop.is_set() and outage):
                raise
            cause = "kafka" if isinstance(exc, _Retry) else "database"
            log.warning("stopping during an outage; batch not committed (it will be read "
                        "again)", extra={"cause": cause})
            self._resync(list(moves), quiet=True)
            return False
        for tp, (_, end) in moves.items():
            if tp in self._committed:
                self._committed[tp] = end
        commit_progress = getattr(self.source, "commit_progress", None)
        if commit_progress is not None:
            commit_progress({tp: end for tp, (_, end) in moves.items()})
        rejects = Counter(r.reason for r in fx.rejects)
        self.metrics.observe_batch(fx.outcomes, rejects, time.perf_counter() - t0, len(records))
        return True

    def _moves(self, records: Sequence[RecordLike]) -> dict[TP, tuple[int | None, int]]:
        """Per partition of the batch: (the stored offset it starts from, the next offset)."""
        moves: dict[TP, tuple[int | None, int]] = {}
        for r in records:
            tp = (r.topic, r.partition)
            end = r.offset + 1
            cur = moves.get(tp)
            if cur is None:
                moves[tp] = (self._committed.get(tp), end)
            elif end > cur[1]:
                moves[tp] = (cur[0], end)
        return moves

    def _commit_batch(
        self,
        decoded: list[tuple[RecordLike, Event | DecodeFailure]],
        moves: dict[TP, tuple[int | None, int]],
    ) -> Effects:
        imp_ids, imp_events, fb_events, arriving = referenced_ids(decoded)
        with self.store.batch() as tx:  # BEGIN ... COMMIT (ROLLBACK on any error)
            tx.advance_offsets(self.group, moves)  # the fence
            tx.lock_ids(imp_ids, imp_events, fb_events)
            state = tx.prefetch(imp_ids, imp_events, fb_events, arriving)
            if self._needs_reload(decoded):
                self._experiments = tx.load_experiments()
                self._experiments_at = time.monotonic()
            fx = handle_batch(
                decoded, self._experiments, state, feedback_topic=self.topic_feedback,
                horizon=self.store.oldest_kept(utcnow(), self.retention_days),
                latest=None if self.max_clock_skew_s is None
                else utcnow() + timedelta(seconds=self.max_clock_skew_s),
            )
            if fx.rejects:
                self._send_dead_letters(fx)
            tx.write_effects(self.group, fx)
        return fx

    def _needs_reload(self, decoded: list[tuple[RecordLike, Event | DecodeFailure]]) -> bool:
        """Reload the registry when the batch names an experiment or arm we do not know, an
        impression names a draft (it may have started since), or the copy is older than
        EXPERIMENTS_MAX_AGE_S (stops and ships reach the consumer within that time)."""
        exps = self._experiments
        if not exps or time.monotonic() - self._experiments_at > EXPERIMENTS_MAX_AGE_S:
            return True
        for _, ev in decoded:
            if isinstance(ev, ImpressionV1):
                e = exps.get(ev.experiment_key)
                if e is None or ev.arm_key not in e.arms or e.status == ExperimentStatus.DRAFT:
                    return True
            elif isinstance(ev, FeedbackV1) and ev.experiment_key not in exps:
                return True
        return False
