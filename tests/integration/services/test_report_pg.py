"""On PostgreSQL the report's impressions are aggregated by the database per time bucket and
arm (a bounded number of rows), with running totals exact at every bucket."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from armlab.adapters.db.engine import make_engine
from armlab.adapters.db.models import Impression
from armlab.bootstrap import bootstrap
from armlab.core.clock import as_utc
from armlab.services import report
from armlab.settings import Settings
from armlab.tools.bench.dashboard import seed


@pytest.mark.parametrize("max_buckets", [1000, 40])
def test_report_buckets_are_exact_and_bounded(
        pg_url: str, max_buckets: int, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(database_url=pg_url, transport="memory")
    engine = make_engine(pg_url)
    seed(engine, settings, key="rep", arms=3, days=0.1, rate=20, snapshots=20,
         raw_events=2000)
    monkeypatch.setattr(report, "MAX_REWARD_BUCKETS", max_buckets)
    services = bootstrap(settings, engine=engine)
    with services.uow() as uow:
        data = report.collect_by_key(uow, "rep")
        served = uow.session.execute(
            select(Impression.served_at, Impression.arm_key, Impression.reward)).all()
    services.close()
    engine.dispose()
    assert len(data.impressions) <= 3 * (max_buckets + 1)
    assert sum(n for _, _, n, _ in data.impressions) == 2000
    assert data.first_impression_at == min(as_utc(t) for t, _, _ in served)
    totals: dict[str, list[float]] = {}
    for at, arm, n, r in data.impressions:
        acc = totals.setdefault(arm, [0, 0.0])
        acc[0] += n
        acc[1] += r
        upto = [rw for t, a, rw in served if a == arm and as_utc(t) <= at]
        assert acc == [len(upto), pytest.approx(sum(upto))], (at, arm)
