"""The ingest runner's upkeep, between batches: consumer lag, the pending-feedback sweep,
pruning the dead-letter buckets and the ingest locks, and the time-partition maintenance.

:class:`IngestUpkeep` is a part of :class:`armlab.services.consumer.IngestRunner` (its base
class), kept apart from the batch path. None of it may stop the consumer: each step logs a
failure and is tried again at its next interval. Dead letters go out through
:meth:`IngestUpkeep._send_dead_letters`, which batches and sweeps share.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta

from armlab.adapters.metrics import IngestMetrics
from armlab.core.clock import utcnow
from armlab.core.event_effects import Effects, ExperimentInfo, Reject, pending_raw
from armlab.core.fencing import TP
from armlab.core.records import DEAD_LETTER_RETENTION_S, INGEST_LOCK_RETENTION_S
from armlab.services.ports_consumer import DlqSink, IngestStore, MaintenanceResult, Source

log = logging.getLogger("armlab.consumers")


class RetryBatch(Exception):  # noqa: N818 - internal control flow
    """Roll the batch back and try it again (a Kafka failure: the DLQ could not be written)."""


class IngestUpkeep:
    """Lag reports, sweeps, pruning and partition maintenance of one ingest runner."""

    store: IngestStore
    source: Source
    dlq: DlqSink | None
    group: str
    topic_feedback: str
    consumer_id: str
    metrics: IngestMetrics
    lag_report_interval_s: float
    sweep_grace_s: float
    retention_days: float | None
    _committed: dict[TP, int | None]
    _experiments: dict[str, ExperimentInfo]
    _experiments_at: float
    _last_lag: float
    _last_lag_report: float
    _lag_warned: float
    _stop: threading.Event

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
                self.store.report_lag(self.group, self.consumer_id, positions, utcnow())
            except Exception as exc:  # noqa: BLE001 - the next report will try again
                if now - self._lag_warned > 60.0:  # once a minute through an outage
                    self._lag_warned = now
                    log.warning("could not record consumer lag",
                                extra={"error": str(exc)[:300]})
        return lag

    # -- pruning ---------------------------------------------------------------------------
    def prune_dead_letters(self, now: datetime | None = None) -> int:
        """Delete dead-letter buckets older than ``DEAD_LETTER_RETENTION_S`` (runs with the
        pending sweep). Never raises."""
        cutoff = (now or utcnow()) - timedelta(seconds=DEAD_LETTER_RETENTION_S)
        try:
            return self.store.prune_dead_letters(cutoff)
        except Exception as exc:  # noqa: BLE001 - retried at the next interval
            log.warning("pruning dead-letter buckets failed", extra={"error": str(exc)[:300]})
            return 0

    def prune_locks(self, now: datetime | None = None) -> int:
        """Delete ``ingest_locks`` rows older than ``INGEST_LOCK_RETENTION_S`` (runs with the
        pending sweep; the rows only serialise batches running at the same moment). Never
        raises."""
        cutoff = (now or utcnow()) - timedelta(seconds=INGEST_LOCK_RETENTION_S)
        try:
            return self.store.prune_locks(cutoff)
        except Exception as exc:  # noqa: BLE001 - retried at the next interval
            log.warning("pruning ingest locks failed", extra={"error": str(exc)[:300]})
            return 0

    # -- time partitions and retention --------------------------------------------------
    def maintain_partitions(self) -> MaintenanceResult | None:
        """One partition-maintenance pass (see :mod:`armlab.services.consumer`); None when it
        failed (logged, retried at the next interval: the consumer must not stop for it)."""
        try:
            report = self.store.maintain_partitions(self.retention_days)
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
        with self.store.batch() as tx:
            if not self._experiments:
                self._experiments = tx.load_experiments()
                self._experiments_at = time.monotonic()
            stale = tx.stale_pending(self._experiments, now, self.sweep_grace_s)
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
            tx.mark_feedback([pf.event_id for pf in stale], "unknown")
            tx.upsert_counters(self.group, fx.counters.items(), now)
        self.metrics.dlq.labels("no_impression").inc(len(stale))
        self.metrics.dlq_reasons["no_impression"] += len(stale)
        self.metrics.outcomes["no_impression"] += len(stale)
        log.info("pending feedback swept", extra={"n": len(stale)})
        return len(stale)

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
            raise RetryBatch(f"dead-letter produce failed: {exc}") from exc
