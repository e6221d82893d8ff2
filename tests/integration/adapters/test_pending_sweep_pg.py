"""The pending-feedback sweep's query on PostgreSQL (FOR UPDATE SKIP LOCKED, per-experiment
windows, received_at not occurred_at)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from armlab.adapters.db import consumer_store as consumer_store
from armlab.adapters.db.engine import make_engine, make_session_factory
from armlab.adapters.db.models import Feedback
from armlab.core.event_effects import ExperimentInfo

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def test_stale_pending_on_postgres(pg_url: str) -> None:
    engine = make_engine(pg_url, pool_size=2)
    sf = make_session_factory(engine)
    exps = {"short": ExperimentInfo(1, "short", frozenset({"a"}), "binary", "click", 60.0),
            "long": ExperimentInfo(2, "long", frozenset({"a"}), "binary", "click", 3600.0)}
    rows = [("old-short", "short", 200, "pending"), ("new-short", "short", 30, "pending"),
            ("old-long", "long", 200, "pending"), ("older-long", "long", 7200, "pending"),
            ("applied", "short", 9999, "applied")]
    with sf() as s, s.begin():
        for event_id, key, age_s, status in rows:
            s.add(Feedback(event_id=event_id, impression_id=f"i-{event_id}", experiment_key=key,
                           kind="click", value=1.0, occurred_at=datetime(2020, 1, 1, tzinfo=UTC),
                           received_at=NOW - timedelta(seconds=age_s), partition=0,
                           status=status))
    with sf() as s, s.begin():
        stale = consumer_store.stale_pending(s, exps, NOW, grace_s=60.0)
        assert {p.event_id for p in stale} == {"old-short", "older-long"}
        # a concurrent sweep skips the rows this one holds
        with sf() as other, other.begin():
            assert consumer_store.stale_pending(other, exps, NOW, grace_s=60.0) == []
        consumer_store.mark_feedback(s, [p.event_id for p in stale], "unknown")
    with sf() as s:
        assert consumer_store.stale_pending(s, exps, NOW, grace_s=60.0) == []
        statuses = dict(s.query(Feedback.event_id, Feedback.status).all())
    assert statuses["old-short"] == statuses["older-long"] == "unknown"
    assert statuses["new-short"] == statuses["old-long"] == "pending"
    engine.dispose()
