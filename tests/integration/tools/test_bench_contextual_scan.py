"""``armlab bench contextual-scan`` on a small data set on the session's PostgreSQL: both reads
give the same tallies, the grouped one returns arms x segments groups, and the run cleans up
after itself."""

from __future__ import annotations

from sqlalchemy import create_engine, text

from armlab.settings import Settings
from armlab.tools.bench.contextual_scan import run_scan_bench


def test_bench_contextual_scan_small_run(pg_url: str) -> None:
    out = run_scan_bench(Settings(database_url=pg_url, transport="memory"), impressions=6000,
                         arms=3, repeats=1)
    assert out["same_tallies"] and out["tallied_impressions"] == 6000
    assert out["groups"] == 3 * 9  # arms x device x history
    assert out["grouped_s"] > 0 and out["streamed_baseline_s"] > 0 and out["speedup"] > 0
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM experiments")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM impressions")).scalar() == 0
    engine.dispose()
