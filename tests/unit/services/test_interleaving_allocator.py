"""The allocator's pass over interleaving experiments on a migrated SQLite file: the snapshot
format (all rankers, or the dueling bandit's sets), the look (SQL sums equal to the per-unit
preferences computed directly), the running state across looks, the auto-stop with its
certificate, the frozen result, the ship guard and the results block."""

from __future__ import annotations

from datetime import timedelta
from itertools import combinations
from typing import Any

import numpy as np
import pytest

from armlab.adapters.db.allocation_store import SqlAllocationStore
from armlab.adapters.db.engine import make_engine, make_session_factory
from armlab.adapters.db.models import AllocationSnapshot
from armlab.adapters.db.uow import UnitOfWork
from armlab.entrypoints.report import build_report
from armlab.errors import Conflict
from armlab.services import registry
from armlab.services.allocator import run_allocation
from armlab.services.interleaving_evaluation import ROW_KEY
from armlab.services.report import collect_by_key
from armlab.services.results import build_results
from tests.interleaving_data import (
    T0,
    add_units,
    create,
    preferring,
    sql_matches_unit_preferences,
)


@pytest.fixture()
def sf(sqlite_url: str) -> Any:
    engine = make_engine(sqlite_url)
    yield make_session_factory(engine)
    engine.dispose()


def latest_snapshot(sf: Any, exp_id: int) -> AllocationSnapshot:
    with UnitOfWork(sf) as uow:
        snap = uow.evidence.latest_snapshot(exp_id)
        assert snap is not None
        return snap


def test_snapshot_with_every_ranker_in_every_request(sf: Any) -> None:
    exp_id = create(sf, ["a", "b", "c"])
    run_allocation(SqlAllocationStore(sf), now=T0)
    snap = latest_snapshot(sf, exp_id)
    assert snap.policy_name == "interleaving"
    st = snap.stats
    assert st["design"] == "interleaving" and st["m"] == 3 and st["status"] == "running"
    assert st["sets"] == [{"rankers": ["a", "b", "c"], "probability": 1.0}]
    assert st["pairs"] == [{"a": "a", "b": "b", "propensity": 1.0},
                           {"a": "a", "b": "c", "propensity": 1.0},
                           {"a": "b", "b": "c", "propensity": 1.0}]
    assert st["epsilon"] == 0.0 and isinstance(st["seed"], int)
    assert snap.weights == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})


def test_dueling_snapshot_sets_and_pair_propensities_agree(sf: Any) -> None:
    arms = ["a", "b", "c", "d"]
    exp_id = create(sf, arms, m=2)
    add_units(sf, exp_id, {}, tallies={("a", "b"): (50, 30, 5, 40, 8),
                                       ("a", "c"): (50, 30, 5, 40, 8)})
    run_allocation(SqlAllocationStore(sf), now=T0)
    snap = latest_snapshot(sf, exp_id)
    st = snap.stats
    assert snap.policy_name == "dueling" and st["m"] == 2 and 0 < st["epsilon"] < 1
    assert st["wins"]["a|b"] == [30, 5] and st["wins"]["c|d"] == [0, 0]
    probs = [s["probability"] for s in st["sets"]]
    assert sum(probs) == pytest.approx(1.0, abs=1e-12)
    assert len(st["sets"]) == 6 and all(p > 0 for p in probs)  # the epsilon share: all subsets
    assert all(len(s["rankers"]) == 2 for s in st["sets"])
    for p in st["pairs"]:
        from_sets = sum(s["probability"] for s in st["sets"]
                        if p["a"] in s["rankers"] and p["b"] in s["rankers"])
        assert p["propensity"] == pytest.approx(from_sets, abs=1e-12)
        assert p["propensity"] >= 0.02 - 1e-12  # the pair floor
    assert [(p["a"], p["b"]) for p in st["pairs"]] == list(combinations(arms, 2))
    assert sum(snap.weights.values()) == pytest.approx(1.0)
    enter_a = sum(s["probability"] for s in st["sets"] if "a" in s["rankers"])
    assert snap.weights["a"] == pytest.approx(enter_a / 2)


def test_sql_sums_equal_unit_preferences_sqlite(sf: Any) -> None:
    sql_matches_unit_preferences(sf)


def _looks(sf: Any, exp_id: int) -> list[dict[str, Any]]:
    with UnitOfWork(sf) as uow:
        from sqlalchemy import select

        from armlab.adapters.db.models import Decision
        rows = uow.session.scalars(select(Decision).where(
            Decision.experiment_id == exp_id, Decision.arm_key == ROW_KEY)
            .order_by(Decision.id)).all()
        return [dict(r.evidence["interleaving"]) for r in rows]


def test_running_state_is_monotone_then_frozen_at_the_auto_stop(sf: Any) -> None:
    arms = ["a", "b", "c"]
    exp_id = create(sf, arms)
    rng = np.random.default_rng(3)
    start, now = 0, T0
    for size in (20, 20, 20, 40, 40, 80, 160):
        add_units(sf, exp_id, preferring("b", arms, size, rng, start=start, shift=0.35))
        start += size
        run_allocation(SqlAllocationStore(sf), now=now)
        now += timedelta(minutes=1)
        with UnitOfWork(sf) as uow:
            if registry.get_experiment(uow, key="il").status != "running":
                break
    looks = _looks(sf, exp_id)
    assert len(looks) >= 3 and looks[-1]["stop"] and looks[-1]["frozen"]
    assert looks[-1]["condorcet_winner"] == "b"
    assert [k["looks"] for k in looks] == list(range(1, len(looks) + 1))  # the state resumed
    for prev, cur in zip(looks, looks[1:], strict=False):
        for p, q in zip(prev["pairs"], cur["pairs"], strict=True):
            assert q["p_value"] <= p["p_value"] + 1e-15
            if p["ci_low"] is not None:
                assert q["ci_low"] >= p["ci_low"] - 1e-12 and q["ci_high"] <= p["ci_high"] + 1e-12
            if p["winner"]:
                assert q["winner"] == p["winner"]
    with UnitOfWork(sf) as uow:
        exp = registry.get_experiment(uow, key="il")
        assert exp.status == "stopped"
        stop = [r for r in registry.list_audit(uow, key="il") if r.action == "stop"]
        assert len(stop) == 1 and stop[0].actor == "allocator"
        cert = stop[0].evidence["interleaving"]
        assert cert["condorcet_winner"] == "b" and cert["stop"]
        assert {(p["a"], p["b"]): p["winner"] for p in cert["pairs"]}[("a", "b")] == "b"
    snap = latest_snapshot(sf, exp_id)
    assert snap.policy_name == "stopped" and snap.weights["a"] == 1.0  # the control serves
    # more data after the stop changes nothing shown
    add_units(sf, exp_id, preferring("a", arms, 300, rng, start=10_000))
    run_allocation(SqlAllocationStore(sf), now=now + timedelta(hours=1))
    assert len(_looks(sf, exp_id)) == len(looks)
    with UnitOfWork(sf) as uow:
        exp = registry.get_experiment(uow, key="il")
        res = build_results(uow, exp)
    block = res["interleaving"]
    assert block["condorcet_winner"] == "b" and block["recorded"] and block["frozen"]
    assert [p["p_value"] for p in block["pairs"]] == [p["p_value"] for p in looks[-1]["pairs"]]


def test_ship_guard_refuses_a_ranker_that_is_not_the_condorcet_winner(sf: Any) -> None:
    arms = ["a", "b"]
    exp_id = create(sf, arms, auto_stop=False)
    add_units(sf, exp_id, preferring("b", arms, 300, np.random.default_rng(5), shift=0.5))
    run_allocation(SqlAllocationStore(sf), now=T0)
    with UnitOfWork(sf) as uow, pytest.raises(Conflict, match="Condorcet winner"):
        registry.ship_experiment(uow, key="il", arm="a", actor="t", reason="r")
    with UnitOfWork(sf) as uow:
        registry.ship_experiment(uow, key="il", arm="a", actor="t", reason="r", force=True)
        uow.commit()
    with UnitOfWork(sf) as uow:
        row = [r for r in registry.list_audit(uow, key="il") if r.action == "ship"][0]
        assert row.evidence["force"] and "not the decided Condorcet winner" in (
            row.evidence["overridden"])
        assert row.evidence["interleaving"]["condorcet_winner"] == "b"


def test_ship_guard_allows_the_winner_and_refuses_without_one(sf: Any) -> None:
    create(sf, ["a", "b"], auto_stop=False)
    with UnitOfWork(sf) as uow, pytest.raises(Conflict, match="no ranker is decided"):
        registry.ship_experiment(uow, key="il", arm="b", actor="t", reason="r")
    exp_id = 1
    add_units(sf, exp_id, preferring("b", ["a", "b"], 300, np.random.default_rng(5), shift=0.5))
    with UnitOfWork(sf) as uow:
        exp = registry.ship_experiment(uow, key="il", arm="b", actor="t", reason="r")
        uow.commit()
        assert exp.status == "shipped" and exp.shipped_arm_key == "b"


def test_results_carry_the_design_and_the_interleaving_block(sf: Any) -> None:
    arms = ["a", "b", "c"]
    exp_id = create(sf, arms, m=2, auto_stop=False)
    with UnitOfWork(sf) as uow:
        before = build_results(uow, registry.get_experiment(uow, key="il"))
    assert before["design"] == "interleaving" and before["sequential"] is None
    assert not before["interleaving"]["recorded"]
    assert all(p["decision"] == "undecided" for p in before["interleaving"]["pairs"])
    add_units(sf, exp_id, preferring("a", arms, 100, np.random.default_rng(1)),
              tallies={("a", "b"): (40, 20, 10, 30, 12)})
    run_allocation(SqlAllocationStore(sf), now=T0)
    with UnitOfWork(sf) as uow:
        res = build_results(uow, registry.get_experiment(uow, key="il"))
    block = res["interleaving"]
    assert block["rankers"] == arms and block["recorded"] and block["looks"] == 1
    ab = block["pairs"][0]
    assert (ab["a"], ab["b"], ab["compared"], ab["a_wins"], ab["b_wins"]) == ("a", "b", 40, 20, 10)
    assert ab["a_clicks"] == 30 and ab["b_clicks"] == 12
    assert ab["win_rate_a"] == pytest.approx(20 / 30) and ab["n_units"] == 100
    assert 0 < ab["propensity"] <= 1 and block["choice"]["m"] == 2
    assert sum(block["choice"]["enter"].values()) == pytest.approx(2.0)


def test_report_shows_the_pairs_and_their_confidence_sequences(sf: Any) -> None:
    arms = ["a", "b", "c"]
    exp_id = create(sf, arms, auto_stop=False)
    rng = np.random.default_rng(9)
    for i, now in enumerate((T0, T0 + timedelta(minutes=5), T0 + timedelta(minutes=10))):
        add_units(sf, exp_id, preferring("a", arms, 80, rng, start=100 * i, shift=0.05),
                  tallies={("a", "b"): (80, 40, 10, 50, 12)}, partition=i)
        run_allocation(SqlAllocationStore(sf), now=now)
    with UnitOfWork(sf) as uow:
        data = collect_by_key(uow, "il")
    assert len(data.interleaving_looks) == 3 and not any(
        d["arm"] == ROW_KEY for d in data.decisions)
    page = build_report(data)
    for pair in ("a|b", "a|c", "b|c"):
        assert f"data-pair='{pair}'" in page
    assert "<section id='interleaving'>" in page and "id='chart-pairs'><svg" in page
    assert "Condorcet winner: none decided yet" in page
    assert "120 : 30" in page  # a's and b's wins summed over the three partitions' rows
    assert 'id="chart-cs"' not in page and "<script" not in page and "http" not in page.split(
        "<svg")[0].replace("http-equiv", "")


def test_a_stopping_look_freezes_the_result_without_auto_stop(sf: Any) -> None:
    arms = ["a", "b"]
    exp_id = create(sf, arms, auto_stop=False)
    rng = np.random.default_rng(4)
    add_units(sf, exp_id, preferring("a", arms, 200, rng, shift=0.6))
    run_allocation(SqlAllocationStore(sf), now=T0)
    first = _looks(sf, exp_id)
    assert len(first) == 1 and first[0]["frozen"] and first[0]["condorcet_winner"] == "a"
    add_units(sf, exp_id, preferring("b", arms, 2000, rng, start=1000, shift=1.0))
    run_allocation(SqlAllocationStore(sf), now=T0 + timedelta(minutes=1))
    assert _looks(sf, exp_id) == first  # nothing recorded: the frozen result stands
    with UnitOfWork(sf) as uow:
        exp = registry.get_experiment(uow, key="il")
        assert exp.status == "running"  # monitor only: no auto-stop
        assert build_results(uow, exp)["interleaving"]["condorcet_winner"] == "a"
