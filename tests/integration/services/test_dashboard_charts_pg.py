"""On PostgreSQL the chart series are built by the database as JSON (``sql_json``): the result
must be what the portable row-by-row path computes from the same rows, for the rollups and the
raw source, with and without sampling, including non-finite interval bounds and a stop."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from sqlalchemy import text

from armlab.adapters.db.engine import make_engine
from armlab.bootstrap import bootstrap
from armlab.services import dashboard
from armlab.settings import Settings
from armlab.tools.bench.dashboard import seed


def _same(a: Any, b: Any, path: str = "") -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), (path, set(a) ^ set(b))
        for k in a:
            _same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), (path, len(a), len(b))
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a is not None and b is not None, (path, a, b)
        assert a == pytest.approx(b, rel=1e-9, abs=1e-9), (path, a, b)
    else:
        assert a == b, (path, a, b)


def test_sql_json_charts_equal_the_portable_path(pg_url: str) -> None:
    settings = Settings(database_url=pg_url, transport="memory")
    engine = make_engine(pg_url)
    seed(engine, settings, key="cmp", arms=4, days=0.5, rate=20, snapshots=150,
         raw_events=3000)
    with engine.begin() as conn:  # an unbounded interval and a stop on one arm
        conn.execute(text("UPDATE decisions SET ci_low = '-Infinity', ci_high = 'Infinity' "
                          "WHERE id IN (SELECT min(id) FROM decisions GROUP BY arm_key)"))
        conn.execute(text("UPDATE decisions SET decision = 'treatment_better' WHERE arm_key = "
                          "'arm2' AND id > (SELECT avg(id) FROM decisions)"))
    services = bootstrap(settings, engine=engine)
    for source in ("rollups", "raw"):
        for max_points in (400, 7):
            with services.uow() as uow:
                fast = dashboard.chart_data(uow, "cmp", source=source, max_points=max_points,
                                            sql_json=True)
                # the charts' transaction runs without JIT compilation
                assert uow.session.execute(text("SHOW jit")).scalar() == "off"
                slow = dashboard.chart_data(uow, "cmp", source=source, max_points=max_points,
                                            sql_json=False)
            _same(orjson.loads(orjson.dumps(fast)), orjson.loads(orjson.dumps(slow)))
            assert fast["snapshots"] == 150 and fast["decisions"] > 0
            assert fast["cs"]["arm2"]["stop_at"] is not None
            assert fast["cs"]["arm1"]["stop_at"] is None
            assert len(fast["weights"]["x"]) <= max_points + 1
            assert fast["cs"]["arm1"]["low"][0] is None  # -Infinity is sent as null
    services.close()
    engine.dispose()
