"""The experiment page's health panel renders the consumers' lag reports (lag, high watermark,
age, stale) and the dead letters of the last hour next to the all-time counts."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient

from armlab.adapters.db import consumer_store as consumer_store
from armlab.adapters.db.models import ConsumerLag, ConsumerOffset, DeadLetterBucket, IngestCounter
from armlab.core.clock import utcnow
from armlab.entrypoints.api.app import create_app
from armlab.settings import Settings
from tests.unit.entrypoints.api.test_experiments_api import ADMIN, TOKENS, make_spec
from tests.unit.entrypoints.api.test_ui import sign_in


def test_health_panel_shows_lag_per_partition_and_dead_letters_of_the_last_hour(
        sqlite_url: str) -> None:
    app = create_app(Settings(database_url=sqlite_url, auth_tokens=TOKENS, transport="memory",
                              ui_secret="unit-test-secret"))
    with TestClient(app) as client:
        assert client.post("/v1/experiments", json=make_spec(), headers=ADMIN).status_code == 201
        now = utcnow()
        with app.state.services.session_factory() as s, s.begin():
            for part, (off, hw, age) in enumerate(((40, 100, 3), (70, 70, 600))):
                s.add(ConsumerOffset(group_id="g", topic="imp", partition=part,
                                     next_offset=off, updated_at=now))
                s.add(ConsumerLag(group_id="g", topic="imp", partition=part, position=off,
                                  high_watermark=hw, lag=hw - off, consumer="host:1",
                                  reported_at=now - timedelta(seconds=age)))
            s.add(IngestCounter(group_id="g", reason="malformed", partition=0, count=12))
            s.add(DeadLetterBucket(group_id="g", reason="malformed", partition=0, count=3,
                                   bucket_start=consumer_store.dead_letter_bucket(now)))
            s.add(DeadLetterBucket(group_id="g", reason="malformed", partition=0, count=9,
                                   bucket_start=consumer_store.dead_letter_bucket(
                                       now - timedelta(hours=3))))
        sign_in(client, "reader-secret")
        page = client.get("/ui/experiments/home-recs/live").text
    rows = page.split('class="lag-row"')[1:]
    assert len(rows) == 2
    assert 'data-lag="60"' in rows[0] and "stale" not in rows[0] and "host:1" in rows[0]
    assert 'data-lag="0"' in rows[1] and "stale" in rows[1] and "10 min ago" in rows[1]
    dead = page.split('id="dead-letters"')[1]
    last_hour, all_time = dead.split("all time")
    assert "<code>malformed</code> <b class=\"warn\">3</b>" in last_hour
    assert "<code>malformed</code> 12" in all_time
