"""Allocator on PostgreSQL: snapshots from arm_stats rows, delayed feedback, terminal states."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from armlab.adapters.db.models import AllocationSnapshot, ArmStats, Experiment, Impression
from armlab.adapters.db.uow import UnitOfWork
from armlab.bootstrap import Services, bootstrap
from armlab.core.specs import ExperimentSpec
from armlab.services import registry
from armlab.services.allocator import allocation_loop, run_allocation
from armlab.services.assignment import Assigner
from armlab.settings import Settings
from tests.builders import experiment_spec

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def make_spec(key: str, **overrides: Any) -> ExperimentSpec:
    return experiment_spec(key, treatments=("a", "b"), **{"attribution_window_s": 600, **overrides})


@pytest.fixture()
def services(pg_url: str) -> Any:
    svc = bootstrap(Settings(database_url=pg_url))
    yield svc
    svc.close()


def create(svc: Services, key: str, *, start: bool = True, **overrides: Any) -> int:
    with UnitOfWork(svc.session_factory) as uow:
        exp = registry.create_experiment(uow, spec=make_spec(key, **overrides), actor="test")
        if start:
            registry.start_experiment(uow, key=key, actor="test")
        uow.commit()
        return exp.id


def add_stats(svc: Services, exp_id: int, rows: list[tuple[str, int, int, float]]) -> None:
    with UnitOfWork(svc.session_factory) as uow:
        for arm, part, n, s in rows:
            uow.session.add(
                ArmStats(
                    experiment_id=exp_id,
                    arm_key=arm,
                    partition=part,
                    n=n,
                    reward_sum=s,
                    reward_sumsq=s,
                )
            )
        uow.commit()


def snapshots(svc: Services, exp_id: int) -> list[AllocationSnapshot]:
    with svc.session_factory() as s:
        return list(
            s.scalars(
                select(AllocationSnapshot)
                .where(AllocationSnapshot.experiment_id == exp_id)
                .order_by(AllocationSnapshot.id)
            )
        )


def test_snapshot_from_arm_stats_summed_over_partitions(services: Services) -> None:
    exp_id = create(services, "alloc-ts", exploration_floor=0.05)
    add_stats(
        services,
        exp_id,
        [
            ("control", 0, 600, 30),
            ("control", 1, 400, 20),
            ("a", 0, 500, 60),
            ("a", 1, 500, 60),
            ("b", 0, 1000, 40),
        ],
    )
    written = run_allocation(services.allocation_store, now=NOW)
    assert len(written) == 1
    (snap,) = snapshots(services, exp_id)
    assert snap.policy_name == "thompson" and snap.policy_version == "1"
    assert set(snap.weights) == {"control", "a", "b"}
    assert sum(snap.weights.values()) == pytest.approx(1.0)
    assert snap.weights["a"] > 0.85 and min(snap.weights.values()) >= 0.05 - 1e-9
    arms = snap.stats["arms"]
    assert arms["control"]["n"] == 1000 and arms["control"]["reward_sum"] == 50
    assert arms["a"]["matured_n"] == 1000
    assert snap.stats["method"] == "quadrature" and "seed" in snap.stats
    # same input, same time -> identical weights (reproducible seed)
    run_allocation(services.allocation_store, now=NOW)
    assert snapshots(services, exp_id)[-1].weights == snap.weights


def test_impressions_inside_the_attribution_window_are_not_failures_yet(
    services: Services,
) -> None:
    exp_id = create(
        services, "alloc-delay", policy={"name": "epsilon_greedy", "params": {"epsilon": 0.3}}
    )
    # arm a: 100 matured impressions with 10 clicks, plus 900 fresh ones still waiting
    add_stats(services, exp_id, [("control", 0, 100, 5), ("a", 0, 1000, 12), ("b", 0, 100, 4)])
    with UnitOfWork(services.session_factory) as uow:
        for i in range(900):
            uow.session.add(
                Impression(
                    impression_id=f"imp{i}",
                    event_id=f"ev{i}",
                    experiment_id=exp_id,
                    arm_key="a",
                    unit_id=f"u{i}",
                    propensity=0.5,
                    served_at=NOW - timedelta(seconds=60),
                    reward=1.0 if i < 2 else 0.0,
                    feedback_count=1 if i < 2 else 0,
                )
            )
        uow.session.add(
            Impression(  # an old one: matured, already counted in arm_stats
                impression_id="old",
                event_id="ev-old",
                experiment_id=exp_id,
                arm_key="a",
                unit_id="u",
                propensity=0.5,
                served_at=NOW - timedelta(hours=2),
            )
        )
        uow.commit()
    run_allocation(services.allocation_store, now=NOW)
    (snap,) = snapshots(services, exp_id)
    a = snap.stats["arms"]["a"]
    assert a["immature_n"] == 900 and a["matured_n"] == 100 and a["matured_reward_sum"] == 10
    # matured mean of a is 0.10 (best): greedy gives it 1 - 0.3 + 0.1
    assert snap.weights["a"] == pytest.approx(0.8)
    # without the correction a would look like 12/1000 and lose to control (0.05)
    later = NOW + timedelta(hours=1)
    run_allocation(services.allocation_store, now=later)
    assert snapshots(services, exp_id)[-1].weights["control"] == pytest.approx(0.8)


def test_burn_in_counts_matured_observations(services: Services) -> None:
    exp_id = create(services, "alloc-burn", burn_in=50)
    add_stats(services, exp_id, [("control", 0, 49, 0), ("a", 0, 500, 100), ("b", 0, 500, 1)])
    run_allocation(services.allocation_store, now=NOW)
    snap = snapshots(services, exp_id)[-1]
    assert snap.stats["method"] == "burn_in"
    assert list(snap.weights.values()) == pytest.approx([1 / 3] * 3)


def test_stopped_and_shipped_experiments(services: Services) -> None:
    stopped = create(services, "alloc-stop")
    shipped = create(services, "alloc-ship")
    draft = create(services, "alloc-draft", start=False)
    with UnitOfWork(services.session_factory) as uow:
        registry.stop_experiment(uow, key="alloc-stop", actor="t", reason="done")
        registry.ship_experiment(uow, key="alloc-ship", arm="b", actor="t", reason="won",
                                 force=True)
        uow.commit()
    run_allocation(services.allocation_store, now=NOW)
    assert snapshots(services, stopped)[-1].weights == {"control": 1.0, "a": 0.0, "b": 0.0}
    ship = snapshots(services, shipped)[-1]
    assert ship.weights == {"control": 0.0, "a": 0.0, "b": 1.0} and ship.policy_name == "shipped"
    assert snapshots(services, draft) == []
    # terminal snapshots are written once, not every pass
    run_allocation(services.allocation_store, now=NOW + timedelta(seconds=5))
    assert len(snapshots(services, stopped)) == 1 and len(snapshots(services, shipped)) == 1


def test_bad_experiment_is_skipped_and_others_still_allocated(services: Services) -> None:
    bad = create(services, "alloc-bad")
    good = create(services, "alloc-good")
    with UnitOfWork(services.session_factory) as uow:  # parameters today's code rejects
        exp = uow.session.get(Experiment, bad)
        assert exp is not None
        exp.policy_params = {"no_such_param": 1}
        uow.commit()
    run_allocation(services.allocation_store, now=NOW)
    assert snapshots(services, bad) == [] and len(snapshots(services, good)) == 1


def test_allocation_loop_runs_passes_on_a_cadence(services: Services) -> None:
    create(services, "alloc-loop", policy={"name": "uniform", "params": {}})
    sleeps: list[float] = []
    passes = allocation_loop(services.allocation_store, interval_s=0.01, max_passes=3,
                             sleep=sleeps.append)
    assert passes == 3 and len(sleeps) == 2


def test_auto_stop_writes_the_terminal_snapshot_in_the_same_pass(services: Services) -> None:
    """Regression: after an auto-stop ``/assign`` served the control with propensity 1 under
    the id of the last *running* snapshot until the next allocator pass."""
    exp_id = create(services, "auto-stop", exploration_floor=0.1,
                    sequential={"min_samples": 100, "auto_stop": True},
                    arms=[{"key": "control", "control": True, "variant": {"kind": "popularity"}},
                          {"key": "a", "variant": {"kind": "popularity"}}])
    with UnitOfWork(services.session_factory) as uow:
        for arm, n, x in (("control", 20_000, 1000), ("a", 20_000, 1400)):
            uow.session.add(ArmStats(experiment_id=exp_id, arm_key=arm, partition=0, n=n,
                                     reward_sum=x, reward_sumsq=x, ipw_n=2 * n, ipw_sum=2 * x,
                                     ipw_sumsq=4 * x, ipw_n_sq=4 * n))
        uow.commit()
    run_allocation(services.allocation_store, now=NOW)
    snaps = snapshots(services, exp_id)
    assert [s.policy_name for s in snaps] == ["thompson", "stopped"]
    asg = Assigner(services.assignment_store, seed=1).start(background=False)
    got = asg.assign("auto-stop", "u1")
    assert (got.arm_key, got.propensity, got.snapshot_id) == ("control", 1.0, snaps[-1].id)
    run_allocation(services.allocation_store, now=NOW + timedelta(seconds=5))
    assert len(snapshots(services, exp_id)) == 2  # written once


def test_armlab_allocate_survives_a_postgres_restart(
    services: Services, pg_url: str, pg_server: Any
) -> None:
    """The allocator process keeps running through a PostgreSQL restart and writes snapshots
    again afterwards (it used to exit with an OperationalError)."""
    import os
    import subprocess
    import sys
    import time

    exp_id = create(services, "alloc-restart", policy={"name": "uniform", "params": {}})
    env = dict(os.environ, ARMLAB_DATABASE_URL=pg_url, ARMLAB_LOG_LEVEL="WARNING")
    proc = subprocess.Popen([sys.executable, "-m", "armlab", "allocate", "--interval", "0.2"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def count() -> int:
        with services.session_factory() as s:
            return len(s.scalars(select(AllocationSnapshot.id).where(
                AllocationSnapshot.experiment_id == exp_id)).all())

    def wait_for(n: int, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            try:
                got = count()
            except Exception:  # noqa: BLE001 - the server is restarting
                got = -1
            if got >= n:
                return got
            time.sleep(0.2)
        raise AssertionError(f"fewer than {n} snapshots after {timeout}s")

    try:
        before = wait_for(1)
        pg_server.stop("immediate")
        time.sleep(2.0)  # several passes fail while the server is down
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
        pg_server.start()
        services.engine.dispose()  # this test's own pool holds dead connections
        wait_for(before + 3)
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if not pg_server.is_running():
            pg_server.start()


@pytest.mark.parametrize("action", ["stop", "ship"])
def test_a_manual_stop_or_ship_writes_its_snapshot_in_the_same_transaction(
        services: Services, action: str) -> None:
    """Regression: after a manual stop/ship ``/assign`` served the fixed arm with no snapshot
    id (or the running one's) until the next allocator pass."""
    from armlab.services import registry

    exp_id = create(services, f"manual-{action}",
                    arms=[{"key": "control", "control": True, "variant": {"kind": "popularity"}},
                          {"key": "a", "variant": {"kind": "popularity"}}])
    run_allocation(services.allocation_store, now=NOW)
    with UnitOfWork(services.session_factory) as uow:
        if action == "stop":
            registry.stop_experiment(uow, key=f"manual-{action}", actor="t", reason="r")
        else:
            registry.ship_experiment(uow, key=f"manual-{action}", arm="a", actor="t",
                                     reason="r", force=True)
        uow.commit()
    snaps = snapshots(services, exp_id)
    fixed = "control" if action == "stop" else "a"
    assert snaps[-1].policy_name == ("stopped" if action == "stop" else "shipped")
    assert snaps[-1].weights == {"control": float(fixed == "control"), "a": float(fixed == "a")}
    asg = Assigner(services.assignment_store, seed=1).start(background=False)
    got = asg.assign(f"manual-{action}", "u1")
    assert (got.arm_key, got.propensity, got.snapshot_id) == (fixed, 1.0, snaps[-1].id)
    run_allocation(services.allocation_store, now=NOW + timedelta(seconds=5))
    assert len(snapshots(services, exp_id)) == len(snaps)  # the allocator adds no duplicate
