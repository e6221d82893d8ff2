"""The read-side use cases (dashboard, report, off-policy evaluation, catalogs) on the
in-memory unit of work: the view-model shaping tested without a database, on declared reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from armlab.core.catalog import CatalogView
from armlab.core.readings import ChartSeries, ConsumerPosition, LatestDecision
from armlab.core.specs import ExperimentSpec
from armlab.entrypoints.report import build_report
from armlab.errors import NotFound, StatsError
from armlab.services import dashboard, ope, registry
from armlab.services.catalog import (
    CatalogCache,
    get_catalog,
    list_catalogs,
    load_catalog,
    store_catalog,
)
from armlab.services.report import collect_by_key
from tests.fakes import FakeUnitOfWork

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ARMS = ("a", "b", "c")


def _experiment(uow: FakeUnitOfWork, key: str, *, start: bool = True, **extra: Any) -> Any:
    spec = ExperimentSpec.model_validate({
        "key": key, "name": key.title(), "exploration_floor": 0.05,
        "arms": [{"key": k, "control": k == "a", "variant": {"kind": "popularity"}}
                 for k in ARMS], **extra})
    exp = registry.create_experiment(uow, spec=spec, actor="t")
    exp.created_at = NOW - timedelta(hours=2)
    if start:
        registry.start_experiment(uow, key=key, actor="t", reason="go")
        exp.started_at = NOW - timedelta(hours=1)
    return exp


# --- catalogs ---------------------------------------------------------------------------------


def test_catalog_versions_items_and_listing() -> None:
    uow = FakeUnitOfWork()
    items = [{"id": "2", "title": "Emma"}, {"id": "1", "title": "Alien", "genre": "scifi",
                                            "popularity": "3"}]
    first = store_catalog(lambda: uow, name="films", items=items)
    assert (first["version"], first["item_count"], first["changed"]) == (1, 2, True)
    again = load_catalog(uow, name="films", items=list(reversed(items)))
    assert (again["version"], again["changed"]) == (1, False)
    changed = load_catalog(uow, name="films", items=items[:1])
    assert (changed["version"], changed["item_count"], changed["changed"]) == (2, 1, True)
    load_catalog(uow, name="books", items=[{"id": "b"}])
    view = get_catalog(uow, name="films")
    assert view.version == 2 and [it["id"] for it in view.items] == ["2"]
    assert [(c["name"], c["version"], c["changed"]) for c in list_catalogs(uow)] == [
        ("books", 1, None), ("films", 2, None)]
    with pytest.raises(NotFound, match="armlab catalog load"):
        get_catalog(uow, name="nope")


def test_catalog_cache_rereads_the_version_after_its_ttl_only() -> None:
    uow = FakeUnitOfWork()
    load_catalog(uow, name="films", items=[{"id": "1", "title": "Alien", "genre": "scifi"}])
    cache = CatalogCache(lambda: uow, ttl_s=0.0)
    view = cache.get("films")
    assert isinstance(view, CatalogView) and view.items[0]["genre"] == "scifi"
    assert cache.get("films") is view  # same version: the items are not reloaded
    load_catalog(uow, name="films", items=[{"id": "9", "title": "Heat"}])
    assert cache.get("films").ids == ["9"]
    assert uow.catalogs.version_reads == 3
    held = CatalogCache(lambda: uow, ttl_s=3600.0)
    held.get("films")
    held.get("films")
    assert uow.catalogs.version_reads == 4  # within the TTL: no read at all
    with pytest.raises(NotFound):
        cache.get("nope")


# --- off-policy evaluation --------------------------------------------------------------------


def test_ope_leaves_out_immature_impressions_and_reads_strata() -> None:
    uow = FakeUnitOfWork()
    exp = _experiment(uow, "e", attribution_window_s=60)
    now = datetime.now(UTC)
    rows = [("a" if i % 2 else "b", float(i % 3 == 0), 0.5, now - timedelta(minutes=10, seconds=i),
             {"position": str(i % 2)}) for i in range(40)]
    rows += [("a", 1.0, 0.5, now - timedelta(seconds=5), None)] * 3  # inside the window
    uow.impression_log.rows[exp.id] = rows
    out = ope.evaluate_experiment(uow, "e", "b")
    assert out["n_logged"] == 43 and out["n_immature"] == 3 and out["target"] == {"b": 1.0}
    for est in [*out["estimates"].values(), out["logged"]]:
        assert 0.0 <= est["ci_low"] <= est["ci_high"] <= 1.0  # binary: clipped to [0, 1]
    data = ope.load_logged_by_key(lambda: uow, "e", attribution_window_s=60,
                                  stratum_field="position", matured_only=False)
    assert len(data.actions) == 43 and data.strata is not None
    assert set(data.strata) == {"0", "1", ""}
    uow.impression_log.rows[exp.id] = rows[-3:]
    with pytest.raises(StatsError, match="3 logged, 3 still inside"):
        ope.evaluate_experiment(uow, "e", "b")


# --- dashboard --------------------------------------------------------------------------------


def test_list_rows_combine_traffic_decisions_and_health() -> None:
    uow = FakeUnitOfWork()
    draft = _experiment(uow, "draft-one", start=False)
    ok = _experiment(uow, "fine")
    srm = _experiment(uow, "skewed")
    reads = uow.dashboard
    reads.traffic = {ok.id: 1200, srm.id: 90}
    reads.decisions = {
        ok.id: {"b": LatestDecision("treatment_better"), "c": LatestDecision("continue")},
        srm.id: {"b": LatestDecision("continue", srm_mismatch=True)}}
    reads.snapshot_times = {ok.id: NOW - timedelta(seconds=4), srm.id: NOW - timedelta(hours=1)}
    rows = {r["key"]: r for r in dashboard.list_rows(uow, allocator_interval_s=5.0, now=NOW)}
    assert list(rows) == ["skewed", "fine", "draft-one"]  # newest first
    assert rows["fine"]["impressions"] == 1200 and rows["fine"]["health"] == "ok"
    assert rows["fine"]["decision"] == "b: treatment better"
    assert rows["fine"]["age_s"] == 3600.0
    assert rows["skewed"]["health"] == "bad" and rows["skewed"]["decision"] == "continue"
    assert rows["skewed"]["health_reasons"] == ["sample-ratio mismatch",
                                                "last allocator run 3600 s ago"]
    assert rows["draft-one"] == rows["draft-one"] | {
        "impressions": 0, "decision": "not started", "health": "idle"}
    assert [r["key"] for r in dashboard.list_rows(uow, query="SKEW", now=NOW)] == ["skewed"]
    assert draft.status == "draft"


def test_health_panel_consumers_dead_letters_and_audit() -> None:
    uow = FakeUnitOfWork()
    _experiment(uow, "exp")
    reads = uow.dashboard
    reads.positions = [
        ConsumerPosition("g", "imp", 1, 10, NOW, high_watermark=12, lag=2, consumer="c1",
                         reported_at=NOW - timedelta(seconds=5)),
        ConsumerPosition("g", "imp", 0, 7, None)]
    reads.dead_letters = [(NOW - timedelta(minutes=5), "malformed", 3),
                          (NOW - timedelta(hours=2), "malformed", 4),
                          (NOW - timedelta(minutes=1), "unknown_experiment", 1)]
    reads.counters = {"malformed": 7, "unknown_experiment": 1, "impression": 500}
    view = dashboard.experiment_view(uow, "exp", now=NOW)
    health = view["health"]
    assert [(c["partition"], c["lag"], c["stale"], c["report_age_s"])
            for c in health["consumers"]] == [(0, None, True, None), (1, 2, False, 5.0)]
    assert health["dead_letters"] == {
        "last_hour": {"malformed": 3, "unknown_experiment": 1},
        "all_time": {"malformed": 7, "unknown_experiment": 1}}
    assert [a["action"] for a in view["audit"]] == ["start", "create"]  # newest first
    assert [r["key"] for r in view["leaderboard"]] == list(ARMS)


def test_chart_data_shapes_the_declared_series() -> None:
    uow = FakeUnitOfWork()
    exp = _experiment(uow, "exp")
    uow.dashboard.charts[exp.id] = ChartSeries(
        snapshots=[(100.0, {"a": 0.5, "b": 0.5}, [0.1, 0.2, 0.7]),
                   (160.0, {"a": 0.2, "b": 0.3, "c": 0.5}, [0.1, 0.2])],  # P(best) too short
        n_snapshots=9, bucket_s=60,
        rewards={"a": ([120.0, 240.0], [10.0, 30.0], [1.0, 6.0]), "b": ([180.0], [5.0], [0.0])},
        decisions={"b": {"x": [150.0], "estimate": [0.1], "low": [-0.2], "high": [0.4],
                         "decision": ["treatment_better"], "stop_at": 150.0}},
        n_decisions=1)
    data = dashboard.chart_data(uow, "exp")
    assert data["weights"] == {"x": [100.0, 160.0], "series": {
        "a": [0.5, 0.2], "b": [0.5, 0.3], "c": [0.0, 0.5]}}
    assert data["prob_best"] == {"x": [100.0], "series": {"a": [0.1], "b": [0.2], "c": [0.7]}}
    assert data["mean"]["x"] == [60.0, 120.0, 180.0, 240.0]
    assert data["mean"]["series"]["a"] == [None, 0.1, 0.1, 0.2]
    assert data["mean"]["series"]["b"] == [None, None, 0.0, 0.0]
    assert data["impressions"]["series"]["c"] == [0.0, 0.0, 0.0, 0.0]
    assert data["cs"]["b"]["stop_at"] == 150.0 and data["cs"]["c"]["x"] == []
    assert "a" not in data["cs"]  # the control has no sequence of its own
    assert (data["snapshots"], data["decisions"], data["bucket_s"]) == (9, 1, 60)


# --- report -----------------------------------------------------------------------------------


def test_report_reads_impressions_per_bucket_and_renders() -> None:
    uow = FakeUnitOfWork()
    exp = _experiment(uow, "exp")
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    # 3 arms x 40 impressions, served two at a time to the same arm (one bucket per pair)
    uow.report.impressions[exp.id] = [
        (t0 + timedelta(seconds=i // 2), ARMS[i // 2 % 3], float(i % 4 == 0))
        for i in range(120)]
    uow.report.snapshot_rows[exp.id] = [(t0, {"a": 0.4, "b": 0.3, "c": 0.3})]
    uow.report.decision_rows[exp.id] = [
        {"at": t0 + timedelta(seconds=30), "arm": "b", "decision": "continue", "estimate": 0.1,
         "p_value": 0.4, "ci_low": -0.3, "ci_high": 0.5, "n_control": 20.0,
         "n_treatment": 20.0, "evidence": {"entry": {"guardrails": [{"metric": "latency"}]}}}]
    data = collect_by_key(uow, "exp")
    assert data.first_impression_at == t0
    assert sum(n for _, _, n, _ in data.impressions) == 120
    assert len(data.impressions) == 60  # the two impressions of an instant share a bucket
    assert sum(r for *_, r in data.impressions) == 30.0
    assert data.decisions[0]["guardrails"] == [{"metric": "latency"}]
    assert "evidence" not in data.decisions[0]
    assert [a["action"] for a in data.audit] == ["create", "start"]  # oldest first
    page = build_report(data)
    assert 'id="chart-reward"' in page and "(120 impressions)" in page
