"""Contextual allocation on a real PostgreSQL: the port's query (matured impressions of the
arms asked, grouped in the database by their declared features' JSON values) and a full
allocator pass whose segments learn their own best arm, as on SQLite
(:mod:`tests.unit.services.test_contextual_allocation`)."""

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


#: Contexts whose declared features' values differ only in JSON type, are missing, nested,
#: or named with quotes, dots and non-ASCII letters: the database's grouping must key them
#: as the Python reading of the same rows does.
ODD_CONTEXTS: list[Any] = [
    {"device": "mobile", "flag": True, "n": 3, "x": 1.5, "nested": {"a": [1, None]}},
    {"device": "mobile", "flag": 1, "n": 3.0},
    {"device": "mobile", "flag": 1.0, "n": "3"},
    {"device": "mobile", "flag": "1", "n": None},
    {"device": "mobile", "flag": "true", "x": -0.0},
    {"device": {"a": 1}, "flag": [1, 2]},
    {},
    {"dev\"ice": "q\"uote", "a.b": "dot", "ünï": "çé", "device": "desktop"},
    {"device": "", "flag": False, "x": 1e-300},
]
FEATURES = ["device", "flag", "n", "x", "dev\"ice", "a.b", "ünï", "missing"]


def test_matured_context_sums_group_in_the_database_as_python_reads_them(sf: Any) -> None:
    from armlab.core.policies.context_features import ContextParams, ContextSpec
    from armlab.services.contextual_allocation import tally

    exp_id = create(sf)
    rng = np.random.default_rng(3)
    rows = [(str(rng.choice(["control", "t1", "t2"])), ODD_CONTEXTS[i % len(ODD_CONTEXTS)],
             float(rng.random() < 0.3)) for i in range(900)]
    add_impressions(sf, exp_id, rows, served_at=matured())
    add_impressions(sf, exp_id, rows[:50], served_at=T0, prefix="young")
    cutoff = T0 - timedelta(hours=1)
    with SqlAllocationStore(sf).unit() as uow:
        got = list(uow.matured_context_sums(exp_id, cutoff, ["control", "t1"], FEATURES))
    # grouped: one row per (arm, distinct values), not one per impression
    assert len(got) <= 2 * len(ODD_CONTEXTS) and sum(r[2] for r in got) == sum(
        1 for r in rows if r[0] != "t2")
    spec = ContextSpec(ContextParams(features=[
        {"name": f, "kind": "categorical", "levels": ["x"]} for f in FEATURES]).features)
    reference = [(a, {f: c.get(f) for f in FEATURES}, 1.0, r) for a, c, r in rows]
    assert tally(got, ["control", "t1"], spec) == tally(reference, ["control", "t1"], spec)
    # the JSON types survive: True, 1, 1.0 and "1" are four levels of "flag"
    flags = {(type(r[1]["flag"]).__name__, str(r[1]["flag"])) for r in got}
    assert {("bool", "True"), ("int", "1"), ("float", "1.0"), ("str", "1")} <= flags


def test_a_context_that_is_not_an_object_reads_as_missing_features(sf: Any) -> None:
    from armlab.adapters.db.models import Impression

    exp_id = create(sf)
    with sf() as s, s.begin():
        for i, ctx in enumerate([["mobile"], "mobile", 7, None]):
            s.add(Impression(impression_id=f"odd{i}", event_id=f"eodd{i}", experiment_id=exp_id,
                             arm_key="t1", unit_id=f"u{i}", propensity=0.5,
                             served_at=matured(), reward=1.0, feedback_count=1, context=ctx))
    with SqlAllocationStore(sf).unit() as uow:
        got = list(uow.matured_context_sums(exp_id, T0, ["t1"], ["device"]))
    assert sum(r[2] for r in got) == 4 and all(r[1] == {"device": None} for r in got)


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
