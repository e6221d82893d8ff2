"""The ingest runner's partitions and their stored offsets.

The offsets that count are the ones stored in the database with each batch (the runner never
commits offsets to Kafka): on assignment the runner reads them and seeks there, on
revocation it forgets the partitions, after a fence or an abandoned batch it reads them again
(:meth:`PartitionOffsets._resync`). A stored offset beyond the end of its log stops the
consumer with :class:`OffsetsBeyondLog` before anything is skipped.
:func:`reset_offsets` / :func:`stored_offsets` are the ``armlab offsets`` commands.

:class:`PartitionOffsets` is a part of :class:`armlab.services.consumer.IngestRunner` (its base
class). ``store`` is the runner's :class:`~armlab.services.ports_consumer.IngestStore`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from armlab.adapters.metrics import IngestMetrics
from armlab.core.fencing import TP
from armlab.errors import ArmlabError
from armlab.services.ports_consumer import IngestStore, Source
from armlab.services.retrying import retrying

log = logging.getLogger("armlab.consumers")

class OffsetsBeyondLog(ArmlabError):
    """Stored offsets point past the end of their logs (see
    :meth:`PartitionOffsets._check_offsets`). One line: each partition with both offsets, and the
    command that resets them."""

    def __init__(self, group: str, beyond: list[tuple[TP, int, int]]) -> None:
        self.group = group
        self.beyond = beyond
        parts = "; ".join(f"{t}[{p}] stored {stored}, log ends at {end}"
                          for (t, p), stored, end in sorted(beyond))
        topics = sorted({t for (t, _), _, _ in beyond})
        reset = " ".join(f"--topic {t}" for t in topics)
        super().__init__(
            f"consumer group {group!r} has offsets beyond the end of the log ({parts}): the "
            "topic was deleted and created again, the cluster migrated, or the bus is new, "
            "and reading on would skip every record below the stored offset. Nothing was "
            "consumed. If the log was replaced on purpose, reset the group and start again: "
            f"armlab offsets reset --group {group} {reset} (re-reads each log from its start; "
            "events already stored are recognised as duplicates)")


def reset_offsets(store: IngestStore, group: str,
                  topics: Sequence[str] | None = None, *,
                  to: dict[TP, int] | None = None) -> int:
    """Forget the stored offsets of ``group`` (only ``topics`` when given): its consumers then
    read each log from the start, where duplicates of stored events are recognised and
    counted once. With ``to``, store those offsets instead (``--to latest``). Returns how
    many partitions changed. The consumers of the group must be stopped (a running one is
    fenced at its next batch and re-reads from the new offsets)."""
    return store.reset_offsets(group, topics, to or {})


def stored_offsets(store: IngestStore,
                   group: str | None = None) -> list[tuple[str, str, int, int]]:
    """(group, topic, partition, next offset) of every stored offset (of ``group``)."""
    return store.stored_offsets(group)


class PartitionOffsets:
    """The partitions a runner owns and the offsets stored for them."""

    store: IngestStore
    source: Source
    group: str
    metrics: IngestMetrics
    retry_max_s: float
    _committed: dict[TP, int | None]  # next offset stored in the DB (None: none)
    _unchecked: dict[TP, int]  # assigned, stored offset not yet compared with the log end
    _stop: threading.Event

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
            if off:
                self._unchecked[tp] = off
        log.info(
            "partitions assigned",
            extra={"partitions": {f"{t}:{p}": offsets.get((t, p)) for t, p in tps}},
        )

    def _on_revoke(self, tps: list[TP]) -> None:
        for tp in tps:
            self._committed.pop(tp, None)
            self._unchecked.pop(tp, None)

    def _check_offsets(self) -> None:
        """Compare each newly assigned partition's stored offset with the end of its log.

        A stored offset beyond the log end means the log is not the one the offsets were
        stored for (a topic deleted and created again, a migrated cluster, a new in-process
        bus): reading on would skip every record below the stored offset, silently. So the
        consumer stops with :class:`OffsetsBeyondLog`, naming the topic, partition, both
        offsets and the reset command; nothing of the batch is committed. Runs after each
        assignment, before any record of it is handled; when the broker cannot say, the
        check is tried again at the next poll (records at or past a stored offset are safe
        to handle either way: only a skip is silent)."""
        tps = [tp for tp in self._unchecked if tp in self._committed]
        try:
            ends = self.source.end_offsets(tps)
        except Exception as exc:  # noqa: BLE001 - the broker may be away; checked next poll
            log.warning("could not read the log end offsets; checking at the next poll",
                        extra={"error": str(exc)[:300]})
            return
        beyond = [(tp, self._committed[tp] or 0, ends[tp]) for tp in tps
                  if tp in ends and (self._committed[tp] or 0) > ends[tp]]
        for tp in tps:
            if tp in ends:
                self._unchecked.pop(tp, None)
        if beyond:
            raise OffsetsBeyondLog(self.group, beyond)

    def _read_offsets(self, tps: list[TP]) -> dict[TP, int]:
        return self.store.load_offsets(self.group, tps)

    def _with_db_retry(self, fn: Callable[[], Any], *, what: str) -> Any:
        """``fn()``, retried while the database is unreachable; None if stopped meanwhile."""

        def on_retry(exc: BaseException, wait_s: float) -> None:
            self.metrics.retries.labels("database").inc()
            log.warning("database unavailable, retrying",
                        extra={"what": what, "error": str(exc)[:200], "wait_s": wait_s})

        policy = retrying(self.store.is_transient, stop_event=self._stop,
                          max_wait_s=self.retry_max_s, on_retry=on_retry)
        try:
            for attempt in policy:
                with attempt:
                    return fn()
        except Exception:
            if self._stop.is_set():
                return None
            raise
        return None  # pragma: no cover - tenacity either returns or raises

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
