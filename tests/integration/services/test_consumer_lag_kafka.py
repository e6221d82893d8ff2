"""Consumer lag per partition on a real Kafka broker and PostgreSQL: the ingest runner records
(next offset, high watermark, lag) for the dashboard, the lag shows while it is behind and falls
to 0 once it has caught up; dead letters land in the per-minute buckets of the last hour."""

from __future__ import annotations

import time
import uuid

from kafka import KafkaProducer

from armlab.bootstrap import bootstrap
from armlab.core.clock import utcnow
from armlab.core.specs import ExperimentSpec
from armlab.services import dashboard, registry
from armlab.settings import KafkaSettings, Settings
from armlab.tools.synth import synthetic_events

N = 1000


def test_lag_appears_then_falls_to_zero_on_kafka_and_postgres(
        pg_url: str, kafka_bootstrap: str, kafka_topic_factory) -> None:  # type: ignore[no-untyped-def]
    imp, fb, dlq = (kafka_topic_factory(2, "lag-imp"), kafka_topic_factory(2, "lag-fb"),
                    kafka_topic_factory(1, "lag-dlq"))
    settings = Settings(database_url=pg_url, transport="kafka",
                        kafka=KafkaSettings(bootstrap=kafka_bootstrap),
                        topic_impressions=imp, topic_feedback=fb, topic_dlq=dlq,
                        consumer_group=f"lag-{uuid.uuid4().hex[:6]}", lag_report_interval_s=0)
    services = bootstrap(settings)
    spec = ExperimentSpec.model_validate({
        "key": "lagexp", "name": "lag", "policy": {"name": "thompson"},
        "exploration_floor": 0.05,
        "arms": [{"key": k, "control": k == "a", "variant": {"kind": "popularity"}}
                 for k in ("a", "b")]})
    with services.uow() as uow:
        registry.create_experiment(uow, spec=spec, actor="t")
        registry.start_experiment(uow, key="lagexp", actor="t")
        uow.commit()
    producer = KafkaProducer(bootstrap_servers=[kafka_bootstrap], acks="all", linger_ms=20)
    events = [e for e in synthetic_events(N, experiment_key="lagexp", arms=("a", "b"), seed=3,
                                          feedback_ratio=0.0) if e.kind == "impression"]
    for ev in events:
        producer.send(imp, key=ev.key, value=ev.value)
    for i in range(6):  # dead letters: not JSON
        producer.send(imp, key=b"junk%d" % i, value=b"\xff not json")
    producer.flush()
    producer.close()
    total = len(events) + 6

    runner = services.ingest_runner(max_batch=100)

    def imp_rows() -> list[dict[str, object]]:
        with services.uow() as uow:
            return [r for r in dashboard.consumers(uow, utcnow()) if r["topic"] == imp]

    deadline = time.monotonic() + 60
    behind = None
    try:
        while time.monotonic() < deadline:
            runner.step()
            rows = imp_rows()
            if behind is None and rows and any((r["lag"] or 0) > 0 for r in rows):
                behind = rows
            if sum(int(r["next_offset"]) for r in rows) >= total:  # type: ignore[call-overload]
                break
        runner.observe_lag(force=True)
        done = imp_rows()
    finally:
        runner.close()
    assert behind is not None, "no positive lag was ever recorded while catching up"
    for r in behind:
        if r["high_watermark"] is not None:
            assert r["lag"] == int(r["high_watermark"]) - int(r["next_offset"])  # type: ignore[call-overload]
    assert sum(int(r["next_offset"]) for r in done) == total  # type: ignore[call-overload]
    assert len(done) == 2
    for r in done:
        assert r["lag"] == 0 and r["high_watermark"] == r["next_offset"], r
        assert not r["stale"] and r["consumer"]
    with services.uow() as uow:
        dl = dashboard.dead_letters(uow, utcnow())
    assert sum(dl["last_hour"].values()) == 6 == sum(dl["all_time"].values())
    services.close()
