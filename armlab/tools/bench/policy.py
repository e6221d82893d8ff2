"""``armlab bench policy``: regret and decision speed against MABWiser, in the same run.

MABWiser (Strong, Kleynhans, Kadioglu 2021) is imported lazily here only (dev extra); the rest
of ``armlab.core.policies`` stays numpy/scipy-only. MABWiser advances one round per
``predict``/``partial_fit`` pair (~0.4 ms/round on this machine), so a 50-seed x 50,000-round
run per config takes hours; the default runs it on fewer seeds and configs, and the JSON says
exactly what ran (``--mab-seeds 50 --mab-configs all`` is the full run).
"""

from __future__ import annotations

import platform
import time
from typing import Any

import numpy as np

from armlab.core.policies import CdfSampler, PolicyStats, make_policy, select_many
from armlab.core.policies.regret_simulation import default_sim_params, simulate_bandit
from armlab.errors import PolicyError

CONFIGS: dict[str, list[float]] = {
    "k3_hard": [0.05, 0.04, 0.04],
    "k3_easy": [0.10, 0.05, 0.05],
    "k5_hard": [0.05] + [0.04] * 4,
    "k5_easy": [0.10] + [0.05] * 4,
    "k10_hard": [0.05] + [0.04] * 9,
    "k10_easy": [0.10] + [0.05] * 9,
}


def _mabwiser_regret(
    means: list[float], policy: str, horizon: int, seeds: int, seed0: int
) -> dict[str, Any]:
    from mabwiser.mab import MAB, LearningPolicy

    mu = np.asarray(means)
    k = mu.size
    gaps = mu.max() - mu
    regrets = []
    best = []
    t0 = time.perf_counter()
    for s in range(seeds):
        rng = np.random.default_rng(seed0 + s)
        lp = (
            LearningPolicy.ThompsonSampling()
            if policy == "thompson"
            else LearningPolicy.EpsilonGreedy(epsilon=0.1)
        )
        mab = MAB(arms=list(range(k)), learning_policy=lp, seed=seed0 + s)
        us = rng.random(horizon)
        arm = int(rng.integers(k))  # MABWiser needs one fit before predicting: a uniform pull
        mab.fit([arm], [int(us[0] < mu[arm])])
        reg = gaps[arm]
        nbest = int(gaps[arm] == 0)
        for t in range(1, horizon):
            arm = int(mab.predict())
            mab.partial_fit([arm], [int(us[t] < mu[arm])])
            reg += gaps[arm]
            nbest += int(gaps[arm] == 0)
        regrets.append(reg)
        best.append(nbest / horizon)
    r = np.asarray(regrets)
    return {
        "regret_mean": float(r.mean()),
        "regret_se": float(r.std(ddof=1) / np.sqrt(seeds)) if seeds > 1 else None,
        "best_arm_fraction": float(np.mean(best)),
        "seeds": seeds,
        "elapsed_s": round(time.perf_counter() - t0, 2),
    }


def _ratio(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """a/b regret ratio with a delta-method standard error."""
    ra, rb = a["regret_mean"], b["regret_mean"]
    if rb <= 0:
        return {"ratio": None}
    ratio = ra / rb
    sa = (a.get("regret_se") or 0.0) / ra if ra > 0 else 0.0
    sb = (b.get("regret_se") or 0.0) / rb
    return {"ratio": round(ratio, 4), "ratio_se": round(ratio * float(np.hypot(sa, sb)), 4)}


def _slim(d: dict[str, Any]) -> dict[str, Any]:
    keys = ("regret_mean", "regret_se", "best_arm_fraction", "seeds", "elapsed_s")
    return {k: d[k] for k in keys if k in d}


def _best_of(fn: Any, number: int, blocks: int = 5) -> float:
    """Seconds per call: the best of ``blocks`` timed blocks (timeit's rule; the box is shared)."""
    best = float("inf")
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best


def decision_speed(k: int = 10, batch: int = 10_000, repeats: int = 2000) -> dict[str, Any]:
    """One Thompson decision and a batch of ``batch``, armlab vs MABWiser predict."""
    from mabwiser.mab import MAB, LearningPolicy

    rng = np.random.default_rng(0)
    n = np.full(k, 1000.0)
    s = np.floor(n * np.linspace(0.04, 0.06, k))
    a, b = 1.0 + s, 1.0 + n - s

    # what the platform does per request: draw from the snapshot's P(best) weights
    w = make_policy("thompson").weights(PolicyStats.from_lists(n, s), rng).weights
    sampler = CdfSampler(w.tolist())  # built once per snapshot by the API's assigner
    draw_u = rng.random
    armlab_single = _best_of(lambda: sampler.pick(draw_u()), repeats)
    armlab_batch = _best_of(lambda: select_many(w, rng, batch), 10)
    # classic per-decision posterior sampling (one Beta draw per arm, argmax)
    draw_single = _best_of(lambda: int(np.argmax(rng.beta(a, b))), repeats)
    draw_batch = _best_of(lambda: np.argmax(rng.beta(a, b, size=(batch, k)), axis=1), 10)

    stats = PolicyStats.from_lists(n, s)
    pol = make_policy("thompson")
    t0 = time.perf_counter()
    for _ in range(20):
        pol.weights(stats, rng)
    weights_s = (time.perf_counter() - t0) / 20

    mab = MAB(arms=list(range(k)), learning_policy=LearningPolicy.ThompsonSampling(), seed=0)
    arms = np.repeat(np.arange(k), n.astype(int))
    rewards = np.concatenate(
        [np.r_[np.ones(int(si)), np.zeros(int(ni - si))] for ni, si in zip(n, s, strict=True)]
    )
    mab.fit(arms.tolist(), rewards.tolist())
    mab_single = _best_of(mab.predict, repeats)
    ctx = np.zeros((batch, 1))
    mab_batch = _best_of(lambda: mab.predict(ctx), 2)
    return {
        "arms": k,
        "armlab_single_us": round(armlab_single * 1e6, 2),
        "mabwiser_single_us": round(mab_single * 1e6, 2),
        "single_speedup": round(mab_single / armlab_single, 2),
        "armlab_batch_ms": round(armlab_batch * 1e3, 3),
        "mabwiser_batch_ms": round(mab_batch * 1e3, 3),
        "batch_size": batch,
        "batch_speedup": round(mab_batch / armlab_batch, 2),
        "armlab_weights_quadrature_ms": round(weights_s * 1e3, 2),
        "armlab_posterior_draw_single_us": round(draw_single * 1e6, 2),
        "armlab_posterior_draw_batch_ms": round(draw_batch * 1e3, 3),
        "draw_single_speedup": round(mab_single / draw_single, 2),
        "draw_batch_speedup": round(mab_batch / draw_batch, 2),
        "note": "armlab_single = CdfSampler.pick on the snapshot weights (what the assigner "
        "runs per request); armlab_batch = select_many; "
        "posterior_draw = one Beta draw per arm + argmax per decision",
        "targets": {"single_speedup": ">= 5", "batch_speedup": ">= 10"},
    }


def _mab_names(mab_configs: str, names: list[str]) -> list[str]:
    """The configs MABWiser runs on (``all`` or a comma list), each checked against CONFIGS."""
    mab_names = names if mab_configs == "all" else [c for c in mab_configs.split(",") if c]
    unknown = sorted(set(mab_names) - set(CONFIGS))
    if unknown:
        raise PolicyError(f"unknown --mab-configs {', '.join(unknown)}; valid: {', '.join(names)}")
    return mab_names


def _regret_row(name: str, base: int, *, horizon: int, seeds: int, mab_seeds: int,
                mab_names: list[str]) -> dict[str, Any]:
    """One config: armlab's online and batched Thompson sampling and uniform, and (when the
    config is among ``mab_names``) MABWiser's Thompson and epsilon-greedy; seeds from ``base``."""
    means = CONFIGS[name]
    ts = simulate_bandit(means, policy="thompson", horizon=horizon, seeds=seeds, seed=base)
    tsb = simulate_bandit(
        means,
        policy="thompson",
        horizon=horizon,
        seeds=seeds,
        batch_every=1000,
        params=default_sim_params("thompson", 1000),
        seed=base + 1,
    )
    uni = simulate_bandit(
        means,
        policy="uniform",
        horizon=horizon,
        seeds=seeds,
        batch_every=1000,
        seed=base + 2,
    )
    row: dict[str, Any] = {
        "means": means,
        "armlab_ts_online": _slim(ts),
        "armlab_ts_batch1000": _slim(tsb),
        "uniform": _slim(uni),
        "batch1000_over_online": _ratio(tsb, ts),
    }
    if mab_seeds > 0 and name in mab_names:
        mts = _mabwiser_regret(means, "thompson", horizon, mab_seeds, base + 500)
        meg = _mabwiser_regret(means, "epsilon", horizon, mab_seeds, base + 600)
        row["mabwiser_ts"] = mts
        row["mabwiser_eps0.1"] = meg
        row["armlab_ts_over_mabwiser_ts"] = _ratio(ts, mts)
    return row


def run_policy_bench(
    *,
    seeds: int = 50,
    horizon: int = 50_000,
    mab_seeds: int = 4,
    mab_configs: str = "k3_hard,k3_easy",
    quick: bool = False,
) -> dict[str, Any]:
    if quick:
        seeds, horizon, mab_seeds, mab_configs = 4, 2000, 2, "k3_easy"
    names = list(CONFIGS)
    mab_names = _mab_names(mab_configs, names)
    if quick:
        names = ["k3_easy"]
    t_start = time.perf_counter()
    results: dict[str, Any] = {
        name: _regret_row(name, 1000 * i, horizon=horizon, seeds=seeds, mab_seeds=mab_seeds,
                          mab_names=mab_names)
        for i, name in enumerate(names)
    }
    speed = decision_speed(batch=10_000 if not quick else 1000, repeats=2000 if not quick else 200)
    return {
        "benchmark": "policy",
        "machine": f"{platform.machine()} {platform.system()}, shared 2-core CI VM, no GPU",
        "horizon": horizon,
        "seeds": seeds,
        "mabwiser": {
            "seeds": mab_seeds,
            "configs": mab_names if mab_seeds else [],
            "note": "MABWiser runs online (predict + partial_fit per round); fewer "
            "seeds/configs than armlab because of its per-round cost",
        },
        "batch_weights": "P(best) by Monte Carlo, 1000 draws per seed, every 1000 rounds",
        "targets": {"armlab_ts_over_mabwiser_ts": "<= 1.05", "batch1000_over_online": "<= 1.2"},
        "regret": results,
        "decision_speed": speed,
        "elapsed_s": round(time.perf_counter() - t_start, 1),
        "command": "armlab bench policy --json" + (" --quick" if quick else ""),
    }
