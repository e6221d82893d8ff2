"""Looks of the sequential test under a row lock, on real PostgreSQL.

The allocator and the ship guard of a running experiment both read the last recorded look
(the running p-value, confidence sequence and decision of each arm) and record the next one.
Two looks that interleave would both continue the same previous state, and the one committed
second would overwrite the other's running state with one computed from older evidence. Each
path locks the experiment's row first (``lock_experiment``), so the second look waits for the
first to commit and continues from it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import select

from armlab.adapters.db.allocation_store import SqlAllocationStore
from armlab.adapters.db.engine import make_engine, make_session_factory
from armlab.adapters.db.models import ArmStats, Decision
from armlab.adapters.db.uow import UnitOfWork
from armlab.core.specs import ExperimentSpec
from armlab.services import decisions as decisions_service
from armlab.services import registry
from armlab.services.allocator import run_allocation

pytestmark = pytest.mark.integration

WAIT_S = 3.0  # how long a look waits for a concurrent one at the rendezvous


@pytest.fixture()
def sf(pg_url: str) -> Iterator[Any]:
    engine = make_engine(pg_url, pool_size=4)
    yield make_session_factory(engine)
    engine.dispose()


def _experiment(sf: Any, key: str) -> int:
    spec = ExperimentSpec.model_validate({
        "key": key, "exploration_floor": 0.1, "attribution_window_s": 1,
        "arms": [{"key": "control", "control": True, "variant": {"kind": "popularity"}},
                 {"key": "a", "variant": {"kind": "popularity"}},
                 {"key": "b", "variant": {"kind": "popularity"}}],
        "sequential": {"alpha": 0.05, "min_events": 5},
    })
    with UnitOfWork(sf) as uow:
        exp = registry.create_experiment(uow, spec=spec, actor="test")
        registry.start_experiment(uow, key=key, actor="test")
        uow.flush()
        for arm, n, s in (("control", 400, 20.0), ("a", 300, 18.0), ("b", 300, 12.0)):
            # Propensity 1/3 throughout: ipw_n = 3n, ipw_sum = 3s, ipw_n_sq = 9n, ...
            uow.session.add(ArmStats(
                experiment_id=exp.id, arm_key=arm, partition=0, n=n, reward_sum=s,
                reward_sumsq=s, ipw_n=3.0 * n, ipw_sum=3.0 * s, ipw_sumsq=9.0 * s,
                ipw_n_sq=9.0 * n))
        uow.commit()
        return exp.id


def _ship(key: str) -> Callable[[Any], None]:
    def run(sf: Any) -> None:
        with UnitOfWork(sf) as uow:
            registry.ship_experiment(uow, key=key, arm="a", actor="ops", reason="race",
                                     force=True)
            uow.commit()
    return run


def _allocate(sf: Any) -> None:
    run_allocation(SqlAllocationStore(sf))


@pytest.mark.parametrize("pair", ["allocator-allocator", "ship-allocator"])
def test_two_concurrent_looks_do_not_continue_the_same_state(
    sf: Any, monkeypatch: pytest.MonkeyPatch, pair: str
) -> None:
    """Two looks start together on unchanged data. Each waits (up to WAIT_S) at a rendezvous
    placed after it has read the previous state and before it records: without the lock both
    arrive, both continue "no previous look" and two rows per arm are recorded, each with
    ``looks = 1``; with it the second look waits for the first to commit, sees its rows and,
    the data being unchanged, records nothing (or, after the ship, takes no look at all)."""
    key = f"lock-{pair}"
    exp_id = _experiment(sf, key)
    rendezvous = threading.Barrier(2)
    real = decisions_service.evaluate

    def evaluate(*args: Any, **kwargs: Any) -> Any:
        try:
            rendezvous.wait(timeout=WAIT_S)
        except threading.BrokenBarrierError:
            pass  # the other look is waiting for the lock (or already done)
        return real(*args, **kwargs)

    monkeypatch.setattr(decisions_service, "evaluate", evaluate)
    start = threading.Barrier(2, timeout=30)
    errors: list[BaseException] = []

    def worker(call: Callable[[Any], None]) -> None:
        try:
            start.wait()
            call(sf)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    calls = {"allocator-allocator": [_allocate, _allocate],
             "ship-allocator": [_ship(key), _allocate]}[pair]
    threads = [threading.Thread(target=worker, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors

    with sf() as s:
        rows = list(s.scalars(select(Decision).where(Decision.experiment_id == exp_id)
                              .order_by(Decision.id)))
    by_arm: dict[str, list[Decision]] = {}
    for r in rows:
        by_arm.setdefault(r.arm_key, []).append(r)
    assert sorted(by_arm) == ["a", "b"], [(r.arm_key, r.evidence.get("looks")) for r in rows]
    for arm, arm_rows in by_arm.items():
        looks = [int(r.evidence["looks"]) for r in arm_rows]
        assert len(arm_rows) == 1, (arm, looks)  # the data did not change between the looks
        assert looks == [1], (arm, looks)
        assert arm_rows[0].evidence["valid"] is True
