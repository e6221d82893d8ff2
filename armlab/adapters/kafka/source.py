"""Kafka transport for the ingest runner (kafka-python consumer group + DLQ producer).

Offsets live in the database, not in Kafka: ``enable_auto_commit=False`` and a
``ConsumerRebalanceListener`` that hands newly assigned partitions to the runner, which
seeks to the offsets stored with the effects (KafkaConsumer Javadoc, "Storing Offsets Outside
Kafka"). After each database commit the runner may also commit to Kafka, only so that
standard lag tooling sees progress; that commit is never read back.

Transactions: the consumer reads ``read_committed``: records of aborted transactions and the
transaction markers are never handed out (they only take offsets). Batches: every codec Kafka
has (gzip, snappy, lz4, zstd) is decoded, with bounded decompression, and a batch that cannot
be decoded (unknown codec, corrupt data, CRC mismatch, more than ``max_batch_bytes``
decompressed) comes out of :meth:`KafkaSource.poll` as ONE record at the batch's last offset
that carries its :class:`~armlab.core.events.DecodeFailure` (``undecodable_batch`` or
``too_large``) in ``failure``: the runner dead-letters it and moves past the whole batch
(:mod:`armlab.adapters.kafka.batches`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kafka import (
    ConsumerRebalanceListener,
    KafkaConsumer,
    OffsetAndMetadata,
    TopicPartition,
)
from kafka.errors import KafkaError

from armlab.adapters.kafka.batches import fault_of, install_guarded_batches
from armlab.core.events import DecodeFailure
from armlab.errors import ServiceUnavailable
from armlab.settings import DEFAULT_INGEST_BATCH, DEFAULT_INGEST_MAX_BATCH_BYTES, KafkaSettings

log = logging.getLogger("armlab.consumers.kafka")

TP = tuple[str, int]


def kafka_unavailable(bootstrap: str, exc: Exception) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"cannot reach Kafka at {bootstrap} ({type(exc).__name__}: {exc}); "
        "start it with `armlab dev up` or set ARMLAB_KAFKA_BOOTSTRAP"
    )


@dataclass(frozen=True, slots=True)
class UndecodableRecord:
    """A batch kafka-python's fetch could not decode, as one record at the batch's last
    offset: ``value`` is the batch as fetched, ``failure`` why (the runner dead-letters it)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    failure: DecodeFailure


def _undecodable(r: Any) -> Any:
    """``r``, or an :class:`UndecodableRecord` when it is the synthetic record of a batch that
    could not be decoded (:func:`armlab.adapters.kafka.batches.fault_of`)."""
    fault = fault_of(r.headers)
    if fault is None:
        return r
    log.warning("undecodable record batch; dead-lettering it",
                extra={"topic": r.topic, "partition": r.partition, "offset": r.offset,
                       "reason": fault.reason, "detail": fault.detail[:300]})
    return UndecodableRecord(r.topic, r.partition, r.offset, r.timestamp, None, r.value,
                             DecodeFailure(fault.reason, fault.detail))


class KafkaSource:
    """A kafka-python consumer in group ``group`` subscribed to ``topics``.

    A consumer that has been outside its group (no partitions, and not a stable member)
    ``rejoin_after_s`` seconds after subscribing is closed and built again. kafka-python 3.0 can
    stay in its coordinator look-up for good when it starts while the broker is restarting
    (seen in the reliability tests: minutes of 100% CPU, never joining, while a new client
    joins the same group at once); a new client joins normally. A healthy join takes a few
    seconds (the session timeout is 10 s), so the default 60 s only acts on a stuck client. A
    member that joined but was given no partitions (more consumers than partitions) is left
    alone: rebuilding it would rebalance the whole group for nothing.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        topics: Iterable[str],
        group: str,
        *,
        max_poll_records: int = DEFAULT_INGEST_BATCH,
        client_id: str = "armlab-consumer",
        align: tuple[str, str] | None = None,
        rejoin_after_s: float = 60.0,
        max_batch_bytes: int = DEFAULT_INGEST_MAX_BATCH_BYTES,
        **config: Any,
    ) -> None:
        install_guarded_batches(max_batch_bytes)
        self.kafka = kafka
        self.bootstrap = kafka.bootstrap
        self.topics = list(topics)
        self.group = group
        self.rejoin_after_s = rejoin_after_s
        self.rejoins = 0
        self.poll_errors = 0
        self._last_poll_warning = 0.0
        self._unassigned_since: float | None = None
        self._last_end_offsets = float("-inf")
        self._listener: ConsumerRebalanceListener | None = None
        # (impressions topic, feedback topic): hold feedback back until the impressions it
        # refers to have been read (see _align). None disables it.
        self.align = align
        self._imp_ts: dict[int, int] = {}  # partition -> newest impression timestamp read
        # partition -> the offset after the last record handed out (or sought to): with it,
        # highwaters() leaves out the offsets read_committed skips (markers, aborted records)
        self._handed: dict[TP, int] = {}
        # feedback partition -> (held records, monotonic time the hold began)
        self._held: dict[Any, tuple[list[Any], float]] = {}
        self._config: dict[str, Any] = {
            **kafka.client_config(),
            "group_id": group,
            "client_id": client_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "max_poll_records": max_poll_records,
            "max_partition_fetch_bytes": 4 * 1024 * 1024,
            "fetch_max_bytes": 64 * 1024 * 1024,
            "session_timeout_ms": 10_000,
            "heartbeat_interval_ms": 2_000,
            "max_poll_interval_ms": 300_000,
            "reconnect_backoff_max_ms": 2_000,
            "request_timeout_ms": 30_000,
            # aborted transactions never count; markers and aborted records only take offsets
            "isolation_level": "read_committed",
            # a CRC mismatch becomes a dead letter (batches.GuardedRecordBatch.validate_crc)
            "check_crcs": True,
            **config,
        }
        self.consumer = self._build()

    def _build(self) -> Any:
        try:
            return KafkaConsumer(**self._config)
        except KafkaError as exc:
            raise kafka_unavailable(self.bootstrap, exc) from exc

    def start(
        self,
        on_assign: Callable[[list[TP]], None],
        on_revoke: Callable[[list[TP]], None],
    ) -> None:
        src = self

        class _Listener(ConsumerRebalanceListener):
            # kafka-python calls these from inside poll(), i.e. between two batches: the
            # in-flight batch has already been committed or abandoned by then.
            def on_partitions_revoked(self, revoked: Any) -> None:
                src._imp_ts.clear()
                src._held.clear()
                src._handed.clear()
                on_revoke([(tp.topic, tp.partition) for tp in revoked])

            def on_partitions_assigned(self, assigned: Any) -> None:
                tps = [(tp.topic, tp.partition) for tp in assigned]
                log.info("assigned", extra={"partitions": [f"{t}:{p}" for t, p in tps]})
                on_assign(tps)

        self._listener = _Listener()
        self.consumer.subscribe(topics=self.topics, listener=self._listener)
        self._unassigned_since = time.monotonic()

    def seek(self, tp: TP, offset: int | None) -> None:
        ktp = TopicPartition(*tp)
        self._held.pop(ktp, None)  # re-read from ``offset``
        if offset is None:
            self._handed.pop(tp, None)
            self.consumer.seek_to_beginning(ktp)
        else:
            self._handed[tp] = offset
            self.consumer.seek(ktp, offset)

    def poll(self, max_records: int, timeout_s: float) -> list[Any]:
        """The next records, or [] while the broker cannot be reached.

        kafka-python 3.0 raises connection errors out of ``poll`` (its coordinator look-up
        refreshes metadata and gives up with ECONNREFUSED while the broker restarts). Nothing
        has been handed out then and positions have not moved, so the poll is simply tried
        again after ``timeout_s``; the service keeps running through the outage. Errors
        kafka-python marks as not retriable (authentication, authorisation) are raised: waiting
        would not fix them.
        """
        try:
            batches = self.consumer.poll(timeout_ms=int(timeout_s * 1000),
                                         max_records=max_records)
        except KafkaError as exc:
            if not exc.retriable:
                raise
            self.poll_errors += 1
            now = time.monotonic()
            if now - self._last_poll_warning > 10.0:
                self._last_poll_warning = now
                log.warning("Kafka unreachable during poll; retrying",
                            extra={"error": f"{type(exc).__name__}: {exc}"[:300],
                                   "errors": self.poll_errors})
            time.sleep(timeout_s)
            batches = {}
        self._watch_assignment()
        if self.align is not None and (batches or self._held):
            batches = self._align(batches)
        out: list[Any] = []
        for ktp, recs in batches.items():
            if recs:
                out.extend(recs)
                self._handed[(ktp.topic, ktp.partition)] = recs[-1].offset + 1
        for i, r in enumerate(out):
            if getattr(r, "headers", None):  # a synthetic record has one (cheap test first)
                out[i] = _undecodable(r)
        return out

    def _is_stable_member(self) -> bool:
        """Joined the group (kafka-python's coordinator is stable), partitions or not."""
        stable = getattr(getattr(self.consumer, "_coordinator", None), "generation_if_stable",
                         None)
        return callable(stable) and stable() is not None

    def _watch_assignment(self, now: float | None = None) -> None:
        """Rebuild a client that has held no partitions for ``rejoin_after_s`` (class doc)."""
        if self._listener is None:
            return
        now = time.monotonic() if now is None else now
        if self.consumer.assignment() or self._is_stable_member():
            self._unassigned_since = None
            return
        if self._unassigned_since is None:
            self._unassigned_since = now
            return
        if now - self._unassigned_since < self.rejoin_after_s:
            return
        log.warning("no partitions assigned; building a new Kafka consumer",
                    extra={"group": self.group, "waited_s": round(now - self._unassigned_since)})
        try:
            fresh = self._build()
        except ServiceUnavailable as exc:  # broker still down: keep the old one, try later
            log.warning("could not build a new Kafka consumer yet: %s", exc)
            self._unassigned_since = now - self.rejoin_after_s / 2
            return
        try:
            self.consumer.close(autocommit=False)
        except Exception as exc:  # noqa: BLE001 - replacing it anyway
            log.debug("closing the stuck consumer failed: %s", exc)
        self._imp_ts.clear()
        self._held.clear()
        self._handed.clear()
        self.consumer = fresh
        self.consumer.subscribe(topics=self.topics, listener=self._listener)
        self._unassigned_since = now
        self.rejoins += 1

    # -- impression/feedback alignment (an optimisation; never needed for correctness) ----
    # A poll drains one partition's fetched data at a time, so a batch is often all feedback
    # whose impressions are still unread: each such feedback is written as pending and
    # resolved later (correct, but two extra writes). So feedback records newer (producer
    # timestamp) than the newest impression read from the partition of the same number are
    # held here, in order, and handed out by a later poll once those impressions have been
    # read, the impressions partition has caught up, the hold is MAX_HOLD_S old, a poll
    # comes back empty, or MAX_HELD records are held. Held records are only deferred: every
    # batch stays contiguous per partition, and seek() (the runner's resync/assignment) or
    # a rebalance drops them, so they are fetched again from the stored offset.
    # (kafka-python's pause() is not used: its parked-fetch restore can stall a partition.)
    MAX_HOLD_S = 2.0
    MAX_HELD = 50_000

    def _caught_up(self, tp: Any) -> bool:
        """True when every impression of ``tp`` fetched so far has been read (unknown, i.e.
        no fetch response yet, counts as behind; the hold is bounded by MAX_HOLD_S)."""
        hw = self.consumer.highwater(tp)
        try:
            pos = self.consumer.position(tp, timeout_ms=0)
        except Exception:  # noqa: BLE001 - position not known yet
            return False
        return hw is not None and pos is not None and pos >= hw

    def _align(self, batches: dict[Any, list[Any]]) -> dict[Any, list[Any]]:
        imp_topic, fb_topic = self.align  # type: ignore[misc]
        for tp, recs in batches.items():
            if tp.topic == imp_topic and recs:
                self._imp_ts[tp.partition] = max(self._imp_ts.get(tp.partition, -1),
                                                 max(r.timestamp for r in recs))
        out: dict[Any, list[Any]] = {tp: recs for tp, recs in batches.items()
                                     if tp.topic != fb_topic}
        now = time.monotonic()
        release_all = not batches or sum(len(r) for r, _ in self._held.values()) > self.MAX_HELD
        assigned = self.consumer.assignment()
        for tp in set(self._held) | {tp for tp in batches if tp.topic == fb_topic}:
            held, since = self._held.pop(tp, ([], now))
            recs = held + batches.get(tp, [])
            if not recs:
                continue
            imp_tp = TopicPartition(imp_topic, tp.partition)
            cut = None
            if not (release_all or now - since > self.MAX_HOLD_S or imp_tp not in assigned
                    or self._caught_up(imp_tp)):
                limit = self._imp_ts.get(tp.partition, -1)
                cut = next((i for i, r in enumerate(recs) if r.timestamp > limit), None)
            if cut is None:
                out[tp] = recs
                continue
            self._held[tp] = (recs[cut:], since if held else now)
            if cut:
                out[tp] = recs[:cut]
        return out

    def end_offsets(self, tps: list[TP], timeout_s: float = 10.0) -> dict[TP, int]:
        """The log end offset of each partition, asked of the broker now (the offsets check
        on assignment: :meth:`armlab.services.consumer.IngestRunner._on_assign`). Raises
        :class:`ServiceUnavailable` when the broker does not answer within ``timeout_s``."""
        if not tps:
            return {}
        try:
            ends = self.consumer.end_offsets([TopicPartition(*tp) for tp in tps],
                                             timeout_ms=int(timeout_s * 1000))
        except KafkaError as exc:
            raise kafka_unavailable(self.bootstrap, exc) from exc
        return {(ktp.topic, ktp.partition): int(end) for ktp, end in ends.items()
                if end is not None}

    def _skipped(self, tp: TP) -> int:
        """Offsets the consumer has moved past without handing out a record: transaction
        markers and aborted records (``read_committed``). They hold no work, so the lag
        leaves them out (otherwise a partition whose last write was a committed transaction
        would show a lag of 1 for good). 0 while feedback of ``tp`` is held back."""
        nxt = self._handed.get(tp)
        ktp = TopicPartition(*tp)
        if nxt is None or ktp in self._held:
            return 0
        try:
            pos = self.consumer.position(ktp, timeout_ms=0)
        except Exception:  # noqa: BLE001 - position not known yet
            return 0
        return max(0, int(pos) - nxt) if pos is not None else 0

    #: How often (seconds) :meth:`highwaters` may ask the broker for end offsets that no
    #: fetch has told it yet (a partition with nothing to fetch, or right after assignment).
    END_OFFSETS_EVERY_S = 10.0

    def highwaters(self, tps: list[TP]) -> dict[TP, int]:
        """The high watermark of each partition: what the last fetch response said
        (``highwater``, no broker call, less the offsets read_committed skipped past:
        :meth:`_skipped`), else, at most every END_OFFSETS_EVERY_S, the broker's end offsets
        (``end_offsets``, bounded by a 5 s timeout). Partitions still unknown are left out."""
        out: dict[TP, int] = {}
        missing = []
        for tp in tps:
            hw = self.consumer.highwater(TopicPartition(*tp))
            if hw is None:
                missing.append(TopicPartition(*tp))
            else:
                out[tp] = int(hw) - self._skipped(tp)
        now = time.monotonic()
        if missing and now - self._last_end_offsets >= self.END_OFFSETS_EVERY_S:
            self._last_end_offsets = now
            try:
                ends = self.consumer.end_offsets(missing, timeout_ms=5_000)
            except Exception as exc:  # noqa: BLE001 - informational; next time
                log.debug("end offsets unavailable: %s", exc)
                ends = {}
            for ktp, end in ends.items():
                if end is not None:
                    out[(ktp.topic, ktp.partition)] = int(end)
        return out

    def commit_progress(self, offsets: dict[TP, int]) -> None:
        """Best-effort Kafka commit for lag tooling only (the database is authoritative)."""
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
