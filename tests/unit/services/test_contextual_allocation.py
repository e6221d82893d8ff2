"""The allocator's contextual snapshot on a migrated SQLite file: segments learn their own
best arm once they have min_segment_n matured impressions (below it they are served the
pooled posterior), only matured impressions count, rolled-back arms are left out, the linear
policy's block, impressions with contexts of the wrong type are skipped; and the assigner
serves P(arm | context) from it (the propensities equal the snapshot's rows and the arms'
frequencies match them; unit user keeps the first context's arm)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import pytest

from armlab.adapters.db.allocation_store import SqlAllocationStore
from armlab.adapters.db.assignment_store import SqlAssignmentStore
from armlab.adapters.db.engine import make_engine, make_session_factory
from armlab.adapters.db.models import AllocationSnapshot, Experiment
from armlab.adapters.db.uow import UnitOfWork
from armlab.core.policies.contextual_snapshot import allocation_from_dict, contextual_weights
from armlab.errors import PolicyError
from armlab.services.allocator import run_allocation
from armlab.services.assignment import Assigner
from tests.contextual_data import T0, add_impressions, create, matured, segment_rows


@pytest.fixture()
def sf(sqlite_url: str) -> Any:
    engine = make_engine(sqlite_url)
    yield make_session_factory(engine)
    engine.dispose()


def snapshot(sf: Any, exp_id: int) -> AllocationSnapshot:
    with UnitOfWork(sf) as uow:
        snap = uow.evidence.latest_snapshot(exp_id)
        assert snap is not None
        return snap


def rows_by_segment(snap: AllocationSnapshot) -> dict[str, dict[str, Any]]:
    return {r["segment"]["device"]: r for r in snap.stats["contextual"]["segments"]}


def test_segments_with_enough_data_get_their_own_best_arm(sf: Any) -> None:
    exp_id = create(sf, min_segment_n=200)
    add_impressions(sf, exp_id, segment_rows(300, np.random.default_rng(1)),
                    served_at=matured())
    run_allocation(SqlAllocationStore(sf), now=T0)
    snap = snapshot(sf, exp_id)
    assert snap.policy_name == "segment_thompson"
    ctx = snap.stats["contextual"]
    assert ctx["policy"] == "segment_thompson" and ctx["arms"] == ["control", "t1"]
    assert snap.stats["contextual_rows"] == 1200 and snap.stats["contextual_skipped"] == 0
    seg = rows_by_segment(snap)
    assert seg["mobile"]["source"] == seg["desktop"]["source"] == "segment"
    assert seg["other"]["source"] == "pooled"  # no data of its own
    assert seg["mobile"]["weights"][1] > 0.95 and seg["desktop"]["weights"][0] > 0.95
    # the mean weight over the matured contexts (equal traffic): about a half each
    assert snap.weights["control"] == pytest.approx(
        (seg["mobile"]["weights"][0] + seg["desktop"]["weights"][0]) / 2)


def test_below_min_segment_n_every_segment_is_served_the_pooled_posterior(sf: Any) -> None:
    exp_id = create(sf, min_segment_n=5000)
    add_impressions(sf, exp_id, segment_rows(300, np.random.default_rng(1)),
                    served_at=matured())
    run_allocation(SqlAllocationStore(sf), now=T0)
    seg = rows_by_segment(snapshot(sf, exp_id))
    assert {r["source"] for r in seg.values()} == {"pooled"}
    assert seg["mobile"]["weights"] == seg["desktop"]["weights"] == seg["other"]["weights"]


def test_only_matured_impressions_count(sf: Any) -> None:
    exp_id = create(sf, min_segment_n=200)
    rng = np.random.default_rng(2)
    add_impressions(sf, exp_id, segment_rows(300, rng), served_at=matured())
    # inside the attribution window: t1 never clicked on mobile yet (must not count)
    add_impressions(sf, exp_id, [("t1", {"device": "mobile"}, 0.0)] * 2000,
                    served_at=T0 - timedelta(minutes=5), prefix="young")
    run_allocation(SqlAllocationStore(sf), now=T0)
    snap = snapshot(sf, exp_id)
    assert snap.stats["contextual_rows"] == 1200
    assert rows_by_segment(snap)["mobile"]["weights"][1] > 0.95


def test_rolled_back_arms_are_left_out_and_bad_contexts_skipped(sf: Any) -> None:
    exp_id = create(sf, arms=("control", "t1", "t2"), min_segment_n=100)
    rows = segment_rows(150, np.random.default_rng(3), arms=("control", "t1", "t2"))
    rows += [("t1", {"device": ["mobile"]}, 1.0), ("t1", {"device": 1.5}, 1.0)]
    add_impressions(sf, exp_id, rows, served_at=matured())
    with UnitOfWork(sf) as uow:
        exp = uow.session.get(Experiment, exp_id)
        assert exp is not None
        exp.rolled_back = {"t2": {"summary": "guardrail"}}
        uow.commit()
    run_allocation(SqlAllocationStore(sf), now=T0)
    snap = snapshot(sf, exp_id)
    assert snap.stats["contextual"]["arms"] == ["control", "t1"]
    assert snap.weights["t2"] == 0.0 and sum(snap.weights.values()) == pytest.approx(1.0)
    assert snap.stats["contextual_rows"] == 600 and snap.stats["contextual_skipped"] == 2
    assert snap.stats["rolled_back"] == ["t2"]


def test_linear_policy_block_and_floor_per_context(sf: Any) -> None:
    features = [{"name": "device", "kind": "categorical", "levels": ["mobile", "desktop"]},
                {"name": "age", "kind": "numeric", "center": 35, "scale": 10}]
    exp_id = create(sf, policy="linear_thompson", features=features)
    with UnitOfWork(sf) as uow:
        exp = uow.session.get(Experiment, exp_id)
        assert exp is not None
        exp.exploration_floor = 0.05
        uow.commit()
    rng = np.random.default_rng(4)
    rows = [(a, {**c, "age": int(rng.integers(20, 60))}, r)
            for a, c, r in segment_rows(400, rng)]
    add_impressions(sf, exp_id, rows, served_at=matured())
    run_allocation(SqlAllocationStore(sf), now=T0)
    snap = snapshot(sf, exp_id)
    block = snap.stats["contextual"]
    assert snap.policy_name == block["policy"] == "linear_thompson"
    assert np.asarray(block["mean"]).shape == (2, 1 + 1 + 3) and not block["burn_in"]
    alloc = allocation_from_dict(block)
    mobile = contextual_weights(alloc, block["arms"], {"device": "mobile", "age": 30})
    desktop = contextual_weights(alloc, block["arms"], {"device": "desktop", "age": 30})
    assert mobile["t1"] > 0.9 and desktop["control"] > 0.9
    assert min(*mobile.values(), *desktop.values()) >= 0.05 - 1e-12  # the floor per context


def test_port_streams_the_matured_rows_of_the_arms_asked(sf: Any) -> None:
    exp_id = create(sf)
    add_impressions(sf, exp_id, [("t1", {"device": "mobile"}, 1.0),
                                 ("control", {"device": "desktop"}, 0.0)], served_at=matured())
    add_impressions(sf, exp_id, [("t1", {"device": "mobile"}, 1.0)],
                    served_at=T0, prefix="young")
    cutoff = T0 - timedelta(hours=1)
    with SqlAllocationStore(sf).unit() as uow:
        rows = sorted(uow.matured_context_sums(exp_id, cutoff, ["control", "t1"], ["device"]))
        only_t1 = list(uow.matured_context_sums(exp_id, cutoff, ["t1"], ["device", "age"]))
        none = list(uow.matured_context_sums(exp_id, cutoff, [], ["device"]))
    assert rows == [("control", {"device": "desktop"}, 1.0, 0.0),
                    ("t1", {"device": "mobile"}, 1.0, 1.0)]
    assert only_t1 == [("t1", {"device": "mobile", "age": None}, 1.0, 1.0)]
    assert none == []


def _learned(sf: Any, unit: str = "request") -> tuple[int, AllocationSnapshot]:
    exp_id = create(sf, min_segment_n=200, unit=unit)
    add_impressions(sf, exp_id, segment_rows(60, np.random.default_rng(5)), served_at=matured())
    # 120 per segment: the pooled posterior, near 50/50 ...
    run_allocation(SqlAllocationStore(sf), now=T0)
    add_impressions(sf, exp_id, [(a, {"device": "mobile"}, r)
                                 for a, _, r in segment_rows(60, np.random.default_rng(6))[:120]],
                    served_at=matured(), prefix="more")
    # ... mobile now has its own row
    run_allocation(SqlAllocationStore(sf), now=T0 + timedelta(seconds=5))
    return exp_id, snapshot(sf, exp_id)


def test_served_propensities_are_the_snapshot_rows_and_frequencies_match(sf: Any) -> None:
    _, snap = _learned(sf)
    seg = rows_by_segment(snap)
    assert seg["mobile"]["source"] == "segment" and seg["desktop"]["source"] == "pooled"
    assigner = Assigner(SqlAssignmentStore(sf), seed=7).start(background=False)
    try:
        for device, n in (("mobile", 4000), ("desktop", 4000), ("tablet", 200)):
            row = seg[device if device != "tablet" else "other"]["weights"]
            expected = dict(zip(["control", "t1"], row, strict=True))
            counts = dict.fromkeys(expected, 0)
            for i in range(n):
                a = assigner.assign("ctx", f"r{i}", {"device": device})
                assert a.propensity == pytest.approx(expected[a.arm_key], abs=1e-12)
                counts[a.arm_key] += 1
            for arm, p in expected.items():  # within 4 binomial standard errors
                assert abs(counts[arm] / n - p) <= 4 * np.sqrt(p * (1 - p) / n) + 1e-9
        # no context: the features' defaults (device: other)
        a = assigner.assign("ctx", "r-none")
        assert a.propensity == pytest.approx(
            dict(zip(["control", "t1"], seg["other"]["weights"], strict=True))[a.arm_key])
        with pytest.raises(PolicyError, match="device"):
            assigner.assign("ctx", "r-bad", {"device": [1, 2]})
    finally:
        assigner.close()


def test_unit_user_keeps_the_arm_of_its_first_context(sf: Any) -> None:
    _, snap = _learned(sf, unit="user")
    mobile = rows_by_segment(snap)["mobile"]["weights"]
    assigner = Assigner(SqlAssignmentStore(sf), seed=8).start(background=False)
    try:
        first = assigner.assign("ctx", "alice", {"device": "mobile"})
        assert first.propensity == pytest.approx(
            mobile[["control", "t1"].index(first.arm_key)])
        again = assigner.assign("ctx", "alice", {"device": "desktop"})
        assert (again.arm_key, again.propensity) == (first.arm_key, first.propensity)
    finally:
        assigner.close()


def test_burn_in_and_floor_apply_per_segment(sf: Any) -> None:
    exp_id = create(sf, min_segment_n=100)
    with UnitOfWork(sf) as uow:
        exp = uow.session.get(Experiment, exp_id)
        assert exp is not None
        exp.burn_in, exp.exploration_floor = 250, 0.1
        uow.commit()
    rows = segment_rows(300, np.random.default_rng(7))
    rows = [r for r in rows if not (r[1]["device"] == "desktop" and r[0] == "t1")][:-100]
    add_impressions(sf, exp_id, rows + [("t1", {"device": "desktop"}, 0.0)] * 200,
                    served_at=matured())
    run_allocation(SqlAllocationStore(sf), now=T0)
    seg = rows_by_segment(snapshot(sf, exp_id))
    # mobile: 300 per arm >= burn_in: its own row, floored at 0.1
    assert seg["mobile"]["source"] == "segment" and min(seg["mobile"]["weights"]) == 0.1
    # desktop: t1 has 200 < 250 there: not split; the pooled counts pass burn-in -> pooled
    assert seg["desktop"]["source"] == "pooled"
    assert min(seg["desktop"]["weights"]) >= 0.1 - 1e-12
