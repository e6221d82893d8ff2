"""The consumer's batch statements: prefetching the rows a batch touches (locked on
PostgreSQL) and writing its effects, one statement per table (the rows as one JSON parameter:
:mod:`armlab.adapters.db.consumer_json`), with the per-arm and guardrail sums upserted (and
the interleaving tables: :mod:`armlab.adapters.db.consumer_interleaving`).

Re-exported by :mod:`armlab.adapters.db.consumer_store`, whose names callers use (the runner's
port looks each one up there, so a test that replaces ``consumer_store.write_effects``
replaces the one the runner calls).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from armlab.adapters.db import rollups
from armlab.adapters.db.consumer_counters import upsert_counters
from armlab.adapters.db.consumer_interleaving import write_interleaving
from armlab.adapters.db.consumer_json import JsonParam, insert_rows
from armlab.adapters.db.models import Feedback, Impression
from armlab.core.clock import as_utc, utcnow
from armlab.core.event_effects import BatchState, Effects, ImpressionState, PendingFeedback
from armlab.core.evidence import COUNTS, FIELDS, ArmSums

# -- prefetch ------------------------------------------------------------------------------
_IMPRESSION_STATE = ("impression_id, event_id, experiment_id, arm_key, propensity, served_at,"
                     " reward, feedback_count, partition, guardrail_values, interleaving")
_PENDING_COLS = ("event_id, impression_id, experiment_key, kind, value, occurred_at, partition,"
                 " item_id")


def prefetch(
    session: Session,
    imp_ids: set[str],
    imp_events: set[str],
    fb_events: set[str],
    arriving: set[str],
) -> BatchState:
    """Load the rows a batch references. Impressions and pending feedback are locked
    (``FOR UPDATE`` on PostgreSQL) so a concurrent consumer cannot interleave a reward
    update."""
    j = JsonParam(session)
    state = BatchState()
    ts = Impression.__table__.c.served_at.type
    if imp_ids:
        rows = session.execute(
            text(f"SELECT {_IMPRESSION_STATE} FROM impressions WHERE "
                 f"{j.in_ids('impression_id', 'ids')}{j.for_update}").columns(
                served_at=ts, guardrail_values=Impression.__table__.c.guardrail_values.type,
                interleaving=Impression.__table__.c.interleaving.type),
            {"ids": j.encode(sorted(imp_ids))},
        )
        for row in rows:
            imp = ImpressionState(*row[:9])
            if row[9] is not None:
                imp.metrics = {str(k): [float(v[0]), float(v[1])] for k, v in row[9].items()}
            imp.interleaving = row[10]
            state.impressions[row[0]] = imp
            state.impression_event_ids.add(row[1])
    missing = imp_events - state.impression_event_ids
    if missing:
        state.impression_event_ids.update(r[0] for r in session.execute(
            text(f"SELECT event_id FROM impressions WHERE {j.in_ids('event_id', 'ids')}"),
            {"ids": j.encode(sorted(missing))},
        ))
    if fb_events:
        for row in session.execute(
            text(f"SELECT event_id, impression_id, experiment_key, kind, value, occurred_at, "
                 f"item_id FROM feedback WHERE {j.in_ids('event_id', 'ids')}")
            .columns(occurred_at=Feedback.__table__.c.occurred_at.type),
            {"ids": j.encode(sorted(fb_events))},
        ):
            state.feedback_event_ids.add(row[0])
            state.feedback_content[row[0]] = (row[1], row[2], row[3], float(row[4]),
                                              as_utc(row[5]), row[6])
    if arriving:
        rows = session.execute(
            text(f"SELECT {_PENDING_COLS} FROM feedback WHERE "
                 f"{j.in_ids('impression_id', 'ids')} AND status = 'pending' "
                 f"ORDER BY occurred_at, event_id"
                 f"{j.for_update}").columns(occurred_at=Feedback.__table__.c.occurred_at.type),
            {"ids": j.encode(sorted(arriving))},
        )
        for row in rows:
            state.pending.setdefault(row[1], []).append(PendingFeedback(*row))
    return state


# -- effects -------------------------------------------------------------------------------
_IMPRESSION_ROW = [("impression_id", "text"), ("event_id", "text"), ("experiment_id", "int"),
                   ("arm_key", "text"), ("unit_id", "text"), ("propensity", "float"),
                   ("served_at", "ts"), ("partition", "int"), ("reward", "float"),
                   ("feedback_count", "int"), ("items", "json"), ("context", "json"),
                   ("guardrail_values", "json"), ("interleaving", "json")]
_IMPRESSION_UPDATE = [("impression_id", "text"), ("reward", "float"),
                      ("feedback_count", "int"), ("guardrail_values", "json"),
                      ("interleaving", "json")]
_FEEDBACK_ROW = [("event_id", "text"), ("impression_id", "text"), ("experiment_key", "text"),
                 ("kind", "text"), ("value", "float"), ("occurred_at", "ts"),
                 ("received_at", "ts"), ("partition", "int"), ("status", "text"),
                 ("item_id", "text")]
_FEEDBACK_STATUS = [("event_id", "text"), ("status", "text")]
_STATS_ROW = [("experiment_id", "int"), ("arm_key", "text"), ("partition", "int"),
              *((name, "int" if name in COUNTS else "float") for name in FIELDS),
              ("updated_at", "ts")]
_GUARDRAIL_ROW = [("experiment_id", "int"), ("arm_key", "text"), ("metric", "text"),
                  ("partition", "int"),
                  *((name, "int" if name in COUNTS else "float") for name in FIELDS),
                  ("updated_at", "ts")]


def write_effects(session: Session, group: str, fx: Effects) -> None:
    """Write one batch's effects, one statement per table.

    Aggregates are pre-summed per key and upserted once per key, in sorted key order (no
    "cannot affect row a second time", no deadlocks between consumers)."""
    now = utcnow()
    j = JsonParam(session)
    if fx.new_impressions:
        insert_rows(session, j, "impressions", _IMPRESSION_ROW, [
            {"impression_id": imp.impression_id, "event_id": imp.event_id,
             "experiment_id": imp.experiment_id, "arm_key": imp.arm_key,
             "unit_id": ev.unit_id, "propensity": imp.propensity, "served_at": imp.served_at,
             "partition": imp.partition, "reward": imp.reward,
             "feedback_count": imp.feedback_count, "items": ev.items, "context": ev.context,
             "guardrail_values": imp.metrics, "interleaving": imp.interleaving}
            for imp, ev in zip(fx.new_impressions, fx.new_impression_rows, strict=True)
        ], "ON CONFLICT DO NOTHING", all_stored="impression_id")
    if fx.impression_updates:
        # the id list as well as the join: the planner then probes each partition's index
        # instead of hashing a scan of every partition
        updates = sorted(fx.impression_updates.values(), key=lambda i: i.impression_id)
        session.execute(
            text(f"UPDATE impressions SET reward = r.reward, feedback_count = r.feedback_count,"
                 f" guardrail_values = r.guardrail_values, interleaving = r.interleaving"
                 f" FROM {j.rows('rows', _IMPRESSION_UPDATE)}"
                 f" WHERE impressions.impression_id = r.impression_id"
                 f" AND {j.in_ids('impressions.impression_id', 'ids')}"),
            {"rows": j.encode_rows([
                {"impression_id": i.impression_id, "reward": i.reward,
                 "feedback_count": i.feedback_count, "guardrail_values": i.metrics,
                 "interleaving": i.interleaving}
                for i in updates
            ]), "ids": j.encode([i.impression_id for i in updates])},
        )
    if fx.feedback_rows:
        insert_rows(session, j, "feedback", _FEEDBACK_ROW, [
            {"event_id": ev.event_id, "impression_id": ev.impression_id,
             "experiment_key": ev.experiment_key, "kind": ev.kind, "value": ev.value,
             "occurred_at": ev.occurred_at, "received_at": now, "partition": part,
             "status": status, "item_id": None if ev.item_id is None else str(ev.item_id)}
            for ev, part, status in fx.feedback_rows
        ], "ON CONFLICT DO NOTHING", all_stored="event_id")
    if fx.feedback_status:
        session.execute(
            text(f"UPDATE feedback SET status = r.status"
                 f" FROM {j.rows('rows', _FEEDBACK_STATUS)} WHERE feedback.event_id = r.event_id"
                 f" AND {j.in_ids('feedback.event_id', 'ids')}"),
            {"rows": j.encode_rows([{"event_id": k, "status": v}
                                    for k, v in sorted(fx.feedback_status.items())]),
             "ids": j.encode(sorted(fx.feedback_status))},
        )
    if fx.stats:
        upsert_stats(session, fx.stats, now)
        rollups.add_batch(session, fx.stats, now)  # the dashboard's time buckets
    if fx.guardrail_stats:
        upsert_guardrail_stats(session, fx.guardrail_stats, now)
    write_interleaving(session, fx)
    if fx.counters:
        upsert_counters(session, group, fx.counters.items(), now)


def upsert_stats(
    session: Session, stats: dict[tuple[int, str, int], ArmSums], now: datetime
) -> None:
    """Add each (experiment, arm, partition) shard's sums to its ``arm_stats`` row."""
    _upsert_sums(session, "arm_stats", _STATS_ROW, ("experiment_id", "arm_key", "partition"),
                 stats, now)


def upsert_guardrail_stats(
    session: Session, stats: dict[tuple[int, str, str, int], ArmSums], now: datetime
) -> None:
    """Add each (experiment, arm, metric, partition) shard's sums to its ``guardrail_stats``
    row."""
    _upsert_sums(session, "guardrail_stats", _GUARDRAIL_ROW,
                 ("experiment_id", "arm_key", "metric", "partition"), stats, now)


def _upsert_sums(session: Session, table: str, spec: list[tuple[str, str]],
                 keys: tuple[str, ...], stats: Mapping[tuple[Any, ...], ArmSums],
                 now: datetime) -> None:
    """One upsert adding each shard's ``ArmSums`` to its row of ``table`` (key columns
    ``keys``, in the order of the stats' keys)."""
    rows = []
    for key, sums in sorted(stats.items()):
        row: dict[str, Any] = {**dict(zip(keys, key, strict=True)), "updated_at": now}
        for name in FIELDS:
            value = getattr(sums, name)
            row[name] = int(value) if name in COUNTS else value
        rows.append(row)
    added = ", ".join(f"{f} = {table}.{f} + excluded.{f}" for f in FIELDS)
    insert_rows(session, JsonParam(session), table, spec, rows,
                f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET "
                f"{added}, updated_at = excluded.updated_at")
