"""A/A experiments through the whole embedded platform: assignment (the Assigner), events
(MemoryBus -> IngestRunner -> SQLite), the allocator's passes (snapshots, decisions) and the
results endpoint's view. Both arms have the same click rate, so every ``treatment_better`` /
``treatment_worse`` is a false positive and every SRM mismatch a false alarm.

Small on purpose (seconds): it catches a gross failure of the platform path (the statistics
are checked at size by ``armlab simulate validity``), such as user units analysed per
impression (SRM false alarms in most runs) or a look that is shown and then taken back.
"""

from __future__ import annotations

import math
import random
from datetime import timedelta
from typing import Any

import pytest

from armlab.adapters.db.uow import UnitOfWork
from armlab.adapters.kafka.memory import MemoryBus
from armlab.bootstrap import bootstrap
from armlab.core.specs import ExperimentSpec
from armlab.core.stats.validity_cell import CellConfig
from armlab.core.stats.validity_grid import run_cell
from armlab.services import registry
from armlab.services.allocator import run_allocation
from armlab.services.assignment import Assigner
from armlab.services.results import build_results
from armlab.settings import Settings
from tests.builders import experiment_spec
from tests.platform_sim import T0, allocator_pass, serve

WINDOW_S = 60


def _spec(key: str, unit: str, sequential: dict[str, Any] | None = None) -> ExperimentSpec:
    return experiment_spec(key, unit=unit, exploration_floor=0.1,
                           attribution_window_s=WINDOW_S, policy={"name": "thompson"},
                           salt=key, sequential=sequential or {"min_samples": 100})


def _run_aa(url: str, *, unit: str, experiments: int, rounds: int, per_round: int,
            rate: float, seed: int, lift: float = 1.0,
            sequential: dict[str, Any] | None = None) -> dict[str, Any]:
    """``experiments`` experiments side by side, ``rounds`` allocator passes of ``per_round``
    impressions each; A/A unless ``lift`` (arm t1's click rate is ``lift`` x the control's)."""
    services = bootstrap(Settings(database_url=url, transport="memory"))
    bus = MemoryBus(default_partitions=2)
    runner = bootstrap(services.settings, engine=services.engine, bus=bus).ingest_runner()
    s = services.settings
    keys = [f"aa{i}" for i in range(experiments)]
    with UnitOfWork(services.session_factory) as uow:
        for k in keys:
            registry.create_experiment(uow, spec=_spec(k, unit, sequential), actor="t")
            registry.start_experiment(uow, key=k, actor="t")
        uow.commit()
    asg = Assigner(services.assignment_store, seed=seed).start(background=False)
    rng = random.Random(seed)
    user_rate: dict[str, float] = {}
    n = 0
    shown_p: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(rounds):
        for k in keys:
            for _ in range(per_round):
                if unit == "user":  # 10 impressions per user, click rates vary by user
                    uid = f"{k}-u{n // 10}"
                    q = user_rate.setdefault(uid, rng.betavariate(rate * 5.67,
                                                                  (1 - rate) * 5.67))
                else:
                    uid, q = f"{k}-r{n}", rate
                serve(bus, s, asg, k, uid, n, T0 + timedelta(seconds=r * 10),
                      lambda arm, q=q: rng.random() < (q * lift if arm == "t1" else q))
                n += 1
        allocator_pass(services, runner, asg, T0 + timedelta(seconds=r * 10 + WINDOW_S + 1),
                       shown_p)
    decided, better, srm, counted = 0, 0, 0, 0
    with UnitOfWork(services.session_factory) as uow:
        for k in keys:
            exp = registry.get_experiment(uow, key=k)
            counted += sum(int(t.n) for t in uow.evidence.arm_sums(exp.id).values())
            rows = uow.evidence.latest_decisions(exp.id)
            ev = build_results(uow, exp)["sequential"]
            decided += any(d.decision in ("treatment_better", "treatment_worse")
                           for d in rows.values())
            better += any(d.decision == "treatment_better" for d in rows.values())
            srm += bool(ev["srm"]["mismatch"])
    asg.close()
    services.close()
    assert counted == n, f"the platform counted {counted} of {n} impressions"
    return {"fpr": decided / experiments, "power": better / experiments,
            "srm": srm / experiments, "shown_p": shown_p}


@pytest.mark.parametrize("boundary", ["mixture", "horizon"])
def test_power_through_the_platform_is_the_grids(sqlite_url: str, boundary: str) -> None:
    """The platform decides a real effect as often as the validity grid's simulation of the
    same design says it should (issue 24: the power figures hold through the platform, not
    only in the core): click rate 0.1 -> 0.18, floor 0.1, Thompson, a look and an allocation
    every 300 impressions, 3,000 impressions (the grid's ``max_n`` counts per arm: 1,500),
    the default boundary and the horizon boundary. The grid's power comes from the same
    run's core simulation (400 reps, a fraction of a second), the platform's from 16
    experiments, so the check is within 3 binomial SE: it catches a platform that loses the
    grid's power (a horizon never reached, a plan frozen too early, a look gate the grid does
    not have), not a few points."""
    experiments, rounds, per_round, rate, lift = 16, 10, 300, 0.1, 1.8
    sequential = {"min_samples": 100, "min_events": 30, "max_n": rounds * per_round,
                  "boundary": boundary}
    out = _run_aa(sqlite_url, unit="request", experiments=experiments, rounds=rounds,
                  per_round=per_round, rate=rate, seed=5, lift=lift, sequential=sequential)
    cell = run_cell(CellConfig(base_rate=rate, lift=lift, floor=0.1,
                               max_n=rounds * per_round // 2, look_every=per_round,
                               alloc_every=per_round, reps=400, reps_alt=400, seed=1))
    grid = cell["analyses"]["armlab" if boundary == "mixture" else "armlab_horizon"]["power"]
    se = math.sqrt(max(grid * (1 - grid), 0.05) / experiments)
    assert grid >= 0.5, grid  # an effect the design should usually find
    assert abs(out["power"] - grid) <= 3 * se, (out["power"], grid)


@pytest.mark.parametrize("unit", ["request", "user"])
def test_aa_through_the_platform_stays_within_alpha(sqlite_url: str, unit: str) -> None:
    experiments = 20
    out = _run_aa(sqlite_url, unit=unit, experiments=experiments, rounds=10, per_round=100,
                  rate=0.05, seed=7)
    alpha = 0.05
    assert out["fpr"] <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / experiments), out["fpr"]
    assert out["srm"] <= 1 / experiments  # SRM at alpha 0.001: none expected
    for ps in out["shown_p"].values():  # what the results endpoint showed never rose
        assert all(b <= a for a, b in zip(ps, ps[1:], strict=False)), ps


def test_a_user_unit_experiment_stops_at_its_horizon_counted_in_users(sqlite_url: str) -> None:
    """max_n counts the unit of analysis: 120 users (each seen 5 times, 600 impressions) end
    a user-unit A/A experiment with auto_stop, its arm labelled inconclusive (not futile).
    Before, the horizon was compared in users but documented in impressions, and user-unit
    experiments ran on after their traffic ended."""
    services = bootstrap(Settings(database_url=sqlite_url, transport="memory"))
    bus = MemoryBus(default_partitions=1)
    runner = bootstrap(services.settings, engine=services.engine, bus=bus).ingest_runner()
    s = services.settings
    spec = experiment_spec("hz", unit="user", exploration_floor=0.1, attribution_window_s=WINDOW_S,
                           policy={"name": "uniform"}, salt="hz",
                           sequential={"min_samples": 20, "min_events": 5, "max_n": 120,
                                       "auto_stop": True})
    with UnitOfWork(services.session_factory) as uow:
        registry.create_experiment(uow, spec=spec, actor="t")
        registry.start_experiment(uow, key="hz", actor="t")
        uow.commit()
    asg = Assigner(services.assignment_store, seed=3).start(background=False)
    rng = random.Random(3)
    status, n = "running", 0
    for r in range(30):  # 10 new users per pass, 5 impressions each
        served = T0 + timedelta(seconds=r * 10)
        for u in range(10):
            uid = f"u{r}-{u}"
            for _ in range(5):
                serve(bus, s, asg, "hz", uid, n, served, lambda arm: rng.random() < 0.2)
                n += 1
        runner.drain()
        run_allocation(services.allocation_store,
                       now=T0 + timedelta(seconds=r * 10 + WINDOW_S + 1))
        asg.refresh()
        with UnitOfWork(services.session_factory) as uow:
            exp = registry.get_experiment(uow, key="hz")
            status = exp.status
            if status != "running":
                arms = build_results(uow, exp)["sequential"]["arms"]
                break
    asg.close()
    services.close()
    assert status == "stopped", "a user-unit experiment must stop at max_n users"
    assert 120 <= (r + 1) * 10 <= 140  # at the horizon (a pass later at most)
    assert arms[0]["decision"] in ("inconclusive", "treatment_better", "treatment_worse")
    assert arms[0]["decision"] != "futile"
