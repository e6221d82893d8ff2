"""Time partitions and retention on PostgreSQL: the 0003 migration converts tables holding
data (and back), maintenance creates weeks ahead and drops weeks past the retention without
touching the aggregated statistics, is safe with several processes, and the consumer's dedup
and late-feedback join stay exact across a partition boundary."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from armlab.adapters.db import migrate, partitions, queries
from armlab.adapters.db.engine import make_engine, make_session_factory
from armlab.adapters.kafka.memory import MemoryBus
from armlab.bootstrap import bootstrap
from armlab.client import MemoryEventProducer
from armlab.settings import Settings

NOW = datetime.now(UTC)
WEEK = partitions.week_start(NOW)


def _exec(url: str, sql: str, params: dict | None = None) -> list[tuple]:
    engine = make_engine(url, pool_size=1)
    try:
        with engine.begin() as conn:
            res = conn.execute(sa.text(sql), params or {})
            return [tuple(r) for r in res] if res.returns_rows else []
    finally:
        engine.dispose()


def _seed_experiment(url: str, key: str = "exp", window_s: int = 3600) -> int:
    rows = _exec(url, "INSERT INTO experiments (key, name, description, status, unit, "
                 "reward_kind, reward_metric, policy_name, policy_params, exploration_floor, "
                 "burn_in, attribution_window_s, control_arm_key, sequential, salt, version, "
                 "created_at, updated_at) VALUES (:k, :k, '', 'running', 'request', 'binary', "
                 "'click', 'thompson', '{}', 0, 0, :w, 'a', '{}', 's', 1, now(), now()) "
                 "RETURNING id", {"k": key, "w": window_s})
    exp_id = int(rows[0][0])
    for i, arm in enumerate(("a", "b")):
        _exec(url, "INSERT INTO arms (experiment_id, key, is_control, position, variant) "
              "VALUES (:e, :a, :c, :p, '{}')", {"e": exp_id, "a": arm, "c": i == 0, "p": i})
    return exp_id


def _imp(url: str, exp_id: int, imp_id: str, served_at: datetime) -> None:
    _exec(url, "INSERT INTO impressions (impression_id, event_id, experiment_id, arm_key, "
          "unit_id, propensity, served_at, partition, reward, feedback_count, items, context) "
          "VALUES (:i, :e, :x, 'a', 'u', 0.5, :t, 0, 1.0, 1, '[]', '{}')",
          {"i": imp_id, "e": f"e-{imp_id}", "x": exp_id, "t": served_at})


def _fb(url: str, event_id: str, occurred_at: datetime) -> None:
    _exec(url, "INSERT INTO feedback (event_id, impression_id, experiment_key, kind, value, "
          "occurred_at, received_at, partition, status) VALUES (:e, 'i', 'exp', 'click', 1, "
          ":t, now(), 0, 'applied')", {"e": event_id, "t": occurred_at})


def _where(url: str, table: str) -> dict[str, str]:
    """Row key -> the partition holding it."""
    key = "impression_id" if table == "impressions" else "event_id"
    return dict(_exec(url, f"SELECT {key}, tableoid::regclass::text FROM {table}"))


def _relkind(url: str, table: str) -> str:
    return str(_exec(url, "SELECT relkind FROM pg_class WHERE relname = :t", {"t": table})[0][0])


def _stats_tables(url: str) -> dict[str, int]:
    return {t: int(_exec(url, f"SELECT count(*) FROM {t}")[0][0])
            for t in ("arm_stats", "arm_rollups", "allocation_snapshots", "decisions",
                      "audit_log", "experiments", "arms")}


def _seed_stats(url: str, exp_id: int) -> None:
    _exec(url, "INSERT INTO arm_stats VALUES (:e, 'a', 0, 5, 2, 2, 10, 4, 8, 20, 2, now())",
          {"e": exp_id})
    _exec(url, "INSERT INTO arm_rollups VALUES (:e, 60, '2020-01-06', 'a', 0, 5, 2, 2, 10, 4, "
          "8, 20, 2)", {"e": exp_id})
    _exec(url, "INSERT INTO allocation_snapshots (experiment_id, created_at, policy_name, "
          "policy_version, weights, stats) VALUES (:e, '2020-01-06', 'thompson', '1', '{}', "
          "'{}')", {"e": exp_id})
    _exec(url, "INSERT INTO decisions (experiment_id, at, arm_key, decision, n_control, "
          "n_treatment, evidence) VALUES (:e, '2020-01-06', 'b', 'continue', 1, 1, '{}')",
          {"e": exp_id})
    _exec(url, "INSERT INTO audit_log (experiment_id, at, actor, action, reason, before, "
          "after, evidence) VALUES (:e, '2020-01-06', 'x', 'start', '', '{}', '{}', '{}')",
          {"e": exp_id})


def test_upgrade_moves_existing_rows_into_partitions_and_downgrade_moves_them_back(
    pg_url: str,
) -> None:
    migrate.downgrade(pg_url, "0002_arm_rollups")
    assert _relkind(pg_url, "impressions") == "r"
    exp_id = _seed_experiment(pg_url)
    times = {"old": datetime(2024, 3, 5, 12, tzinfo=UTC), "mid": NOW - timedelta(days=20),
             "now": NOW}
    for name, t in times.items():
        _imp(pg_url, exp_id, name, t)
        _fb(pg_url, f"f-{name}", t)
    migrate.upgrade(pg_url, "head")
    assert _relkind(pg_url, "impressions") == _relkind(pg_url, "feedback") == "p"
    for table in partitions.PARTITIONED:
        where = _where(pg_url, table)
        assert len(where) == 3
        # every row sits in its own week's partition, none in DEFAULT
        for name, t in times.items():
            key = name if table == "impressions" else f"f-{name}"
            assert where[key] == partitions.partition_name(table, partitions.week_start(t))
        have = {n for (n,) in _exec(pg_url, "SELECT c.relname FROM pg_inherits i JOIN "
                                    "pg_class c ON c.oid = i.inhrelid WHERE "
                                    "i.inhparent = CAST(:t AS regclass)", {"t": table})}
        for k in range(-1, partitions.AHEAD_WEEKS + 1):
            assert partitions.partition_name(table, WEEK + k * partitions.PERIOD) in have
        assert partitions.default_name(table) in have
    # the widened keys: an exact copy is still refused by the database
    with pytest.raises(IntegrityError):
        _imp(pg_url, exp_id, "now", times["now"])
    migrate.downgrade(pg_url, "0002_arm_rollups")
    assert _relkind(pg_url, "impressions") == _relkind(pg_url, "feedback") == "r"
    assert set(_where(pg_url, "impressions").values()) == {"impressions"}
    assert len(_where(pg_url, "feedback")) == 3
    # the old keys are back: impression_id alone is unique again
    with pytest.raises(IntegrityError):
        _imp(pg_url, exp_id, "now", times["now"] + timedelta(seconds=1))
    migrate.upgrade(pg_url, "head")
    assert len(_where(pg_url, "impressions")) == 3


def _maintain(url: str, **kw) -> partitions.MaintenanceReport:
    engine = make_engine(url, pool_size=1)
    try:
        with make_session_factory(engine)() as s, s.begin():
            return partitions.maintain(s, **kw)
    finally:
        engine.dispose()


def test_maintenance_creates_ahead_drops_past_retention_and_keeps_the_statistics(
    pg_url: str,
) -> None:
    exp_id = _seed_experiment(pg_url)
    _seed_stats(pg_url, exp_id)
    old_week = WEEK - 30 * partitions.PERIOD
    engine = make_engine(pg_url, pool_size=1)
    with make_session_factory(engine)() as s, s.begin():
        for table in partitions.PARTITIONED:
            partitions.create_week(s, table, old_week, partitions.existing(s, table))
    engine.dispose()
    _imp(pg_url, exp_id, "old", old_week + timedelta(days=1))
    _fb(pg_url, "f-old", old_week + timedelta(days=1))
    _imp(pg_url, exp_id, "ancient", datetime(2020, 1, 1, tzinfo=UTC))  # DEFAULT
    _imp(pg_url, exp_id, "recent", NOW - timedelta(days=3))
    _imp(pg_url, exp_id, "future", WEEK + 5 * partitions.PERIOD + timedelta(hours=1))
    assert _where(pg_url, "impressions")["future"] == "impressions_default"
    stats = _stats_tables(pg_url)
    before = _where(pg_url, "impressions")

    dry = _maintain(pg_url, retention_days=90, dry_run=True)
    assert partitions.partition_name("impressions", old_week) in dry.dropped
    assert dry.purged["impressions_default"] == 1
    assert _where(pg_url, "impressions") == before  # the dry run changed nothing

    report = _maintain(pg_url, retention_days=90)
    assert sorted(report.dropped) == sorted([partitions.partition_name("impressions", old_week),
                                             partitions.partition_name("feedback", old_week)])
    assert report.purged["impressions_default"] == 1
    assert report.created == []  # the migration already made last week to two weeks ahead
    after = _where(pg_url, "impressions")
    assert set(after) == {"recent", "future"}
    assert "f-old" not in _where(pg_url, "feedback")
    assert _stats_tables(pg_url) == stats  # retention never touches the aggregates
    assert _maintain(pg_url, retention_days=90).lines() == ["nothing to do"]  # idempotent

    # four weeks later: the weeks ahead are created, and DEFAULT's row moves to its week
    later = _maintain(pg_url, retention_days=90, now=NOW + 4 * partitions.PERIOD)
    target = partitions.partition_name("impressions", WEEK + 5 * partitions.PERIOD)
    assert target in later.created and later.moved == {target: 1}
    assert _where(pg_url, "impressions")["future"] == target
    # retention 0 keeps everything
    assert _maintain(pg_url, retention_days=0, now=NOW + 400 * partitions.PERIOD).dropped == []


def test_maintenance_is_safe_with_several_processes(pg_url: str) -> None:
    engine = make_engine(pg_url, pool_size=2)
    sf = make_session_factory(engine)
    with sf() as holder, holder.begin():
        first = partitions.maintain(holder, retention_days=90, now=NOW + 10 * partitions.PERIOD)
        assert first.created
        # a second process finds the advisory lock held and skips instead of waiting
        with sf() as other, other.begin():
            assert partitions.maintain(other, retention_days=90).skipped is not None
    engine.dispose()
    errors: list[BaseException] = []
    reports: list[partitions.MaintenanceReport] = []
    later = NOW + 20 * partitions.PERIOD

    def run() -> None:
        try:
            reports.append(_maintain(pg_url, retention_days=90, now=later))
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    created = [n for r in reports for n in r.created]
    assert len(created) == len(set(created))  # no week created twice
    assert _maintain(pg_url, retention_days=90, now=later).lines() == ["nothing to do"]


def test_dedup_and_late_feedback_join_across_a_partition_boundary(pg_url: str) -> None:
    exp_id = _seed_experiment(pg_url, window_s=600)
    services = bootstrap(Settings(database_url=pg_url, transport="memory"))
    assert services.settings.retention_days == 90
    bus = MemoryBus(default_partitions=2)
    producer = MemoryEventProducer(bus)
    boundary = WEEK - timedelta(seconds=2)  # last Sunday 23:59:58, previous week's partition
    imp = producer.send_impression(experiment_key="exp", arm_key="b", unit_id="u1",
                                   propensity=0.5, served_at=boundary)
    fb = producer.send_feedback(impression_id=imp.impression_id, experiment_key="exp",
                                kind="click", value=1.0,
                                occurred_at=boundary + timedelta(seconds=5))
    # feedback first for a second impression: pending in this week, joined when it lands
    imp2_id = "late-imp"
    fb2 = producer.send_feedback(impression_id=imp2_id, experiment_key="exp", kind="click",
                                 value=1.0, occurred_at=boundary + timedelta(seconds=9))
    runner = bootstrap(services.settings, engine=services.engine, bus=bus).ingest_runner()
    counts = runner.drain()
    assert counts.get("feedback_pending") == 1
    imp2 = producer.send_impression(experiment_key="exp", arm_key="b", unit_id="u2",
                                    propensity=0.5, served_at=boundary + timedelta(seconds=1),
                                    impression_id=imp2_id)
    # exact redeliveries of everything, and an event older than the retention
    for ev in (imp, fb, fb2, imp2):
        producer.send(ev)
    producer.send_impression(experiment_key="exp", arm_key="a", unit_id="u3", propensity=0.5,
                             served_at=NOW - timedelta(days=91))
    counts = runner.drain()
    assert counts.get("duplicate") == 4  # imp, fb, fb2, and imp2 (second copy)
    assert counts.get("expired") == 1
    fb_where = _where(pg_url, "feedback")
    assert fb_where[fb.event_id] == partitions.partition_name("feedback", WEEK)
    assert _where(pg_url, "impressions")[imp.impression_id] == partitions.partition_name(
        "impressions", WEEK - partitions.PERIOD)
    statuses = dict(_exec(pg_url, "SELECT event_id, status FROM feedback"))
    assert statuses == {fb.event_id: "applied", fb2.event_id: "applied"}
    with services.session_factory() as s:
        sums = queries.arm_sums(s, exp_id)
    assert sums["b"].n == 2 and sums["b"].reward_sum == 2.0 and sums["b"].feedback_n == 2
    assert "a" not in sums
    rewards = dict(_exec(pg_url, "SELECT impression_id, reward FROM impressions"))
    assert rewards == {imp.impression_id: 1.0, imp2_id: 1.0}
    services.close()
