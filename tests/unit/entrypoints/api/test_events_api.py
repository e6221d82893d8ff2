"""POST /v1/events: validation (422 naming the field), production, 503 without Kafka."""

from __future__ import annotations

import time

import orjson
from fastapi.testclient import TestClient

from armlab.entrypoints.api.app import create_app
from armlab.entrypoints.api.routes_events import GRACE_S
from armlab.settings import KafkaSettings, Settings

EV = {"schema": "impression.v1", "event_id": "e1", "impression_id": "i1",
      "experiment_key": "x", "arm_key": "a", "unit_id": "u", "propensity": 0.5,
      "served_at": "2026-01-01T00:00:00Z"}
FB = {"schema": "feedback.v1", "event_id": "f1", "impression_id": "i1",
      "experiment_key": "x", "kind": "click", "value": 1.0,
      "occurred_at": "2026-01-01T00:00:01Z"}


def test_events_are_validated_and_produced(sqlite_url: str) -> None:
    s = Settings(database_url=sqlite_url, transport="memory",
                 auth_tokens="app:producer:s3cret,ro:reader:r34d")
    app = create_app(s)
    with TestClient(app) as c:
        ok = {"Authorization": "Bearer s3cret"}
        r = c.post("/v1/events", json=[EV, FB], headers=ok)
        assert r.status_code == 202, r.text
        assert r.json() == {"accepted": 2, "event_ids": ["e1", "f1"]}
        bad = c.post("/v1/events", json=[EV, {**FB, "kind": "clack"}], headers=ok)
        assert bad.status_code == 422 and bad.json()["field"] == "[1].kind"
        assert "unknown_kind" in bad.json()["detail"]
        one = c.post("/v1/events", json={**EV, "served_at": "2026-01-01T00:00:00"}, headers=ok)
        assert one.status_code == 422 and one.json()["field"] == "served_at"
        assert c.post("/v1/events", content=b"{", headers=ok).status_code == 422
        assert c.post("/v1/events", json=EV).status_code == 401
        assert c.post("/v1/events", json=EV,
                      headers={"Authorization": "Bearer r34d"}).status_code == 403
        bus = app.state.services.bus
        imps = bus.records(s.topic_impressions)
        fbs = bus.records(s.topic_feedback)
        # only the first (valid) request was produced, both keyed by impression_id
        assert [orjson.loads(r.value)["event_id"] for r in imps] == ["e1"]
        assert [r.key for r in imps + fbs] == [b"i1", b"i1"]


def test_503_when_kafka_is_unreachable(sqlite_url: str) -> None:
    s = Settings(database_url=sqlite_url, transport="kafka",
                 kafka=KafkaSettings(bootstrap="127.0.0.1:9"), auth_disabled=True,
                 events_publish_timeout_s=0.5)
    with TestClient(create_app(s)) as c:
        t0 = time.monotonic()
        r = c.post("/v1/events", json=EV)
        assert r.status_code == 503 and "Kafka" in r.json()["detail"]
        assert r.headers["Retry-After"].isdigit()
        assert time.monotonic() - t0 < 0.5 + GRACE_S + 0.5
        # the breaker is open: the next one does not try Kafka again
        t0 = time.monotonic()
        r = c.post("/v1/events", json=EV)
        assert r.status_code == 503 and "resumes in" in r.json()["detail"], r.text
        assert r.headers["Retry-After"].isdigit() and time.monotonic() - t0 < 0.3


def test_values_the_consumer_cannot_store_are_422(sqlite_url: str) -> None:
    """Each of these was accepted with 202 and then stopped the consumer: one shared rule."""
    s = Settings(database_url=sqlite_url, transport="memory", auth_tokens="app:producer:s3cret")
    app = create_app(s)
    raw = orjson.dumps(EV)
    with TestClient(app) as c:
        ok = {"Authorization": "Bearer s3cret", "Content-Type": "application/json"}
        for body, field, reason in (
            (orjson.dumps({**EV, "propensity": 1e-300}), "propensity", "bad_propensity"),
            (orjson.dumps({**EV, "propensity": 1e-160}), "propensity", "bad_propensity"),
            (raw.replace(b'"served_at"', b'"items":[123456789012345678901234567890],'
                                         b'"served_at"'), "items", "out_of_range"),
            (raw.replace(b'"served_at"', b'"context":{"n":123456789012345678901234567890},'
                                         b'"served_at"'), "context", "out_of_range"),
            (orjson.dumps({**EV, "context": {"s": "a\x00b"}}), "context", "bad_string"),
            (orjson.dumps({**EV, "unit_id": "u\x00"}), "unit_id", "bad_identifier"),
        ):
            r = c.post("/v1/events", content=body, headers=ok)
            assert r.status_code == 422, (body, r.text)
            assert r.json()["field"] == field and reason in r.json()["detail"], r.text
        nan = raw.replace(b'"served_at"', b'"context":{"x":NaN},"served_at"')
        r = c.post("/v1/events", content=nan, headers=ok)
        assert r.status_code == 422 and "NaN" in r.json()["detail"], r.text
        assert app.state.services.bus.records(s.topic_impressions) == []
        # a 64-bit integer keeps its exact value on the way through
        big = raw.replace(b'"served_at"', b'"context":{"n":9223372036854775807},"served_at"')
        assert c.post("/v1/events", content=big, headers=ok).status_code == 202
        (rec,) = app.state.services.bus.records(s.topic_impressions)
        assert orjson.loads(rec.value)["context"]["n"] == 2**63 - 1
