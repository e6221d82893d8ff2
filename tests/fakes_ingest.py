"""An in-memory stand-in for the ingest runner's storage port
(:class:`armlab.services.ports_consumer.IngestStore`), on the in-memory database of
``tests/fakes_stores.py``.

:class:`IngestTables` holds what the consumer's statements touch (offsets, impressions,
the feedback ledger, the per-partition sums, the interleaving tallies, the counters and
dead-letter buckets, the lag reports). :meth:`MemoryIngestStore.batch` is one transaction: the
batch works on a copy of the tables that replaces them when the block ends normally (an error
leaves them as they were). At each commit the registry's view of the evidence
(``db.evidence``: per-arm and guardrail totals over the partitions, the impressions log, the
pair tallies, the interleaving units and credits) is rebuilt from the tables, so the
allocator and the decisions read what the consumer wrote.

Semantics kept from the database adapter: the offsets fence (a start offset that is not the
stored one raises :class:`~armlab.core.fencing.Fenced`), ``ON CONFLICT DO NOTHING`` inserts that
must store every row (:class:`~armlab.core.fencing.StoredRowsDiffer`), additive upserts, the
pending-feedback sweep's cutoff. One thread: ``lock_ids`` has nothing to serialise.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from armlab.core.clock import as_utc, utcnow
from armlab.core.event_effects import (
    OK_OUTCOMES,
    BatchState,
    Effects,
    ExperimentInfo,
    ImpressionState,
    MetricRule,
    PendingFeedback,
)
from armlab.core.evidence import FIELDS, ArmSums
from armlab.core.fencing import TP, Fenced, StoredRowsDiffer
from tests.fakes_stores import LoggedImpression, MemoryUnitOfWork

DEAD_LETTER_BUCKET_S = 60


@dataclass
class FeedbackRow:
    event_id: str
    impression_id: str
    experiment_key: str
    kind: str
    value: float
    occurred_at: datetime
    received_at: datetime
    partition: int
    status: str
    item_id: str | None


@dataclass
class IngestTables:
    offsets: dict[tuple[str, str, int], int] = field(default_factory=dict)
    impressions: dict[str, ImpressionState] = field(default_factory=dict)
    # impression id -> (unit id, context): the impression row's columns beyond its state
    rows: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    feedback: dict[str, FeedbackRow] = field(default_factory=dict)
    stats: dict[tuple[int, str, int], ArmSums] = field(default_factory=dict)
    guardrail_stats: dict[tuple[int, str, str, int], ArmSums] = field(default_factory=dict)
    units: Counter[tuple[int, str]] = field(default_factory=Counter)
    credits: dict[tuple[int, str, str, str], float] = field(default_factory=dict)
    pairs: dict[tuple[int, str, str, int], list[int]] = field(default_factory=dict)
    counters: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    dead_letters: Counter[tuple[str, str, datetime, int]] = field(default_factory=Counter)
    lag: dict[tuple[str, str, int], tuple[int, int | None, str, datetime]] = field(
        default_factory=dict)


def _add(into: dict[Any, ArmSums], key: Any, sums: ArmSums) -> None:
    old = into.get(key) or ArmSums()
    into[key] = ArmSums(*(getattr(old, f) + getattr(sums, f) for f in FIELDS))


class MemoryIngestBatch:
    """One batch's reads and writes on a copy of the tables (the transaction)."""

    def __init__(self, db: MemoryUnitOfWork, tables: IngestTables) -> None:
        self.db = db
        self.t = tables

    def advance_offsets(self, group: str, moves: dict[TP, tuple[int | None, int]]) -> None:
        fenced = []
        for (topic, part), (start, end) in sorted(moves.items()):
            key = (group, topic, part)
            if self.t.offsets.get(key) != start:  # None: no row stored yet
                fenced.append((topic, part))
            else:
                self.t.offsets[key] = end
        if fenced:
            raise Fenced(fenced)

    def lock_ids(self, impression_ids: Iterable[str], impression_events: Iterable[str],
                 feedback_events: Iterable[str]) -> None:
        return None  # one thread

    def prefetch(self, imp_ids: set[str], imp_events: set[str], fb_events: set[str],
                 arriving: set[str]) -> BatchState:
        state = BatchState()
        for i in imp_ids & set(self.t.impressions):
            state.impressions[i] = copy.deepcopy(self.t.impressions[i])
        events = {imp.event_id for imp in self.t.impressions.values()}
        state.impression_event_ids = {imp.event_id for imp in state.impressions.values()}
        state.impression_event_ids |= imp_events & events
        for e in fb_events & set(self.t.feedback):
            f = self.t.feedback[e]
            state.feedback_event_ids.add(e)
            state.feedback_content[e] = (f.impression_id, f.experiment_key, f.kind, f.value,
                                         as_utc(f.occurred_at), f.item_id)
        pending = sorted((f for f in self.t.feedback.values()
                          if f.impression_id in arriving and f.status == "pending"),
                         key=lambda f: (f.occurred_at, f.event_id))
        for f in pending:
            state.pending.setdefault(f.impression_id, []).append(_pending(f))
        return state

    def load_experiments(self) -> dict[str, ExperimentInfo]:
        out = {}
        for e in self.db.experiments.by_key.values():
            arms = tuple(a.key for a in sorted(e.arms, key=lambda a: a.position))
            out[e.key] = ExperimentInfo(
                id=e.id, key=e.key, arms=frozenset(arms), reward_kind=e.reward_kind,
                reward_metric=e.reward_metric, window_s=float(e.attribution_window_s),
                status=e.status, ended_at=e.ended_at,
                guardrails=tuple(MetricRule.from_spec(g) for g in e.guardrails or ()),
                design=e.design or "ab", unit=e.unit, rankers=arms)
        return out

    def write_effects(self, group: str, fx: Effects) -> None:
        t, now = self.t, utcnow()
        rows = list(zip(fx.new_impressions, fx.new_impression_rows, strict=True))
        if any(imp.impression_id in t.impressions for imp, _ in rows):
            raise StoredRowsDiffer("impressions: a row was stored first")
        for imp, row in rows:
            t.impressions[imp.impression_id] = copy.deepcopy(imp)
            t.rows[imp.impression_id] = (row.unit_id, dict(row.context or {}))
        for i, imp in fx.impression_updates.items():
            if i in t.impressions:
                t.impressions[i] = copy.deepcopy(imp)
        if any(fb.event_id in t.feedback for fb, _, _ in fx.feedback_rows):
            raise StoredRowsDiffer("feedback: a row was stored first")
        for fb, part, status in fx.feedback_rows:
            t.feedback[fb.event_id] = FeedbackRow(
                fb.event_id, fb.impression_id, fb.experiment_key, fb.kind, fb.value,
                fb.occurred_at, now, part, status, None if fb.item_id is None else str(fb.item_id))
        self.mark(fx.feedback_status)
        for key, sums in fx.stats.items():
            _add(t.stats, key, sums)
        for gkey, sums in fx.guardrail_stats.items():
            _add(t.guardrail_stats, gkey, sums)
        t.units.update(fx.interleaving_units)
        for ckey, c in fx.interleaving_credits.items():
            t.credits[ckey] = t.credits.get(ckey, 0.0) + c
        for pkey, tallies in fx.interleaving_pairs.items():
            old = t.pairs.get(pkey, [0] * len(tallies))
            t.pairs[pkey] = [a + int(b) for a, b in zip(old, tallies, strict=True)]
        if fx.counters:
            self.upsert_counters(group, fx.counters.items(), now)

    def stale_pending(self, experiments: dict[str, ExperimentInfo], now: datetime,
                      grace_s: float) -> list[PendingFeedback]:
        if not experiments:
            return []
        shortest = min(e.window_s for e in experiments.values())
        cutoff = now - timedelta(seconds=shortest + grace_s)
        rows = sorted((f for f in self.t.feedback.values()
                       if f.status == "pending" and f.received_at < cutoff),
                      key=lambda f: f.received_at)[:1000]
        out = []
        for f in rows:
            exp = experiments.get(f.experiment_key)
            window = exp.window_s if exp is not None else shortest
            if as_utc(f.received_at) < now - timedelta(seconds=window + grace_s):
                out.append(_pending(f))
        return out

    def mark(self, statuses: Mapping[str, str]) -> None:
        for event_id, status in statuses.items():
            if event_id in self.t.feedback:
                self.t.feedback[event_id].status = status

    def mark_feedback(self, event_ids: Sequence[str], status: str) -> None:
        self.mark(dict.fromkeys(event_ids, status))

    def upsert_counters(self, group: str, items: Iterable[tuple[tuple[str, int], int]],
                        now: datetime | None = None) -> None:
        ts = as_utc(now or utcnow()).timestamp()
        bucket = datetime.fromtimestamp(ts - ts % DEAD_LETTER_BUCKET_S, tz=UTC)
        for (reason, part), n in items:
            self.t.counters[(group, reason, part)] += n
            if reason not in OK_OUTCOMES:
                self.t.dead_letters[(group, reason, bucket, part)] += n


def _pending(f: FeedbackRow) -> PendingFeedback:
    return PendingFeedback(f.event_id, f.impression_id, f.experiment_key, f.kind, f.value,
                           f.occurred_at, f.partition, f.item_id)


@dataclass
class MemoryMaintenance:
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    purged: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        return ["skipped: memory"]


class MemoryIngestStore:
    """:class:`armlab.services.ports_consumer.IngestStore` in memory (module doc);
    ``commits`` / ``rollbacks`` count the batches."""

    def is_transient(self, exc: BaseException) -> bool:
        return False  # memory does not fail over

    def is_data_error(self, exc: BaseException,
                      value_errors: tuple[type[BaseException], ...] = ()) -> bool:
        return False

    def __init__(self, db: MemoryUnitOfWork | None = None) -> None:
        self.db = db or MemoryUnitOfWork()
        self.tables = IngestTables()
        self.commits = self.rollbacks = 0

    @contextmanager
    def batch(self) -> Iterator[MemoryIngestBatch]:
        work = copy.deepcopy(self.tables)
        try:
            yield MemoryIngestBatch(self.db, work)
        except BaseException:
            self.rollbacks += 1
            raise
        self.tables = work
        self.commits += 1
        self.publish()

    def publish(self) -> None:
        """Rebuild the evidence the services read from the tables (module doc)."""
        ev, t = self.db.evidence, self.tables
        ev.sums, ev.guardrails, ev.tallies = {}, {}, {}
        for (exp_id, arm, _), sums in t.stats.items():
            _add(ev.sums.setdefault(exp_id, {}), arm, sums)
        for (exp_id, arm, metric, _), sums in t.guardrail_stats.items():
            _add(ev.guardrails.setdefault(exp_id, {}).setdefault(metric, {}), arm, sums)
        for (exp_id, a, b, _), tallies in t.pairs.items():
            old = ev.tallies.setdefault(exp_id, {}).get((a, b), (0, 0, 0, 0, 0))
            ev.tallies[exp_id][(a, b)] = tuple(  # type: ignore[assignment]
                x + y for x, y in zip(old, tallies, strict=True))
        ev.il_units, ev.il_credits = dict(t.units), dict(t.credits)
        ev.impressions = [
            LoggedImpression(imp.experiment_id, imp.arm_key, imp.served_at, imp.reward,
                             imp.propensity, t.rows[i][1], t.rows[i][0], imp.feedback_count,
                             copy.deepcopy(imp.metrics))
            for i, imp in t.impressions.items()]

    def load_offsets(self, group: str, tps: Iterable[TP]) -> dict[TP, int]:
        wanted = set(tps)
        return {(t, p): o for (g, t, p), o in self.tables.offsets.items()
                if g == group and (t, p) in wanted}

    def stored_offsets(self, group: str | None = None) -> list[tuple[str, str, int, int]]:
        return sorted((g, t, p, o) for (g, t, p), o in self.tables.offsets.items()
                      if group is None or g == group)

    def reset_offsets(self, group: str, topics: Sequence[str] | None,
                      to: Mapping[TP, int]) -> int:
        def gone(key: tuple[str, str, int]) -> bool:
            return key[0] == group and (not topics or key[1] in topics)
        dropped = {(t, p) for (g, t, p) in self.tables.offsets if gone((g, t, p))}
        self.tables.offsets = {k: v for k, v in self.tables.offsets.items() if not gone(k)}
        self.tables.lag = {k: v for k, v in self.tables.lag.items() if not gone(k)}
        for (topic, part), off in to.items():
            self.tables.offsets[(group, topic, part)] = int(off)
        return len(dropped | set(to))

    def report_lag(self, group: str, consumer: str,
                   positions: dict[TP, tuple[int, int | None]], now: datetime) -> None:
        for (topic, part), (pos, hw) in positions.items():
            self.tables.lag[(group, topic, part)] = (pos, hw, consumer[:255], now)

    def prune_dead_letters(self, before: datetime) -> int:
        old = [k for k in self.tables.dead_letters if k[2] < before]
        for k in old:
            del self.tables.dead_letters[k]
        return len(old)

    def prune_locks(self, before: datetime) -> int:
        return 0  # no locks in memory

    def maintain_partitions(self, retention_days: float | None) -> MemoryMaintenance:
        return MemoryMaintenance()

    def oldest_kept(self, now: datetime, retention_days: float | None) -> datetime | None:
        return None if not retention_days else now - timedelta(days=retention_days)

    def counters(self, group: str | None = None) -> dict[str, int]:
        """Outcome counts summed over partitions (as ``read_counters``)."""
        out: Counter[str] = Counter()
        for (g, reason, _), n in self.tables.counters.items():
            if group is None or g == group:
                out[reason] += n
        return dict(out)
