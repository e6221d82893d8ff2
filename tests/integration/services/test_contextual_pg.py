"""Contextual allocation on a real PostgreSQL: the port's query (matured impressions of the
arms asked, with their JSON contexts, streamed) and a full allocator pass whose segments learn
their own best arm, as on SQLite (:mod:`tests.unit.services.test_contextual_allocation`)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import pytest

from armlab.adapters.db.allocation_store import SqlAllocationStore
from armlab.adapters.db.engine import make_engine, make_session_factory
from armlab.adapters.db.uow import UnitOfWork
from armlab.services.allocator import run_allocation
from tests.contextual_data import T0, add_impressions, create, matured, segment_rows


@pytest.fixture()
def sf(pg_url: str) -> Any:
    engine = make_engine(pg_url)
    yield make_session_factory(engine)
    engine.dispose()


def test_matured_contexts_query_postgres(sf: Any) -> None:
    exp_id = create(sf)
    ctx = {"device": "mobile", "flag": True, "n": 3, "x": 1.5, "nested": {"a": [1, None]}}
    add_impressions(sf, exp_id, [("t1", ctx, 1.0), ("control", {}, 0.0), ("t2", ctx, 1.0)],
                    served_at=matured())
    add_impressions(sf, exp_id, [("t1", ctx, 1.0)], served_at=T0, prefix="young")
    with SqlAllocationStore(sf).unit() as uow:
        rows = sorted(uow.matured_contexts(exp_id, T0 - timedelta(hours=1), ["control", "t1"]),
                      key=lambda r: r[0])
    assert rows == [("control", {}, 0.0), ("t1", ctx, 1.0)]
    assert isinstance(rows[1][1]["flag"], bool) and isinstance(rows[1][1]["n"], int)


def test_segments_learn_postgres(sf: Any) -> None:
    exp_id = create(sf, min_segment_n=200)
    add_impressions(sf, exp_id, segment_rows(300, np.random.default_rng(1)),
                    served_at=matured())
    run_allocation(SqlAllocationStore(sf), now=T0)
    with UnitOfWork(sf) as uow:
        snap = uow.evidence.latest_snapshot(exp_id)
    assert snap is not None and snap.policy_name == "segment_thompson"
    seg = {r["segment"]["device"]: r for r in snap.stats["contextual"]["segments"]}
    assert snap.stats["contextual_rows"] == 1200
    assert seg["mobile"]["source"] == "segment" and seg["mobile"]["weights"][1] > 0.95
    assert seg["desktop"]["source"] == "segment" and seg["desktop"]["weights"][0] > 0.95
