"""Interleaving on a real PostgreSQL: the look's SQL sums equal the per-unit preferences
computed directly, and a full allocator pass (snapshot, look, auto-stop with its certificate)
runs there as on SQLite (:mod:`tests.unit.services.test_interleaving_allocator`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from armlab.adapters.db.allocation_store import SqlAllocationStore
from armlab.adapters.db.engine import make_engine, make_session_factory
from armlab.adapters.db.uow import UnitOfWork
from armlab.services import registry
from armlab.services.allocator import run_allocation
from tests.interleaving_data import (
    T0,
    add_units,
    create,
    preferring,
    sql_matches_unit_preferences,
)


@pytest.fixture()
def sf(pg_url: str) -> Any:
    engine = make_engine(pg_url)
    yield make_session_factory(engine)
    engine.dispose()


def test_sql_sums_equal_unit_preferences_postgres(sf: Any) -> None:
    sql_matches_unit_preferences(sf)


def test_auto_stop_with_certificate_postgres(sf: Any) -> None:
    arms = ["a", "b", "c"]
    exp_id = create(sf, arms, m=2)
    add_units(sf, exp_id, preferring("c", arms, 400, np.random.default_rng(2)),
              tallies={("a", "c"): (100, 10, 60, 12, 70)})
    run_allocation(SqlAllocationStore(sf), now=T0)
    with UnitOfWork(sf) as uow:
        assert registry.get_experiment(uow, key="il").status == "stopped"
        stop = [r for r in registry.list_audit(uow, key="il") if r.action == "stop"][0]
        assert stop.evidence["interleaving"]["condorcet_winner"] == "c"
        snaps = uow.session.execute(
            __import__("sqlalchemy").text(
                "select policy_name from allocation_snapshots where experiment_id = :e "
                "order by id"), {"e": exp_id}).scalars().all()
    assert snaps == ["dueling", "stopped"]
