"""Database side of ingestion, one import for every statement the consumer runs.

The statements live in cohesive modules and are re-exported here under their old names:

* :mod:`~armlab.adapters.db.consumer_offsets_sql`: offsets with zombie fencing
  (``load_offsets``, ``stored_offsets``, ``reset_offsets``, ``advance_offsets``), the ingest
  locks (``lock_keys``, ``lock_ids``, ``prune_locks``) and the lag reports (``report_lag``);
* :mod:`~armlab.adapters.db.consumer_effects`: ``prefetch`` and ``write_effects`` (with
  ``upsert_stats``, ``upsert_guardrail_stats``);
* :mod:`~armlab.adapters.db.consumer_counters`: ``upsert_counters``, ``read_counters`` and the
  dead-letter buckets (``dead_letter_bucket``, ``read_dead_letters``, ``prune_dead_letters``);
* :mod:`~armlab.adapters.db.consumer_json`: the statement helper (one JSON parameter read
  back as a table, one round trip per statement; one implementation for PostgreSQL and
  SQLite).

This module itself reads the registry (``load_experiments``) and runs the pending-feedback
sweep (``stale_pending``, ``mark_feedback``).

Commit order inside ONE transaction (quix-streams style, KafkaConsumer Javadoc "Storing
Offsets Outside Kafka"): fence + advance offsets -> prefetch (rows locked on PostgreSQL) ->
handle -> write effects -> commit; see :mod:`~armlab.adapters.db.consumer_offsets_sql`.

The runner's port (:mod:`armlab.adapters.db.consumer_batches`) calls every statement as
``consumer_store.<name>``, so a test that replaces a name here (``write_effects``,
``report_lag``) replaces what the runner calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from armlab.adapters.db.consumer_counters import (
    dead_letter_bucket,
    prune_dead_letters,
    read_counters,
    read_dead_letters,
    upsert_counters,
)
from armlab.adapters.db.consumer_effects import (
    prefetch,
    upsert_guardrail_stats,
    upsert_stats,
    write_effects,
)
from armlab.adapters.db.consumer_offsets_sql import (
    TP,
    advance_offsets,
    load_offsets,
    lock_ids,
    lock_keys,
    prune_locks,
    report_lag,
    reset_offsets,
    stored_offsets,
)
from armlab.adapters.db.models import Arm, Experiment, Feedback
from armlab.core.clock import as_utc
from armlab.core.event_effects import ExperimentInfo, MetricRule, PendingFeedback
from armlab.core.fencing import Fenced, StoredRowsDiffer

# Fenced and StoredRowsDiffer (raised by these statements) are declared in armlab.core.fencing,
# so the runner recognises them without importing this module; ``consumer_store.Fenced`` still
# names them.
__all__ = [
    "TP", "Fenced", "StoredRowsDiffer",
    "load_experiments", "stale_pending", "mark_feedback",
    "load_offsets", "stored_offsets", "reset_offsets", "advance_offsets", "report_lag",
    "lock_keys", "lock_ids", "prune_locks",
    "prefetch", "write_effects", "upsert_stats", "upsert_guardrail_stats",
    "upsert_counters", "read_counters", "dead_letter_bucket", "read_dead_letters",
    "prune_dead_letters",
]


# -- registry ------------------------------------------------------------------------------
def load_experiments(session: Session) -> dict[str, ExperimentInfo]:
    """Every registered experiment with its arms (any status: stopped ones still get feedback)."""
    arms: dict[int, list[str]] = {}  # arm keys in arm order (the rankers' pair order)
    for exp_id, key in session.execute(select(Arm.experiment_id, Arm.key)
                                       .order_by(Arm.experiment_id, Arm.position, Arm.id)):
        arms.setdefault(exp_id, []).append(key)
    out: dict[str, ExperimentInfo] = {}
    rows = session.execute(
        select(
            Experiment.id,
            Experiment.key,
            Experiment.reward_kind,
            Experiment.reward_metric,
            Experiment.attribution_window_s,
            Experiment.status,
            Experiment.ended_at,
            Experiment.guardrails,
            Experiment.design,
            Experiment.unit,
        )
    )
    for exp_id, key, kind, metric, window, status, ended_at, guardrails, design, unit in rows:
        out[key] = ExperimentInfo(
            id=exp_id,
            key=key,
            arms=frozenset(arms.get(exp_id, ())),
            reward_kind=kind,
            reward_metric=metric,
            window_s=float(window),
            status=status,
            ended_at=ended_at,
            guardrails=tuple(MetricRule.from_spec(g) for g in guardrails or ()),
            design=design or "ab",
            unit=unit,
            rankers=tuple(arms.get(exp_id, ())),
        )
    return out



# -- the pending-feedback sweep ----------------------------------------------------------
def stale_pending(
    session: Session, experiments: dict[str, ExperimentInfo], now: datetime, grace_s: float,
    limit: int = 1000,
) -> list[PendingFeedback]:
    """Pending feedback whose impression has not arrived within its experiment's attribution
    window (plus ``grace_s``) of the feedback being stored (``received_at``; not occurred_at,
    so replaying old data does not expire feedback whose impression is seconds away). The
    rows are locked and skipped by a concurrent sweep (``FOR UPDATE SKIP LOCKED``)."""
    if not experiments:
        return []
    shortest = min(e.window_s for e in experiments.values())
    cutoff = now - timedelta(seconds=shortest + grace_s)
    q = (
        select(Feedback.event_id, Feedback.impression_id, Feedback.experiment_key,
               Feedback.kind, Feedback.value, Feedback.occurred_at, Feedback.partition,
               Feedback.received_at, Feedback.item_id)
        .where(Feedback.status == "pending", Feedback.received_at < cutoff)
        .order_by(Feedback.received_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    out: list[PendingFeedback] = []
    for row in session.execute(q):
        exp = experiments.get(row.experiment_key)
        window = exp.window_s if exp is not None else shortest
        if as_utc(row.received_at) < now - timedelta(seconds=window + grace_s):
            out.append(PendingFeedback(row.event_id, row.impression_id, row.experiment_key,
                                       row.kind, row.value, row.occurred_at, row.partition,
                                       row.item_id))
    return out


def mark_feedback(session: Session, event_ids: Sequence[str], status: str) -> None:
    """Set the ledger status of these feedback rows (the sweep: ``unknown``)."""
    if event_ids:
        session.execute(update(Feedback).where(Feedback.event_id.in_(list(event_ids)))
                        .values(status=status))
