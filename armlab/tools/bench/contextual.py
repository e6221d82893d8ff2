"""``armlab bench contextual``: regret of the contextual policies on a simulated recommender
with segments, against non-contextual Thompson sampling and peers, and decision latency.

Peers (the ``bench`` extra, imported lazily here only): Vowpal Wabbit's ``cb_explore_adf``
(epsilon-greedy and SquareCB exploration, segment x arm interactions) and MABWiser's LinTS on
one-hot segment features. They run on the same scenarios with the same batch schedule as
armlab (the model is fixed for ``batch_every`` rounds, then learns them), one seed at a time
(they are not vectorised), so they get fewer seeds; a peer that is not installed is reported
as such, never estimated.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

import numpy as np

from armlab.core.policies import CdfSampler, PolicyStats, ThompsonSampling, ThompsonSettings
from armlab.core.policies.contextual import SegmentStats, SegmentThompson, SegmentThompsonSettings
from armlab.core.policies.contextual_simulation import (
    SCENARIOS,
    SIMULATED_POLICIES,
    Scenario,
    simulate_contextual,
)
from armlab.core.policies.linear_thompson import (
    LinearStats,
    LinearThompson,
    LinearThompsonSettings,
)

#: A peer: (rng, scenario, horizon, batch_every, seed) -> per-seed regret of one run.
PeerRun = Callable[[np.random.Generator, Scenario, int, int, int], float]


def _rounds(rng: np.random.Generator, sc: Scenario, m: int) -> tuple[np.ndarray, np.ndarray]:
    mu, q = sc.arrays()
    g = np.minimum(np.searchsorted(np.cumsum(q), rng.random(m), side="right"), len(q) - 1)
    return g, rng.random(m)


def _vw_run(explore: str) -> PeerRun:
    def run(rng: np.random.Generator, sc: Scenario, horizon: int, batch: int, seed: int) -> float:
        import vowpalwabbit

        mu, _ = sc.arrays()
        k = mu.shape[1]
        vw = vowpalwabbit.Workspace(
            f"--cb_explore_adf -q sa --quiet {explore} --random_seed {seed}")
        actions = [f"|a arm={a}" for a in range(k)]
        regret, t = 0.0, 0
        while t < horizon:
            m = min(batch, horizon - t)
            g, u = _rounds(rng, sc, m)
            shared = [f"shared |s seg={sc.levels[int(x)]}" for x in g]
            chosen = []
            for i in range(m):  # the model is fixed for the batch: predict all, then learn
                pmf = np.asarray(vw.predict([shared[i], *actions]), dtype=np.float64)
                pmf /= pmf.sum()
                a = min(int(np.searchsorted(np.cumsum(pmf), rng.random(), side="right")), k - 1)
                chosen.append((a, float(pmf[a])))
            for i, (a, p) in enumerate(chosen):
                click = u[i] < mu[g[i], a]
                regret += mu[g[i]].max() - mu[g[i], a]
                lines = [f"0:{-1.0 if click else 0.0}:{p} {x}" if j == a else x
                         for j, x in enumerate(actions)]
                vw.learn([shared[i], *lines])
            t += m
        vw.finish()
        return regret

    return run


def _mabwiser_lints(alpha: float) -> PeerRun:
    def run(rng: np.random.Generator, sc: Scenario, horizon: int, batch: int, seed: int) -> float:
        from mabwiser.mab import MAB, LearningPolicy

        mu, _ = sc.arrays()
        n_seg, k = mu.shape
        mab = MAB(list(range(k)), LearningPolicy.LinTS(alpha=alpha, l2_lambda=1.0), seed=seed)
        regret, t, fitted = 0.0, 0, False
        while t < horizon:
            m = min(batch, horizon - t)
            g, u = _rounds(rng, sc, m)
            x = np.eye(n_seg)[g]
            arms = (np.asarray(mab.predict(x), dtype=np.int64).reshape(m) if fitted
                    else rng.integers(0, k, m))  # MABWiser needs a first fit: one uniform batch
            r = (u < mu[g, arms]).astype(np.float64)
            regret += float((mu[g].max(axis=1) - mu[g, arms]).sum())
            (mab.partial_fit if fitted else mab.fit)(list(arms), list(r), x)
            fitted, t = True, t + m
        return regret

    return run


PEERS: dict[str, tuple[str, PeerRun]] = {
    "vw_cb_explore_adf_epsilon0.05": ("vowpalwabbit", _vw_run("--epsilon 0.05")),
    "vw_cb_explore_adf_squarecb": ("vowpalwabbit", _vw_run("--squarecb")),
    "mabwiser_lints_alpha1": ("mabwiser", _mabwiser_lints(1.0)),
    "mabwiser_lints_alpha0.15": ("mabwiser", _mabwiser_lints(0.15)),
}


def _installed(module: str) -> str | None:
    """The installed distribution's version, or None when it cannot be imported."""
    try:
        __import__(module)
    except ImportError:
        return None
    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return "installed"


def _peer(name: str, sc: Scenario, horizon: int, batch: int, seeds: int,
          seed0: int) -> dict[str, Any]:
    module, run = PEERS[name]
    version = _installed(module)
    if version is None:
        return {"installed": False,
                "note": f"{module} is not installed (pip install armlab[bench]); not run"}
    t0 = time.perf_counter()
    regrets = np.array([run(np.random.default_rng(seed0 + s), sc, horizon, batch, seed0 + s)
                        for s in range(seeds)])
    return {
        "installed": True, "version": version, "seeds": seeds,
        "regret_mean": float(regrets.mean()),
        "regret_se": float(regrets.std(ddof=1) / np.sqrt(seeds)) if seeds > 1 else None,
        "elapsed_s": round(time.perf_counter() - t0, 2),
    }


def _ratio(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """a/b regret ratio with a delta-method standard error (independent runs)."""
    ra, rb = a["regret_mean"], b["regret_mean"]
    if rb <= 0:
        return {"ratio": None}
    rel = [(d.get("regret_se") or 0.0) / d["regret_mean"] if d["regret_mean"] > 0 else 0.0
           for d in (a, b)]
    return {"ratio": round(ra / rb, 3),
            "se": round(ra / rb * float(np.hypot(rel[0], rel[1])), 3)}


def _scenario_row(sc: Scenario, *, horizon: int, seeds: int, peer_seeds: int,
                  batch_every: int, seed: int) -> dict[str, Any]:
    row: dict[str, Any] = {"mu": [list(r) for r in sc.mu], "segment_shares": list(sc.q)}
    for pol in SIMULATED_POLICIES:
        res = simulate_contextual(sc, pol, horizon=horizon, seeds=seeds,
                                  batch_every=batch_every, seed=seed)
        res.pop("regret_per_seed")
        row[f"armlab_{pol}"] = res
    # the linear policy without the model average (pooling: none): the per-context model
    # alone (MABWiser's LinTS model at the same scale), and with the empirical-Bayes one-hot
    # prior (the default before the model average), each trading one scenario for another
    for label, params in (("unpooled", {"pooling": "none"}),
                          ("empirical_bayes", {"pooling": "none",
                                               "onehot_ridge": "empirical_bayes"})):
        res = simulate_contextual(sc, "linear_thompson", horizon=horizon, seeds=seeds,
                                  batch_every=batch_every, seed=seed, params=params)
        res.pop("regret_per_seed")
        row[f"armlab_linear_thompson_{label}"] = res
    peers: dict[str, dict[str, Any]] = {
        name: (_peer(name, sc, horizon, batch_every, peer_seeds, seed + 1000)
               if peer_seeds > 0 else {"installed": None, "note": "--peer-seeds 0"})
        for name in PEERS}
    row["peers"] = peers
    ran = {n: p for n, p in peers.items() if p.get("regret_mean") is not None}
    best = min(ran, key=lambda n: float(ran[n]["regret_mean"])) if ran else None
    row["best_peer"] = best
    base = row["armlab_thompson"]
    for pol in ("segment_thompson", "linear_thompson", "linear_thompson_unpooled",
                "linear_thompson_empirical_bayes"):
        mine = row[f"armlab_{pol}"]
        row[f"{pol}_over_thompson"] = _ratio(mine, base)
        row[f"{pol}_over_best_peer"] = _ratio(mine, ran[best]) if best else None
    return row


def _per_call(fn: Callable[[], object], number: int) -> float:
    """Best of 5 blocks of ``number`` calls: seconds per call."""
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best


def decision_latency(number: int = 500) -> dict[str, Any]:
    """Per-call cost of a decision for a fixed posterior: contextual vs non-contextual."""
    rng = np.random.default_rng(0)
    sc = SCENARIOS["segments_differ"]
    feats = sc.features()
    n = np.full((4, 3), 500.0)
    s = n * np.asarray([*sc.mu, (0.05, 0.04, 0.03)])
    pooled = PolicyStats.from_lists(n.sum(0), s.sum(0))
    ts = ThompsonSampling(ThompsonSettings())
    sampler = CdfSampler(ts.weights(pooled, rng).weights.tolist())
    seg = SegmentThompson(SegmentThompsonSettings(features=feats, floor=0.02))
    seg_alloc = seg.allocate(SegmentStats(n, s), rng)
    lin = LinearThompson(LinearThompsonSettings(features=feats, floor=0.02))
    ctx = [{"segment": sc.levels[i % 3]} for i in range(6000)]
    arms = rng.integers(0, 3, 6000)
    lin_stats = lin.update(LinearStats.empty(3, lin.spec.dim), ctx, arms,
                           (rng.random(6000) < 0.05).astype(float))
    lin_alloc = lin.allocate(lin_stats)
    one = {"segment": "s1"}
    batch = ctx[:1000]
    # a numeric feature: every context is new to the snapshot (no cache hits)
    num = LinearThompson(LinearThompsonSettings(
        features=[*feats, {"name": "recency", "kind": "numeric"}], floor=0.02))
    fresh = [{"segment": sc.levels[i % 3], "recency": float(v)}
             for i, v in enumerate(rng.random(6000))]
    num_alloc = num.allocate(num.update(LinearStats.empty(3, num.spec.dim), fresh, arms,
                                        (rng.random(6000) < 0.05).astype(float)))
    it = iter(fresh * 10)
    return {
        "arms": 3,
        "thompson_weights_quadrature_us": round(_per_call(lambda: ts.weights(pooled, rng),
                                                          number // 5) * 1e6, 1),
        "thompson_serve_cdf_sampler_us": round(_per_call(lambda: sampler.pick(rng.random()),
                                                         number * 10) * 1e6, 2),
        "segment_thompson_allocate_us": round(_per_call(lambda: seg.allocate(
            SegmentStats(n, s), rng), number // 5) * 1e6, 1),
        "segment_thompson_decide_us": round(_per_call(lambda: seg_alloc.decide(one, rng),
                                                      number * 10) * 1e6, 2),
        "linear_thompson_allocate_us": round(_per_call(lambda: lin.allocate(lin_stats),
                                                       number // 5) * 1e6, 1),
        "linear_thompson_decide_repeated_context_us": round(_per_call(
            lambda: lin_alloc.decide(one, rng), number * 10) * 1e6, 2),
        "linear_thompson_decide_new_context_us": round(_per_call(
            lambda: num_alloc.decide(next(it), rng), number) * 1e6, 1),
        "linear_thompson_decide_many_us_per_context": round(_per_call(
            lambda: lin_alloc.decide_many(batch, rng), 5) * 1e6 / len(batch), 2),
    }


def run_contextual_bench(*, horizon: int = 20_000, seeds: int = 20, peer_seeds: int = 4,
                         batch_every: int = 100, seed: int = 2026,
                         latency: bool = True) -> dict[str, Any]:
    """Every scenario's regret table, the ratios, the targets and the decision latency."""
    t0 = time.perf_counter()
    rows = {name: _scenario_row(sc, horizon=horizon, seeds=seeds, peer_seeds=peer_seeds,
                                batch_every=batch_every, seed=seed + 100 * i)
            for i, (name, sc) in enumerate(SCENARIOS.items())}
    out: dict[str, Any] = {
        "bench": "contextual",
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine()},
        "sizes": {"horizon": horizon, "seeds": seeds, "peer_seeds": peer_seeds,
                  "batch_every": batch_every, "seed": seed},
        "scenarios": rows,
        "targets": {
            "segments_differ": "contextual regret <= 0.5 x thompson; <= best peer within noise",
            "segments_same": "contextual regret <= thompson within noise",
            "segments_main_effect": "contextual regret <= thompson within noise (the best "
                                    "variant does not differ by segment)",
            "segments_differ_low_ctr": "as segments_differ, at a tenth of the click rates",
            "segments_same_low_ctr": "as segments_same, at a tenth of the click rates",
        },
    }
    if latency:
        out["decision_latency"] = decision_latency()
    out["elapsed_s"] = round(time.perf_counter() - t0, 1)
    return out


__all__ = ["PEERS", "decision_latency", "run_contextual_bench"]
