"""The health panel's data: dead letters by reason per minute (last hour) and the consumers'
lag reports, written by the real ingest runner on the in-process bus (SQLite)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from armlab.adapters.db import consumer_store as consumer_store
from armlab.adapters.db.models import ConsumerLag, DeadLetterBucket
from armlab.adapters.kafka.memory import MemoryBus
from armlab.bootstrap import bootstrap
from armlab.client import MemoryEventProducer
from armlab.core.clock import utcnow
from armlab.core.event_effects import Effects
from armlab.core.specs import ExperimentSpec
from armlab.services import dashboard, registry
from armlab.settings import Settings


def _stack(url: str, **runner_kw: object) -> tuple[object, MemoryBus, object, object]:
    services = bootstrap(Settings(database_url=url, transport="memory"))
    bus = MemoryBus(default_partitions=2)
    s = services.settings
    prod = MemoryEventProducer(bus, topic_impressions=s.topic_impressions,
                               topic_feedback=s.topic_feedback)
    runner = bootstrap(s, engine=services.engine, bus=bus).ingest_runner(max_batch=50)
    for k, v in runner_kw.items():
        setattr(runner, k, v)
    spec = ExperimentSpec.model_validate({
        "key": "exp", "name": "Exp", "policy": {"name": "thompson"},
        "exploration_floor": 0.05,
        "arms": [{"key": k, "control": k == "a", "variant": {"kind": "popularity"}}
                 for k in ("a", "b")]})
    with services.uow() as uow:
        registry.create_experiment(uow, spec=spec, actor="t")
        registry.start_experiment(uow, key="exp", actor="t")
        uow.commit()
    return services, bus, prod, runner


def test_dead_letters_are_counted_per_minute_and_only_the_last_hour_is_shown(
        sqlite_url: str) -> None:
    services, bus, prod, runner = _stack(sqlite_url)
    s = services.settings  # type: ignore[attr-defined]
    for i in range(7):
        bus.produce(s.topic_impressions, b"not json %d" % i, key=b"k%d" % i)
    for i in range(3):
        prod.send_impression(experiment_key="nope", arm_key="a", unit_id=f"u{i}",
                             propensity=0.5)
    for i in range(4):
        prod.send_impression(experiment_key="exp", arm_key="a", unit_id=f"v{i}",
                             propensity=0.5)
    runner.drain()  # type: ignore[attr-defined]
    now = utcnow()
    with services.uow() as uow:  # type: ignore[attr-defined]
        dl = dashboard.dead_letters(uow, now)
        # Nothing older than this run exists yet: the last hour equals all time, OK outcomes
        # (the 4 good impressions) are not dead letters.
        assert dl["last_hour"] == dl["all_time"]
        assert sum(dl["last_hour"].values()) == 10 and len(dl["last_hour"]) == 2
        assert "impression" not in dl["last_hour"]
        # Buckets from two hours ago count for all time only; 2 days ago are pruned.
    reason = next(iter(dl["last_hour"]))
    with services.session_factory() as session, session.begin():  # type: ignore[attr-defined]
        for ago, n in ((timedelta(hours=2), 5), (timedelta(days=2), 9)):
            session.add(DeadLetterBucket(
                group_id="other", reason=reason, partition=0, count=n,
                bucket_start=consumer_store.dead_letter_bucket(now - ago)))
    with services.uow() as uow:  # type: ignore[attr-defined]
        assert dashboard.dead_letters(uow, now)["last_hour"] == dl["last_hour"]
        assert consumer_store.read_dead_letters(uow.session, now - timedelta(hours=3))[reason] == \
            dl["last_hour"][reason] + 5
    assert runner.prune_dead_letters(now) == 1  # type: ignore[attr-defined]
    with services.session_factory() as session:  # type: ignore[attr-defined]
        total = session.scalar(select(func.sum(DeadLetterBucket.count)))
        assert total == 10 + 5
    services.close()  # type: ignore[attr-defined]


def test_dead_letter_buckets_roll_back_with_the_batch(sqlite_url: str) -> None:
    services, _, _, _ = _stack(sqlite_url)
    fx = Effects()
    fx.counters[("malformed", 0)] += 2
    fx.counters[("impression", 0)] += 5
    with services.session_factory() as s:  # type: ignore[attr-defined]
        with s.begin():
            consumer_store.write_effects(s, "g", fx)
            rows = s.execute(select(DeadLetterBucket.reason, DeadLetterBucket.count)).all()
            assert rows == [("malformed", 2)]  # OK outcomes are not bucketed
            s.rollback()
        assert s.scalar(select(func.count()).select_from(DeadLetterBucket)) == 0
    services.close()  # type: ignore[attr-defined]


def test_lag_is_reported_per_partition_and_falls_to_zero(sqlite_url: str) -> None:
    services, _, prod, runner = _stack(sqlite_url, lag_report_interval_s=0.0)
    for i in range(400):
        prod.send_impression(experiment_key="exp", arm_key="ab"[i % 2], unit_id=f"u{i}",
                             propensity=0.5)
    runner.step()  # type: ignore[attr-defined]  # one batch of 50 out of 400
    now = utcnow()
    with services.uow() as uow:  # type: ignore[attr-defined]
        rows = dashboard.consumers(uow, now)
        imp = [r for r in rows if r["topic"] == "armlab.impressions"]
        assert imp and sum(r["next_offset"] for r in imp) == 50
        assert sum(r["lag"] for r in imp) == 350
        for r in imp:
            assert r["high_watermark"] - r["next_offset"] == r["lag"]
            assert not r["stale"] and r["consumer"]
    runner.drain()  # type: ignore[attr-defined]
    with services.uow() as uow:  # type: ignore[attr-defined]
        rows = dashboard.consumers(uow, utcnow())
        assert {r["lag"] for r in rows if r["topic"] == "armlab.impressions"} == {0}
        # A report older than LAG_STALE_S is flagged stale.
        later = utcnow() + timedelta(seconds=dashboard.LAG_STALE_S + 1)
        assert all(r["stale"] for r in dashboard.consumers(uow, later))
        assert uow.session.scalar(select(func.count()).select_from(ConsumerLag)) >= 2
    services.close()  # type: ignore[attr-defined]


def test_a_failing_lag_report_never_stops_the_consumer(sqlite_url: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    services, _, prod, runner = _stack(sqlite_url, lag_report_interval_s=0.0)

    def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("database gone")

    monkeypatch.setattr(consumer_store, "report_lag", broken)
    for i in range(120):
        prod.send_impression(experiment_key="exp", arm_key="a", unit_id=f"u{i}", propensity=0.5)
    out = runner.drain()  # type: ignore[attr-defined]
    assert out["impression"] == 120
    with services.session_factory() as session:  # type: ignore[attr-defined]
        assert session.scalar(select(func.count()).select_from(ConsumerLag)) == 0
    services.close()  # type: ignore[attr-defined]
