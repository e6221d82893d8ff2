"""``armlab bench dashboard`` on a small data set on the session's PostgreSQL: it seeds what it
says, times both sources, reports p95s and cleans up after itself."""

from __future__ import annotations

from sqlalchemy import create_engine, text

from armlab.entrypoints.api.app import create_app
from armlab.settings import Settings
from armlab.tools.bench.dashboard import run_bench


def test_bench_dashboard_small_run(pg_url: str) -> None:
    out = run_bench(Settings(database_url=pg_url, transport="memory"), create_app, arms=3,
                    days=0.5, rate=20, snapshots=120, raw_events=3000, requests=3, warmup=1)
    data = out["data"]
    assert data["rollup_rows"] == 3 * (720 + 12)
    assert data["decision_rows"] == 240 and data["events_aggregated"] == 864_000
    for source in ("rollups", "raw_baseline"):
        for part in ("page", "charts", "page_plus_charts"):
            assert out[source][part]["n"] == 3 and out[source][part]["p95_ms"] > 0
    assert out["p95_ms"] == out["rollups"]["page_plus_charts"]["p95_ms"]
    assert out["meets_target"] == (out["p95_ms"] <= 300)
    assert len(out["load_average_1_5_15"]["before_timing"]) == 3
    assert out["rollups"]["full_gc"]["collections"] >= 0
    engine = create_engine(pg_url)
    with engine.connect() as conn:  # the benchmark's experiment is gone, with its rows
        assert conn.execute(text("SELECT count(*) FROM experiments")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM arm_rollups")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM impressions")).scalar() == 0
    engine.dispose()
