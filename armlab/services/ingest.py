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
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy.exc import DataError, IntegrityError, StatementError
from sqlalchemy.orm import Session, sessionmaker

from armlab.adapters.db import ingest_store, partitions
from armlab.adapters.db.models import DEAD_LETTER_RETENTION_S
from armlab.adapters.db.retry import db_retrying, is_transient
from armlab.adapters.metrics import IngestMetrics
from armlab.core.clock import utcnow
from armlab.core.events import DecodeFailure, Event, FeedbackV1, ImpressionV1, decode
from armlab.core.ingest import (
    Effects,
    ExperimentInfo,
    RecordLike,
    Reject,
    handle_batch,
    pending_raw,
    referenced_ids,
)
from armlab.settings import DEFAULT_INGEST_BATCH

log = logging.getLogger("armlab.consumers")

TP = tuple[str, int]


class Source(Protocol):
    def start(
        self, on_assign: Callable[[list[TP]], None], on_revoke: Callable[[list[TP]], None]
    ) -> None: ...
    def poll(self, max_records: int, timeout_s: float) -> Sequence[RecordLike]: ...
    def seek(self, tp: TP, offset: int | None) -> None: ...
    def highwaters(self, tps: list[TP]) -> dict[TP, int]: ...
    def end_offsets(self, tps: list[TP], timeout_s: float = 10.0) -> dict[TP, int]: ...
    def close(self) -> None: ...


class DlqSink(Protocol):
    def send(self, value: bytes, key: bytes | None = None) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class _Retry(Exception):  # noqa: N818 - internal control flow
    pass


UNPROCESSABLE = "unprocessable"
#: At most this many records of one poll are dead-lettered as ``unprocessable``; one more
#: means the failure is not in the records, and the consumer stops instead.
MAX_UNPROCESSABLE_PER_POLL = 10
#: Oldest the consumer's copy of the registry (status, arms, windows) may be, in seconds.
EXPERIMENTS_MAX_AGE_S = 5.0
_RECORD_ERRORS = (ArithmeticError, ValueError, TypeError, UnicodeError, LookupError)


def is_record_error(exc: BaseException) -> bool:
    """True when ``exc`` depends on the content of the records being written (the batch is
    bisected and the culprit dead-lettered), False for failures of the environment (retried
    or raised as they are)."""
    if isinstance(exc, _Retry | ingest_store.Fenced) or is_transient(exc):
        return False
    if isinstance(exc, DataError | IntegrityError):
        return True
    if isinstance(exc, StatementError):  # bind-parameter processing failed before the driver
        return exc.orig is not None and isinstance(exc.orig, _RECORD_ERRORS)
    return isinstance(exc, _RECORD_ERRORS)


class IngestRunner:
    """Consume impressions and feedback into arm statistics, exactly once in effect.

    ``IngestRunner(session_factory, source, dlq=..., group=..., topic_impressions=...,
    topic_feedback=...)`` then ``drain()`` (consume until the source is empty; the demo) or
    ``run(exit_when_idle=...)`` (the service loop; SIGTERM-safe via :meth:`stop`). Both return
    a dict of counts by outcome. ``armlab.bootstrap.Services.ingest_runner`` wires one from
    settings.
    """

    def __init__(
        self,
        session_factory: sessionmaker[Session],
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
    ) -> None:
        self.session_factory = session_factory
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
            self.source.start(self._on_assign, self._on_revoke)
            self._started = True

    def close(self) -> None:
        self.source.close()
        if self.dlq is not None:
            self.dlq.close()

    def _on_assign(self, tps: list[TP]) -> None:
        offsets = self._with_db_retry(
            lambda: self._read_offsets(tps), what="load offsets on assignment"
        )
        if offsets is None:  # stopping while the database is down
            return
        for tp in tps:
            off = offsets.get(tp)
            self._committed[tp] = off
            self.source.seek(tp, off)
        log.info(
            "partitions assigned",
            extra={"partitions": {f"{t}:{p}": offsets.get((t, p)) for t, p in tps}},
        )

    def _on_revoke(self, tps: list[TP]) -> None:
        for tp in tps:
            self._committed.pop(tp, None)

    def _read_offsets(self, tps: list[TP]) -> dict[TP, int]:
        with self.session_factory() as session:
            return ingest_store.load_offsets(session, self.group, tps)

    def _with_db_retry(self, fn: Callable[[], Any], *, what: str) -> Any:
        """``fn()``, retried while the database is unreachable; None if stopped meanwhile."""

        def on_retry(exc: BaseException, wait_s: float) -> None:
            self.metrics.retries.labels("database").inc()
            log.warning("database unavailable, retrying",
                        extra={"what": what, "error": str(exc)[:200], "wait_s": wait_s})

        retrying = db_retrying(stop_event=self._stop, max_wait_s=self.retry_max_s,
                               on_retry=on_retry)
        try:
            for attempt in retrying:
                with attempt:
                    return fn()
        except Exception:
            if self._stop.is_set():
                return None
            raise
        return None  # pragma: no cover - tenacity either returns or raises

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
        now = time.monotonic()
        if now - self._last_sweep > self.sweep_interval_s:
            self._last_sweep = now
            self.sweep_pending()
            self.prune_dead_letters()
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

    # -- lag -------------------------------------------------------------------------------
    def observe_lag(self, *, force: bool = False) -> dict[TP, int] | None:
        """Lag per owned partition (high watermark - next offset stored in the database) into
        the metrics (every second) and, every ``lag_report_interval_s``, into the
        ``consumer_lag`` table for the dashboard. Never raises (lag is informational); returns
        the lag when it was computed."""
        now = time.monotonic()
        due_report = force or now - self._last_lag_report >= self.lag_report_interval_s
        if not (due_report or now - self._last_lag > 1.0):
            return None
        self._last_lag = now
        committed = dict(self._committed)
        try:
            hws = self.source.highwaters(list(committed))
        except Exception as exc:  # noqa: BLE001 - lag is informational
            log.debug("lag unavailable: %s", exc)
            hws = {}
        lag = {tp: max(0, hw - (committed.get(tp) or 0)) for tp, hw in hws.items()}
        self.metrics.set_lag(lag)
        if due_report and committed:
            self._last_lag_report = now
            positions = {tp: (int(off or 0), hws.get(tp)) for tp, off in committed.items()}
            try:
                with self.session_factory() as session, session.begin():
                    ingest_store.report_lag(session, self.group, self.consumer_id, positions,
                                            utcnow())
            except Exception as exc:  # noqa: BLE001 - the next report will try again
                if now - self._lag_warned > 60.0:  # once a minute through an outage
                    self._lag_warned = now
                    log.warning("could not record consumer lag",
                                extra={"error": str(exc)[:300]})
        return lag

    def prune_dead_letters(self, now: datetime | None = None) -> int:
        """Delete dead-letter buckets older than ``DEAD_LETTER_RETENTION_S`` (runs with the
        pending sweep). Never raises."""
        cutoff = (now or utcnow()) - timedelta(seconds=DEAD_LETTER_RETENTION_S)
        try:
            with self.session_factory() as session, session.begin():
                return ingest_store.prune_dead_letters(session, cutoff)
        except Exception as exc:  # noqa: BLE001 - retried at the next interval
            log.warning("pruning dead-letter buckets failed", extra={"error": str(exc)[:300]})
            return 0

    # -- one batch ---------------------------------------------------------------------
    def process(self, records: Sequence[RecordLike]) -> bool:
        """Commit ``records`` (one partition's records in offset order) as one batch, or, when
        the batch fails because of a record's content, bisect it (module doc). True when
        every record was committed; False when the batch was abandoned (a fence, or a stop
        during an outage: the records are read again from the stored offsets)."""
        try:
            return self._process(records)
        except Exception as exc:
            if not is_record_error(exc):
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
        moves: dict[TP, tuple[int | None, int]] = {}
        for r in records:
            tp = (r.topic, r.partition)
            end = r.offset + 1
            cur = moves.get(tp)
            if cur is None:
                moves[tp] = (self._committed.get(tp), end)
            elif end > cur[1]:
                moves[tp] = (cur[0], end)

        def on_retry(exc: BaseException, wait_s: float) -> None:
            cause = "kafka" if isinstance(exc, _Retry) else "database"
            self.metrics.retries.labels(cause).inc()
            log.warning("batch failed, retrying",
                        extra={"cause": cause, "error": str(exc)[:300], "wait_s": wait_s})

        retrying = db_retrying(stop_event=self._stop, max_wait_s=self.retry_max_s,
                               retry_also=lambda e: isinstance(e, _Retry), on_retry=on_retry)
        try:
            for attempt in retrying:
                with attempt:
                    fx = self._commit_batch(decoded, moves)
        except ingest_store.Fenced as exc:
            log.warning("fenced: another consumer owns these partitions",
                        extra={"partitions": [f"{t}:{p}" for t, p in exc.tps]})
            self._resync(list(moves))
            return False
        except Exception as exc:
            if not (self._stop.is_set() and (isinstance(exc, _Retry) or is_transient(exc))):
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

    def _commit_batch(
        self,
        decoded: list[tuple[RecordLike, Event | DecodeFailure]],
        moves: dict[TP, tuple[int | None, int]],
    ) -> Effects:
        imp_ids, imp_events, fb_events, arriving = referenced_ids(decoded)
        with self.session_factory() as session, session.begin():
            ingest_store.advance_offsets(session, self.group, moves)
            state = ingest_store.prefetch(session, imp_ids, imp_events, fb_events, arriving)
            if self._needs_reload(decoded):
                self._experiments = ingest_store.load_experiments(session)
                self._experiments_at = time.monotonic()
            fx = handle_batch(
                decoded, self._experiments, state, feedback_topic=self.topic_feedback,
                horizon=partitions.horizon(utcnow(), self.retention_days),
            )
            if fx.rejects:
                self._send_dead_letters(fx)
            ingest_store.write_effects(session, self.group, fx)
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
                if e is None or ev.arm_key not in e.arms or e.status == "draft":
                    return True
            elif isinstance(ev, FeedbackV1) and ev.experiment_key not in exps:
                return True
        return False

    def _send_dead_letters(self, fx: Effects) -> None:
        if self.dlq is None:
            log.warning("no DLQ sink configured; rejects only counted",
                        extra={"n": len(fx.rejects)})
            return
        try:
            for r in fx.rejects:
                self.dlq.send(r.to_dlq(self.group), r.key)
            self.dlq.flush()
        except Exception as exc:  # kafka errors: roll back this batch and retry it
            raise _Retry(f"dead-letter produce failed: {exc}") from exc

    # -- time partitions and retention --------------------------------------------------
    def maintain_partitions(self) -> partitions.MaintenanceReport | None:
        """One partition-maintenance pass (module doc); None when it failed (logged, retried
        at the next interval: the consumer must not stop for it)."""
        try:
            with self.session_factory() as session, session.begin():
                report = partitions.maintain(session, retention_days=self.retention_days)
        except Exception as exc:  # noqa: BLE001 - retried at the next interval
            log.warning("partition maintenance failed; retrying at the next interval",
                        extra={"error": str(exc)[:300]})
            return None
        if report.created or report.dropped or any(report.purged.values()):
            log.info("partitions maintained", extra={"actions": report.lines()})
        return report

    # -- pending feedback whose impression never came ---------------------------------
    def sweep_pending(self, now: datetime | None = None) -> int:
        """Dead-letter (reason ``no_impression``) and mark ``unknown`` the pending feedback
        whose impression has not arrived within the attribution window (plus
        ``sweep_grace_s``) of its arrival; runs every ``sweep_interval_s`` from the loop.
        Returns how many were swept. Never raises: a failed sweep is retried next time."""
        try:
            return self._sweep(now or utcnow())
        except Exception as exc:  # noqa: BLE001 - the consumer must not stop for a sweep
            log.warning("pending-feedback sweep failed; retrying at the next interval",
                        extra={"error": str(exc)[:300]})
            return 0

    def _sweep(self, now: datetime) -> int:
        with self.session_factory() as session, session.begin():
            if not self._experiments:
                self._experiments = ingest_store.load_experiments(session)
                self._experiments_at = time.monotonic()
            stale = ingest_store.stale_pending(session, self._experiments, now,
                                               self.sweep_grace_s)
            if not stale:
                return 0
            fx = Effects()
            for pf in stale:
                window = self._experiments.get(pf.experiment_key)
                fx.rejects.append(Reject(
                    "no_impression",
                    f"impression {pf.impression_id!r} did not arrive within the attribution "
                    f"window ({window.window_s:.0f}s)" if window else
                    f"impression {pf.impression_id!r} never arrived",
                    self.topic_feedback, pf.partition, -1, pending_raw(pf)))
                fx.counters[("no_impression", pf.partition)] += 1
                fx.outcomes[(self.topic_feedback, "no_impression")] += 1
            self._send_dead_letters(fx)
            ingest_store.mark_feedback(session, [pf.event_id for pf in stale], "unknown")
            ingest_store.upsert_counters(session, self.group, fx.counters.items(), now)
        self.metrics.dlq.labels("no_impression").inc(len(stale))
        self.metrics.dlq_reasons["no_impression"] += len(stale)
        self.metrics.outcomes["no_impression"] += len(stale)
        log.info("pending feedback swept", extra={"n": len(stale)})
        return len(stale)

    def _resync(self, tps: list[TP], quiet: bool = False) -> None:
        """After a fence or an abandoned batch: seek back to the stored offsets."""
        owned = [tp for tp in tps if tp in self._committed]
        offsets = self._with_db_retry(lambda: self._read_offsets(owned), what="resync offsets")
        if offsets is None:
            return
        for tp in owned:
            off = offsets.get(tp)
            self._committed[tp] = off
            self.source.seek(tp, off)
        if not quiet:
            log.info("resynced offsets", extra={"offsets": {f"{t}:{p}": offsets.get((t, p))
                                                           for t, p in owned}})
