"""The embedded path end to end: MemoryEventProducer -> MemoryBus -> IngestRunner -> SQLite."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from armlab.adapters.db import consumer_store as consumer_store
from armlab.adapters.db import queries
from armlab.adapters.db.models import Arm, Experiment
from armlab.adapters.kafka.memory import MemoryBus
from armlab.bootstrap import Services, bootstrap
from armlab.client import MemoryEventProducer
from armlab.settings import Settings
from armlab.tools.synth import expected_stats, synthetic_events

ARMS = ("a", "b", "c")


def _services(url: str) -> Services:
    return bootstrap(Settings(database_url=url, transport="memory"))


def build_runner(services: Services, *, bus: MemoryBus, max_batch: int | None = None) -> Any:
    """A memory-bus consumer on ``bus`` sharing ``services``' database."""
    return bootstrap(services.settings, engine=services.engine, bus=bus).ingest_runner(
        max_batch=max_batch)


GUARDRAILS = [{"key": "dwell_any", "source": {"feedback": "dwell"}, "aggregate": "any"},
              {"key": "dwell_sum", "source": {"feedback": "dwell"}, "aggregate": "sum"}]


def _experiment(services: Services, key: str = "exp", kind: str = "binary",
                metric: str = "click", window: int = 3600,
                guardrails: list[dict[str, Any]] | None = None) -> int:
    with services.session_factory() as s, s.begin():
        e = Experiment(key=key, name=key, control_arm_key=ARMS[0], salt=key, status="running",
                       reward_kind=kind, reward_metric=metric, attribution_window_s=window,
                       guardrails=guardrails or [])
        e.arms = [Arm(key=a, is_control=i == 0, position=i) for i, a in enumerate(ARMS)]
        s.add(e)
        s.flush()
        return e.id


def _arm_stats(services: Services, exp_id: int) -> dict[str, dict[str, float]]:
    with services.session_factory() as s:
        return {arm: v.as_dict() for (_, arm), v in queries.arm_totals(s, exp_id).items()}


@pytest.mark.parametrize("kind", ["binary", "continuous"])
def test_memory_bus_end_to_end_exact(sqlite_url: str, kind: str) -> None:
    services = _services(sqlite_url)
    exp_id = _experiment(services, kind=kind, metric="click", guardrails=GUARDRAILS)
    bus = MemoryBus(default_partitions=3)
    s = services.settings
    events = list(synthetic_events(3000, experiment_key="exp", arms=ARMS, seed=1,
                                   kinds=("click", "dwell"), late_fraction=0.1))
    # Shuffle within a window so some feedback precedes its impression (pending path),
    # and produce 10% of the events twice (dedupe).
    rng = random.Random(2)
    order = list(range(len(events)))
    for i in range(0, len(order) - 5, 5):
        chunk = order[i:i + 5]
        rng.shuffle(chunk)
        order[i:i + 5] = chunk
    sent = []
    for i in order:
        ev = events[i]
        topic = s.topic_impressions if ev.kind == "impression" else s.topic_feedback
        bus.produce(topic, ev.value, ev.key)
        sent.append(ev.fields)
        if rng.random() < 0.1:
            bus.produce(topic, ev.value, ev.key)
    bus.produce(s.topic_impressions, b"\x00not json", b"x")
    runner = build_runner(services, bus=bus, max_batch=250)
    counts = runner.drain()
    assert counts["not_json"] == 1
    assert counts["duplicate"] > 0 and counts["feedback_pending"] > 0
    got = _arm_stats(services, exp_id)
    assert got == expected_stats(sent, reward_kind=kind, metric="click", window_s=3600)
    # the guardrail metrics, summed in the same transactions, match their own reference
    with services.session_factory() as session:
        guard = queries.guardrail_sums(session, exp_id)
    assert {a: v.as_dict() for a, v in guard["dwell_any"].items()} == expected_stats(
        sent, reward_kind="binary", metric="dwell", window_s=3600)
    assert {a: v.as_dict() for a, v in guard["dwell_sum"].items()} == expected_stats(
        sent, reward_kind="continuous", metric="dwell", window_s=3600)
    dlq = [orjson.loads(r.value) for r in bus.records(s.topic_dlq)]
    assert {d["reason"] for d in dlq} == {"not_json", "late"}
    assert sum(d["reason"] == "late" for d in dlq) == counts["late"]
    # A second drain (a restarted consumer) reads from the stored offsets: nothing new.
    again = build_runner(services, bus=bus, max_batch=250).drain()
    assert again == {}
    assert _arm_stats(services, exp_id) == got
    services.close()


def test_sdk_producer_and_late_registration(sqlite_url: str) -> None:
    """Events for an experiment registered after the consumer started are picked up; events
    for an unknown one go to the DLQ; the consumer never stops."""
    services = _services(sqlite_url)
    bus = MemoryBus()
    s = services.settings
    prod = MemoryEventProducer(bus, topic_impressions=s.topic_impressions,
                               topic_feedback=s.topic_feedback)
    runner = build_runner(services, bus=bus)
    prod.send_impression(experiment_key="later", arm_key="a", unit_id="u", propensity=0.5)
    runner.drain()
    exp_id = _experiment(services, key="later")
    imp = prod.send_impression(experiment_key="later", arm_key="b", unit_id="u",
                               propensity=0.25)
    prod.send_feedback(impression_id=imp.impression_id, experiment_key="later", kind="click")
    counts = runner.drain()
    assert counts["unknown_experiment"] == 1 and counts["impression"] == 1
    assert _arm_stats(services, exp_id)["b"]["ipw_sum"] == 4.0
    with services.session_factory() as sess:
        assert consumer_store.read_counters(sess)["unknown_experiment"] == 1
    services.close()


def test_fencing_rejects_a_zombie(sqlite_url: str) -> None:
    """A consumer whose view of the offsets is stale cannot commit over the new owner."""
    services = _services(sqlite_url)
    exp_id = _experiment(services)
    bus = MemoryBus()
    s = services.settings
    prod = MemoryEventProducer(bus, topic_impressions=s.topic_impressions,
                               topic_feedback=s.topic_feedback)
    for i in range(10):
        prod.send_impression(experiment_key="exp", arm_key="a", unit_id=f"u{i}",
                             propensity=0.5)
    zombie = build_runner(services, bus=bus, max_batch=4)
    owner = build_runner(services, bus=bus, max_batch=4)
    zombie.step()                      # zombie commits offsets 0..3
    owner.drain()                      # owner (assigned now) commits 4..9
    prod.send_impression(experiment_key="exp", arm_key="a", unit_id="late", propensity=0.5)
    # The zombie still believes the next offset is 4: its batch (4..7) must be fenced.
    zombie.step()
    assert _arm_stats(services, exp_id)["a"]["n"] == 10
    owner.drain()
    zombie.drain()                     # after resync it only sees what is really new
    assert _arm_stats(services, exp_id)["a"]["n"] == 11
    services.close()


def test_pending_feedback_is_swept_after_the_window_and_conflicts_are_dead_lettered(
    sqlite_url: str,
) -> None:
    """Feedback whose impression never arrives is dead-lettered (no_impression) and marked
    unknown after the attribution window; a duplicate event_id with different content is
    dead-lettered as conflicting_duplicate; impressions for a draft are not counted."""
    from datetime import timedelta

    from sqlalchemy import select

    from armlab.adapters.db.models import Feedback
    from armlab.core.clock import utcnow

    services = _services(sqlite_url)
    exp_id = _experiment(services, window=60)
    with services.session_factory() as s, s.begin():
        d = Experiment(key="draft", name="d", control_arm_key="a", salt="d", status="draft",
                       reward_kind="binary", reward_metric="click")
        d.arms = [Arm(key=a, is_control=i == 0, position=i) for i, a in enumerate(ARMS)]
        s.add(d)
    bus = MemoryBus(default_partitions=1)
    prod = MemoryEventProducer(bus)
    imp = prod.send_impression(experiment_key="exp", arm_key="a", unit_id="u", propensity=0.5,
                               event_id="ie1", impression_id="i1")
    prod.send_impression(experiment_key="exp", arm_key="b", unit_id="u", propensity=0.5,
                         event_id="ie1", impression_id="i1", served_at=imp.served_at)  # conflict
    prod.send_impression(experiment_key="exp", arm_key="a", unit_id="u", propensity=0.5,
                         event_id="ie1", impression_id="i1", served_at=imp.served_at)  # redelivery
    prod.send_impression(experiment_key="draft", arm_key="a", unit_id="u", propensity=0.5)
    prod.send_feedback(impression_id="i1", experiment_key="exp", kind="click", event_id="f1")
    prod.send_feedback(impression_id="i1", experiment_key="exp", kind="click", value=0.0,
                       event_id="f1")  # conflict
    prod.send_feedback(impression_id="never", experiment_key="exp", kind="click",
                       event_id="orphan")
    runner = build_runner(services, bus=bus)
    runner.drain()
    c = consumer_store.read_counters(services.session_factory(), runner.group)
    assert c["conflicting_duplicate"] == 2 and c["duplicate"] == 1
    assert c["experiment_not_running"] == 1 and c["impression"] == 1
    assert _arm_stats(services, exp_id)["a"]["n"] == 1
    assert runner.sweep_pending(utcnow()) == 0  # still inside the window
    assert runner.sweep_pending(utcnow() + timedelta(seconds=60 + 61)) == 1
    assert runner.sweep_pending(utcnow() + timedelta(seconds=999)) == 0  # swept once
    with services.session_factory() as s:
        assert s.scalar(select(Feedback.status).where(Feedback.event_id == "orphan")) == \
            "unknown"
    dlq = [orjson.loads(r.value) for r in bus.records(services.settings.topic_dlq)]
    assert sorted(d["reason"] for d in dlq) == [
        "conflicting_duplicate", "conflicting_duplicate", "experiment_not_running",
        "no_impression"]
    orphan = next(d for d in dlq if d["reason"] == "no_impression")
    assert "orphan" in __import__("base64").b64decode(orphan["raw"]).decode()
    assert consumer_store.read_counters(services.session_factory(), runner.group)[
        "no_impression"] == 1


def test_a_systematic_write_failure_stops_the_consumer_after_a_few_dead_letters(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bisection isolates poison records; a failure that hits every record (a bug) must stop
    the consumer after MAX_UNPROCESSABLE_PER_POLL dead letters, not drain the topic into the
    DLQ."""
    from armlab.services import consumer as ingest_service

    services = _services(sqlite_url)
    _experiment(services)
    bus = MemoryBus(default_partitions=1)
    prod = MemoryEventProducer(bus)
    for i in range(200):
        prod.send_impression(experiment_key="exp", arm_key="a", unit_id=f"u{i}", propensity=0.5)
    real = consumer_store.write_effects

    def broken(session: Any, group: str, fx: Any) -> None:
        if fx.new_impressions:
            raise TypeError("a bug in the writer")
        real(session, group, fx)

    monkeypatch.setattr(consumer_store, "write_effects", broken)
    runner = build_runner(services, bus=bus)
    with pytest.raises(TypeError, match="a bug"):
        runner.drain()
    dlq = bus.records(services.settings.topic_dlq)
    assert len(dlq) == ingest_service.MAX_UNPROCESSABLE_PER_POLL
    assert {orjson.loads(r.value)["reason"] for r in dlq} == {"unprocessable"}
