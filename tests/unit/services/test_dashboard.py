"""The dashboard's read model and the consumer's rollups, on SQLite through the real
consumer (memory bus) and allocator."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from armlab.adapters.db import consumer_store as consumer_store
from armlab.adapters.db import queries, rollups
from armlab.adapters.db.models import ROLLUP_WIDTHS_S, ArmRollup
from armlab.adapters.kafka.memory import MemoryBus
from armlab.bootstrap import Services, bootstrap
from armlab.client import MemoryEventProducer
from armlab.core.clock import utcnow
from armlab.core.event_effects import Effects
from armlab.core.evidence import FIELDS, ArmSums
from armlab.core.specs import ExperimentSpec
from armlab.services import dashboard, registry
from armlab.services.allocator import run_allocation
from armlab.settings import Settings

ARMS = ("a", "b", "c")


def _setup(url: str) -> tuple[Services, MemoryEventProducer, object]:
    services = bootstrap(Settings(database_url=url, transport="memory"))
    bus = MemoryBus(default_partitions=2)
    s = services.settings
    prod = MemoryEventProducer(bus, topic_impressions=s.topic_impressions,
                               topic_feedback=s.topic_feedback)
    runner = bootstrap(s, engine=services.engine, bus=bus).ingest_runner(max_batch=97)
    spec = ExperimentSpec.model_validate({
        "key": "exp", "name": "Exp", "policy": {"name": "thompson"},
        "exploration_floor": 0.05, "attribution_window_s": 60,
        "arms": [{"key": k, "control": k == "a", "variant": {"kind": "popularity"}}
                 for k in ARMS]})
    with services.uow() as uow:
        registry.create_experiment(uow, spec=spec, actor="t")
        registry.start_experiment(uow, key="exp", actor="t")
        uow.commit()
    return services, prod, runner


def _traffic(prod: MemoryEventProducer, n: int, at: datetime, seed: int = 0) -> None:
    for i in range(n):
        arm = ARMS[(i + seed) % 3]
        imp = prod.send_impression(experiment_key="exp", arm_key=arm, unit_id=f"u{seed}-{i}",
                                   propensity=1 / 3, served_at=at)
        if (i * 7 + seed) % (3 + ARMS.index(arm)) == 0:
            prod.send_feedback(impression_id=imp.impression_id, experiment_key="exp",
                               kind="click", occurred_at=at + timedelta(seconds=2))


def test_bucket_alignment_and_width_choice() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert rollups.bucket_start(at, 60) == datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    assert rollups.bucket_start(at, 3600) == datetime(2026, 1, 2, 3, tzinfo=UTC)
    assert rollups.choose_width(at, at + timedelta(hours=2), 400) == 60
    assert rollups.choose_width(at, at + timedelta(days=30), 400) == 3600


def test_rollups_add_up_to_arm_stats_for_every_width(sqlite_url: str) -> None:
    services, prod, runner = _setup(sqlite_url)
    _traffic(prod, 600, utcnow() - timedelta(minutes=5))
    runner.drain()  # type: ignore[attr-defined]
    with services.uow() as uow:
        exp_id = registry.get_experiment(uow, key="exp").id
    with services.session_factory() as s:
        totals = queries.arm_sums(s, exp_id)
        for width in ROLLUP_WIDTHS_S:
            cols = [func.sum(getattr(ArmRollup, f)) for f in FIELDS]
            rows = s.execute(select(ArmRollup.arm_key, *cols)
                             .where(ArmRollup.width_s == width).group_by(ArmRollup.arm_key))
            got = {arm: ArmSums(*(float(v) for v in vals)) for arm, *vals in rows}
            assert set(got) == set(ARMS)
            for arm in ARMS:
                for f in FIELDS:
                    assert getattr(got[arm], f) == pytest.approx(getattr(totals[arm], f)), (
                        width, arm, f)
        # The cumulative series ends at arm_stats.
        _, series = rollups.series(s, exp_id)
        last = {arm: (n, r) for _, arm, n, r in series}
        assert {a: last[a][0] for a in ARMS} == {a: totals[a].n for a in ARMS}
        for a in ARMS:
            assert last[a][1] == pytest.approx(totals[a].reward_sum)
    services.close()


def test_rollups_roll_back_with_the_batch(sqlite_url: str) -> None:
    services, _, _ = _setup(sqlite_url)
    fx = Effects()
    fx.stat(1, "a", 0).add_impression(0.5)
    with services.session_factory() as s:
        with s.begin():
            consumer_store.write_effects(s, "g", fx)
            assert s.scalar(select(func.count()).select_from(ArmRollup)) == len(ROLLUP_WIDTHS_S)
            s.rollback()
        assert s.scalar(select(func.count()).select_from(ArmRollup)) == 0
    services.close()


def test_chart_data_from_rollups_matches_the_raw_scan_at_the_end(sqlite_url: str) -> None:
    services, prod, runner = _setup(sqlite_url)
    t0 = utcnow() - timedelta(minutes=20)
    for i in range(3):
        _traffic(prod, 300, t0 + timedelta(minutes=5 * i), seed=i)
        runner.drain()  # type: ignore[attr-defined]
        run_allocation(services.allocation_store, now=t0 + timedelta(minutes=5 * i, seconds=61))
    with services.uow() as uow:
        roll = dashboard.chart_data(uow, "exp")
        raw = dashboard.chart_data(uow, "exp", source="raw")
        view = dashboard.experiment_view(uow, "exp")
        raw_view = dashboard.experiment_view(uow, "exp", source="raw")
    assert roll["snapshots"] == 3 and len(roll["weights"]["x"]) == 3
    assert len(roll["prob_best"]["x"]) == 3
    for arm in ARMS:
        assert roll["mean"]["series"][arm][-1] == pytest.approx(raw["mean"]["series"][arm][-1])
        assert sum(roll["weights"]["series"][k][-1] for k in ARMS) == pytest.approx(1.0)
    assert set(roll["cs"]) == {"b", "c"} and roll["cs"]["b"]["x"]
    by = {r["key"]: r for r in view["leaderboard"]}
    raw_by = {r["key"]: r for r in raw_view["leaderboard"]}
    for arm in ARMS:
        assert by[arm]["impressions"] == raw_by[arm]["impressions"] == 300
        assert by[arm]["mean"] == pytest.approx(raw_by[arm]["mean"])
        assert by[arm]["p_best"] is not None
    assert view["total_impressions"] == 900
    assert [a["action"] for a in view["audit"]] == ["start", "create"]  # newest first
    services.close()


def test_snapshot_sampling_keeps_the_series_short(sqlite_url: str) -> None:
    services, prod, runner = _setup(sqlite_url)
    _traffic(prod, 60, utcnow() - timedelta(hours=1))
    runner.drain()  # type: ignore[attr-defined]
    t0 = utcnow() - timedelta(hours=1)
    for i in range(30):
        run_allocation(services.allocation_store, now=t0 + timedelta(minutes=i))
    with services.uow() as uow:
        data = dashboard.chart_data(uow, "exp", max_points=10)
    assert data["snapshots"] == 30
    assert 5 <= len(data["weights"]["x"]) <= 11
    assert data["weights"]["x"][-1] == pytest.approx((t0 + timedelta(minutes=29)).timestamp())
    services.close()


def test_list_rows_filter_search_and_health(sqlite_url: str) -> None:
    services, _, _ = _setup(sqlite_url)
    spec = ExperimentSpec.model_validate({
        "key": "other", "name": "Something Else",
        "arms": [{"key": k, "control": k == "a", "variant": {"kind": "popularity"}}
                 for k in ARMS]})
    with services.uow() as uow:
        registry.create_experiment(uow, spec=spec, actor="t")
        uow.commit()
    with services.uow() as uow:
        rows = dashboard.list_rows(uow)
        assert [r["key"] for r in rows] == ["other", "exp"]
        assert [r["key"] for r in dashboard.list_rows(uow, status="draft")] == ["other"]
        assert [r["key"] for r in dashboard.list_rows(uow, query="ELSE")] == ["other"]
        running = dashboard.list_rows(uow, query="exp")[0]
    assert running["health"] == "warn" and "no allocator snapshot yet" in running["health_reasons"]
    assert running["decision"] == "no evaluation yet"
    assert rows[0]["health"] == "idle" and rows[0]["decision"] == "not started"
    services.close()
