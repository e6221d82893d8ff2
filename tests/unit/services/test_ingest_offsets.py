"""Offsets that cannot silently skip data, and the clock-skew bound, on SQLite + the memory bus.

A stored offset beyond the end of its log (a topic created again, a migrated cluster, a new
in-process bus) used to make the consumer skip every record below it without a word: the
second `make demo` on one database ingested nothing. Now the consumer refuses to start with
a message naming the partition and both offsets, an operator resets the group with
``armlab offsets reset``, and the embedded bus forgets the offsets of an earlier bus.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from typing import Any

import orjson
import pytest

from armlab.adapters.db import queries
from armlab.adapters.db.models import Arm, Experiment
from armlab.adapters.kafka.memory import MemoryBus, MemoryDlq, MemorySource
from armlab.bootstrap import Services, bootstrap
from armlab.client import MemoryEventProducer
from armlab.core.clock import utcnow
from armlab.services.consumer import IngestRunner, OffsetsBeyondLog
from armlab.settings import Settings

ARMS = ("a", "b")


def _services(url: str) -> Services:
    return bootstrap(Settings(database_url=url, transport="memory"))


def _experiment(services: Services) -> int:
    with services.session_factory() as s, s.begin():
        e = Experiment(key="exp", name="exp", control_arm_key="a", salt="x", status="running",
                       reward_kind="binary", reward_metric="click", attribution_window_s=3600)
        e.arms = [Arm(key=a, is_control=i == 0, position=i) for i, a in enumerate(ARMS)]
        s.add(e)
        s.flush()
        return e.id


def _n(services: Services, exp_id: int) -> int:
    with services.session_factory() as s:
        return int(sum(v.n for v in queries.arm_totals(s, exp_id).values()))


def _send(bus: MemoryBus, n: int, prefix: str, **fields: Any) -> None:
    prod = MemoryEventProducer(bus)
    for i in range(n):
        prod.send_impression(experiment_key="exp", arm_key=ARMS[i % 2], unit_id=f"u{i}",
                             propensity=0.5, impression_id=f"{prefix}{i}", **fields)


def test_a_second_bus_on_the_same_database_counts_all_of_its_traffic(sqlite_url: str) -> None:
    """The second `make demo`: a new in-process bus, the offsets of the first still stored."""
    services = _services(sqlite_url)
    exp_id = _experiment(services)
    first = MemoryBus()
    _send(first, 50, "one-")
    bootstrap(services.settings, engine=services.engine, bus=first).ingest_runner().drain()
    assert _n(services, exp_id) == 50
    second = MemoryBus()
    _send(second, 30, "two-")
    counts = bootstrap(services.settings, engine=services.engine,
                       bus=second).ingest_runner().drain()
    assert counts["impression"] == 30
    assert _n(services, exp_id) == 80
    services.close()


def test_offsets_beyond_the_log_stop_the_consumer_with_the_reset_command(
    sqlite_url: str,
) -> None:
    services = _services(sqlite_url)
    exp_id = _experiment(services)
    first = MemoryBus()
    _send(first, 50, "one-")
    MemoryEventProducer(first).send_feedback(impression_id="one-1", experiment_key="exp",
                                             kind="click")
    bootstrap(services.settings, engine=services.engine, bus=first).ingest_runner().drain()
    s = services.settings
    second = MemoryBus()
    _send(second, 30, "two-")
    # a consumer that does not forget them (Kafka: the topic was deleted and created again)
    runner = IngestRunner(services.consumer_store,
                          MemorySource(second, [s.topic_impressions, s.topic_feedback]),
                          dlq=MemoryDlq(second, s.topic_dlq), group=s.consumer_group)
    with pytest.raises(OffsetsBeyondLog) as info:
        runner.drain()
    msg = str(info.value)
    assert f"{s.topic_impressions}[0] stored 50, log ends at 30" in msg
    assert f"armlab offsets reset --group {s.consumer_group}" in msg
    assert "\n" not in msg
    assert _n(services, exp_id) == 50  # nothing of the new log was skipped or counted

    # the operator resets the group: everything of the new log is read and counted
    env = dict(os.environ, ARMLAB_DATABASE_URL=sqlite_url, ARMLAB_TRANSPORT="memory")
    out = subprocess.run([sys.executable, "-m", "armlab", "offsets", "reset", "--group",
                          s.consumer_group, "--topic", s.topic_impressions],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "1 stored offset(s)" in out.stdout
    shown = subprocess.run([sys.executable, "-m", "armlab", "offsets", "show"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert s.topic_impressions not in shown.stdout and s.topic_feedback in shown.stdout
    # the feedback topic's offset is still beyond its (empty) log: refused again, naming it
    runner = IngestRunner(services.consumer_store,
                          MemorySource(second, [s.topic_impressions, s.topic_feedback]),
                          dlq=MemoryDlq(second, s.topic_dlq), group=s.consumer_group)
    with pytest.raises(OffsetsBeyondLog, match=rf"{s.topic_feedback}\[0\] stored 1, log ends "
                       "at 0"):
        runner.drain()
    out = subprocess.run([sys.executable, "-m", "armlab", "offsets", "reset", "--group",
                          s.consumer_group], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    runner = IngestRunner(services.consumer_store,
                          MemorySource(second, [s.topic_impressions, s.topic_feedback]),
                          dlq=MemoryDlq(second, s.topic_dlq), group=s.consumer_group)
    assert runner.drain()["impression"] == 30
    assert _n(services, exp_id) == 80
    services.close()


def test_offsets_reset_cli_errors_are_one_line(sqlite_url: str) -> None:
    env = dict(os.environ, ARMLAB_DATABASE_URL=sqlite_url)
    out = subprocess.run([sys.executable, "-m", "armlab", "offsets", "reset", "--group", "g",
                          "--to", "sideways"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0
    assert "--to must be earliest or latest" in out.stderr


@pytest.mark.parametrize(("ahead", "dead"), [
    (timedelta(seconds=-5), False),
    (timedelta(seconds=60), False),         # inside the default skew (300 s)
    (timedelta(days=3), True),
    (None, True),                            # the year 2199
])
def test_events_from_the_future_are_dead_lettered(sqlite_url: str, ahead: timedelta | None,
                                                  dead: bool) -> None:
    from datetime import UTC, datetime

    services = _services(sqlite_url)
    exp_id = _experiment(services)
    bus = MemoryBus()
    at = datetime(2199, 1, 1, tzinfo=UTC) if ahead is None else utcnow() + ahead
    prod = MemoryEventProducer(bus)
    prod.send_impression(experiment_key="exp", arm_key="a", unit_id="u", propensity=0.5,
                         impression_id="i1", served_at=at)
    # a feedback stamped in the future, on an impression of now
    prod.send_impression(experiment_key="exp", arm_key="b", unit_id="u", propensity=0.5,
                         impression_id="i2", served_at=utcnow() - timedelta(minutes=10))
    prod.send_feedback(impression_id="i2", experiment_key="exp", kind="click",
                       occurred_at=at)
    counts = bootstrap(services.settings, engine=services.engine, bus=bus).ingest_runner() \
        .drain()
    dlq = [orjson.loads(r.value) for r in bus.records(services.settings.topic_dlq)]
    if dead:
        assert counts["from_future"] == 2
        assert {d["reason"] for d in dlq} == {"from_future"}
        assert all("allowed skew" in d["detail"] for d in dlq)
        assert _n(services, exp_id) == 1
    else:
        assert "from_future" not in counts and not dlq
        assert _n(services, exp_id) == 2
    services.close()
