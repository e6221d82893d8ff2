"""CUPED through the whole embedded platform (assignment, events through the MemoryBus and the
IngestRunner into SQLite, the allocator's looks, the results endpoint's view), on users with a
pre-period: each user has one latent click rate (ICC 0.15), and before the experiments started
an earlier experiment served every user 10 impressions (stored impressions, as the platform
keeps them). The experiments are A/A with ``sequential.cuped``, so

* every ``treatment_better`` / ``treatment_worse`` is a false positive (validity with the
  adjustment on, a reduced run: seconds; the statistics at size are the validity grid's), and
* on the same data the adjusted look's confidence sequence is narrower than the unadjusted
  one (the pre-period clicks predict the in-experiment clicks: theta > 0, variance ratio < 1).
"""

from __future__ import annotations

import math
import random
import statistics
from datetime import timedelta
from typing import Any

from armlab.adapters.db.models import Impression
from armlab.adapters.db.uow import UnitOfWork
from armlab.adapters.kafka.memory import MemoryBus
from armlab.bootstrap import bootstrap
from armlab.core.decisions import evaluate
from armlab.services import registry
from armlab.services.assignment import Assigner
from armlab.services.cuped_evidence import apply_cuped
from armlab.services.decisions import analysis_cutoff, analysis_sums, design_of
from armlab.services.results import build_results
from armlab.settings import Settings
from tests.builders import experiment_spec
from tests.platform_sim import T0, allocator_pass, serve

WINDOW_S = 60
ICC = 0.15


def _run(url: str, *, experiments: int, rounds: int, users_per_round: int, per_user: int,
         pre_per_user: int, rate: float, seed: int, lift: float = 1.0,
         cuped: bool = True) -> dict[str, Any]:
    """``experiments`` experiments on their own users (all seen in the pre-period); A/A unless
    ``lift``; ``cuped`` false registers them without it (the same data otherwise)."""
    services = bootstrap(Settings(database_url=url, transport="memory"))
    bus = MemoryBus(default_partitions=2)
    runner = bootstrap(services.settings, engine=services.engine, bus=bus).ingest_runner()
    s = services.settings
    keys = [f"cu{i}" for i in range(experiments)]
    rng = random.Random(seed)
    conc = (1 - ICC) / ICC  # Beta(rate·c, (1 - rate)·c): intra-user correlation ICC
    users = {k: [f"{k}-u{j}" for j in range(rounds * users_per_round)] for k in keys}
    q = {u: rng.betavariate(rate * conc, (1 - rate) * conc)
         for us in users.values() for u in us}
    with UnitOfWork(services.session_factory) as uow:
        pre = registry.create_experiment(uow, spec=experiment_spec(
            "earlier", unit="user", policy={"name": "uniform"}, salt="earlier"), actor="t")
        registry.start_experiment(uow, key="earlier", actor="t")
        for k in keys:
            registry.create_experiment(uow, spec=experiment_spec(
                k, unit="user", exploration_floor=0.1, attribution_window_s=WINDOW_S,
                policy={"name": "thompson"}, salt=k,
                sequential={"min_samples": 20, "min_events": 10, **(
                    {"cuped": {"pre_period_days": 7}} if cuped else {})}), actor="t")
            registry.start_experiment(uow, key=k, actor="t").started_at = T0
        uow.commit()
        pre_id = pre.id
    # the pre-period: what the earlier experiment served the same users (stored impressions)
    with services.session_factory() as session, session.begin():
        session.add_all(
            Impression(impression_id=f"pre{u}-{j}", event_id=f"pe{u}-{j}",
                       experiment_id=pre_id, arm_key="control", unit_id=u, propensity=0.5,
                       served_at=T0 - timedelta(days=2, minutes=-j),
                       reward=float(rng.random() < q[u]), feedback_count=0)
            for u in q for j in range(pre_per_user))
    asg = Assigner(services.assignment_store, seed=seed).start(background=False)
    shown_p: dict[str, list[float]] = {k: [] for k in keys}
    n = 0
    for r in range(rounds):
        for k in keys:
            for uid in users[k][r * users_per_round:(r + 1) * users_per_round]:
                for _ in range(per_user):
                    p = q[uid]
                    serve(bus, s, asg, k, uid, n, T0 + timedelta(seconds=r * 10),
                          lambda arm, p=p: rng.random() < (p * lift if arm == "t1" else p))
                    n += 1
        now = T0 + timedelta(seconds=r * 10 + WINDOW_S + 1)
        allocator_pass(services, runner, asg, now, shown_p)
    out: dict[str, Any] = {"decided": 0, "better": 0, "srm": 0, "valid": 0, "ratios": [],
                           "fits": [], "shown_p": shown_p}
    with UnitOfWork(services.session_factory) as uow:
        for k in keys:
            exp = registry.get_experiment(uow, key=k)
            seq = build_results(uow, exp)["sequential"]
            out["fits"].append(seq.get("cuped"))
            out["decided"] += any(a["decision"] in ("treatment_better", "treatment_worse")
                                  for a in seq["arms"])
            out["better"] += any(a["decision"] == "treatment_better" for a in seq["arms"])
            out["srm"] += bool(seq["srm"]["mismatch"])
            out["valid"] += any(a["valid"] for a in seq["arms"])
            # the same data, one fresh look each way: the interval's width with and without
            raw = analysis_sums(uow.evidence, exp, now=now)
            adjusted, _ = apply_cuped(uow.evidence, exp, raw, analysis_cutoff(exp, now))
            design = design_of(exp)
            plain = evaluate(design, raw, {}, now=now).arms[0]
            adj = evaluate(design, adjusted, {}, now=now).arms[0]
            if plain.valid and adj.valid:
                assert plain.ci_low is not None and plain.ci_high is not None
                assert adj.ci_low is not None and adj.ci_high is not None
                out["ratios"].append((adj.ci_high - adj.ci_low) / (plain.ci_high - plain.ci_low))
    asg.close()
    services.close()
    return out


def test_cuped_through_the_platform_narrows_the_interval_and_keeps_aa_valid(
        sqlite_url: str) -> None:
    experiments = 16
    out = _run(sqlite_url, experiments=experiments, rounds=8, users_per_round=25, per_user=5,
               pre_per_user=10, rate=0.1, seed=11)
    alpha = 0.05
    # the looks carried evidence (else the A/A below says nothing)
    assert out["valid"] >= experiments * 3 // 4, out["valid"]
    assert out["decided"] / experiments <= alpha + 3 * math.sqrt(alpha * (1 - alpha)
                                                                 / experiments), out["decided"]
    assert out["srm"] <= 1
    for ps in out["shown_p"].values():  # what the results endpoint showed never rose
        assert all(b <= a for a, b in zip(ps, ps[1:], strict=False)), ps
    fits = out["fits"]
    assert all(f["applied"] and f["pre_units"] == f["units"] for f in fits)  # all seen before
    assert statistics.median(f["theta"] for f in fits) > 0.1
    assert statistics.median(f["variance_ratio"] for f in fits) < 0.85
    ratios = out["ratios"]
    assert len(ratios) >= experiments * 3 // 4
    assert statistics.median(ratios) < 0.92, ratios
    assert sum(r < 1.0 for r in ratios) >= len(ratios) - 1, ratios
