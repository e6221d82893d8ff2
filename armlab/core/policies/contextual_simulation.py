"""A simulated recommender with segments, vectorised across seeds: regret of the contextual
policies against non-contextual Thompson sampling.

Each round a user arrives from segment g with probability ``q_g`` (the context
``{"segment": <level>}``) and clicks the served variant k with probability ``mu[g, k]``. As
on the platform, weights are recomputed from all matured data every ``batch_every`` rounds
and the next rounds are drawn from them (per context). Regret is the cumulative
pseudo-regret against the best variant *of each round's segment*,
sum_t (max_k mu[g_t, k] - mu[g_t, a_t]) (Lattimore & Szepesvari 2020, Sec. 18.1), averaged over
seeds with its standard error. All seeds advance together as rows of (S, ...) arrays.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from armlab.core.policies.base import FloatArray, apply_floor
from armlab.core.policies.context_features import ContextParams, ContextSpec
from armlab.core.policies.contextual import (
    SegmentThompsonSettings,
    prob_best_beta_mc,
    segment_weights,
)
from armlab.core.policies.linear_thompson import (
    LinearThompsonSettings,
    fit_linear,
    linear_weights,
)
from armlab.core.policies.thompson import (
    ThompsonSettings,
    beta_posterior,
    prob_best_beta_quadrature,
)
from armlab.errors import PolicyError

IntArray = npt.NDArray[np.int64]
SIMULATED_POLICIES = ("segment_thompson", "linear_thompson", "thompson")


@dataclass(frozen=True)
class Scenario:
    """Click rates ``mu`` (G, K) per (segment, variant) and segment shares ``q`` (G,)."""

    name: str
    mu: tuple[tuple[float, ...], ...]
    q: tuple[float, ...]

    @property
    def levels(self) -> list[str]:
        return [f"s{g}" for g in range(len(self.q))]

    def features(self) -> list[dict[str, Any]]:
        return [{"name": "segment", "kind": "categorical", "levels": self.levels}]

    def arrays(self) -> tuple[FloatArray, FloatArray]:
        mu = np.asarray(self.mu, dtype=np.float64)
        q = np.asarray(self.q, dtype=np.float64)
        if mu.ndim != 2 or mu.shape[0] != q.shape[0] or mu.shape[1] < 2:
            raise PolicyError(f"scenario {self.name}: mu must be (segments, >= 2 arms)")
        if np.any((mu < 0) | (mu > 1)) or np.any(q < 0) or not np.isclose(q.sum(), 1.0):
            raise PolicyError(f"scenario {self.name}: rates in [0, 1], shares summing to 1")
        return mu, q


#: The best variant differs by segment (each segment's best is 0.02-0.04 above the others)
#: and, pooled, every variant is close (0.043-0.047): a non-contextual policy cannot do well.
DIFFER = Scenario(
    "segments_differ",
    ((0.06, 0.04, 0.03), (0.03, 0.07, 0.04), (0.02, 0.03, 0.08)),
    (0.5, 0.3, 0.2),
)
#: The same rates in every segment: segmenting can only cost.
SAME = Scenario(
    "segments_same",
    ((0.05, 0.04, 0.03), (0.05, 0.04, 0.03), (0.05, 0.04, 0.03)),
    (0.5, 0.3, 0.2),
)
#: The best variant is the same everywhere (0.8 and 0.6 of it for the others), but the
#: segments' click rates differ fourfold (0.08 / 0.04 / 0.02): what real segments such as
#: history length look like when a variant wins everywhere. Per-arm models see segment
#: "heterogeneity" that does not change the best arm.
MAIN_EFFECT = Scenario(
    "segments_main_effect",
    ((0.08, 0.064, 0.048), (0.04, 0.032, 0.024), (0.02, 0.016, 0.012)),
    (0.5, 0.3, 0.2),
)
#: DIFFER and SAME at a tenth of their click rates (0.2-0.8%, as real recommendation traffic):
#: the gaps shrink with the rates, so every policy needs ten times the traffic per decision.
DIFFER_LOW = Scenario("segments_differ_low_ctr",
                      tuple(tuple(r / 10 for r in row) for row in DIFFER.mu), DIFFER.q)
SAME_LOW = Scenario("segments_same_low_ctr",
                    tuple(tuple(r / 10 for r in row) for row in SAME.mu), SAME.q)
SCENARIOS = {s.name: s for s in (DIFFER, SAME, MAIN_EFFECT, DIFFER_LOW, SAME_LOW)}


def default_params(policy: str) -> dict[str, Any]:
    """Simulation settings: Monte Carlo P(best) (1,000 draws) for the Beta policies, as
    :func:`armlab.core.policies.regret_simulation.default_sim_params` does."""
    if policy in ("segment_thompson", "thompson"):
        return {"method": "monte_carlo", "n_draws": 1000}
    return {}


@dataclass
class _State:
    n: FloatArray  # (S, G, K)
    s: FloatArray  # (S, G, K)
    xtx: FloatArray | None = None  # (S, K, d, d)
    xty: FloatArray | None = None  # (S, K, d)


def _weights(policy: str, st: Any, state: _State, g: IntArray, xg: FloatArray,
             spec: ContextSpec, rng: np.random.Generator) -> FloatArray:
    """(S, B, K) serving weights of each round's context; g (S, B) segment indices."""
    seeds = g.shape[0]
    rows = np.arange(seeds)[:, None]
    k = state.n.shape[2]
    if policy == "segment_thompson":
        w, _, _, _ = segment_weights(state.n, state.s, st, rng)  # (S, G, K)
        return w[rows, g]
    if policy == "thompson":
        n, s = state.n.sum(axis=1), state.s.sum(axis=1)  # (S, K)
        a, b = beta_posterior(n, s, st.prior_alpha, st.prior_beta)
        if st.method == "monte_carlo":
            p, _ = prob_best_beta_mc(a, b, st.n_draws, rng)
        else:
            p, _ = prob_best_beta_quadrature(a, b, st.grid)
        if st.burn_in > 0:
            p = np.where(np.any(n < st.burn_in, axis=1, keepdims=True), 1.0 / k, p)
        w = apply_floor(p, st.floor)
        return np.broadcast_to(w[:, None, :], (*g.shape, k))
    assert state.xtx is not None and state.xty is not None
    model = fit_linear(spec, st, state.xtx, state.xty)
    # every context here is one of the G segment vectors: weights per segment, then per round
    wg, _ = linear_weights(np.broadcast_to(xg, (seeds, *xg.shape)), model.mean, model.cov,
                           st.floor, st.grid, model.pooled, model.context_weight)  # (S, G, K)
    w = wg[rows, g]
    if st.burn_in > 0:
        burning = np.any(state.n.sum(axis=1) < st.burn_in, axis=1)
        w = np.where(burning[:, None, None], 1.0 / k, w)
    return w


def _settings(policy: str, features: list[dict[str, Any]], params: dict[str, Any],
              floor: float, burn_in: int) -> Any:
    common: dict[str, Any] = {"floor": float(floor), "burn_in": burn_in}
    if policy == "segment_thompson":
        return SegmentThompsonSettings(features=features, **params, **common)
    if policy == "linear_thompson":
        return LinearThompsonSettings(features=features, **params, **common)
    if policy == "thompson":
        return ThompsonSettings(**params, **common)
    raise PolicyError(f"unknown policy {policy!r}; valid: {', '.join(SIMULATED_POLICIES)}")


def simulate_contextual(
    scenario: Scenario,
    policy: str,
    *,
    horizon: int = 20_000,
    seeds: int = 20,
    batch_every: int = 100,
    floor: float = 0.0,
    burn_in: int = 0,
    params: dict[str, Any] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Simulate ``seeds`` independent runs of ``policy`` on ``scenario``; regret summary."""
    if horizon < 1 or seeds < 1 or batch_every < 1:
        raise PolicyError("horizon, seeds and batch_every must all be >= 1")
    mu, q = scenario.arrays()
    n_seg, k = mu.shape
    features = scenario.features()
    p = default_params(policy) if params is None else dict(params)
    st = _settings(policy, features, p, floor, burn_in)
    spec = ContextSpec(ContextParams(features=features).features)
    xg = spec.encode_many([{"segment": lev} for lev in scenario.levels])  # (G, d)
    d = xg.shape[1]
    state = _State(np.zeros((seeds, n_seg, k)), np.zeros((seeds, n_seg, k)))
    if policy == "linear_thompson":
        state.xtx, state.xty = np.zeros((seeds, k, d, d)), np.zeros((seeds, k, d))
    rng = np.random.default_rng(seed)
    best, regret, best_pulls = mu.max(axis=1), np.zeros(seeds), np.zeros(seeds)
    cq = np.cumsum(q)
    t0, t = time.perf_counter(), 0
    while t < horizon:
        m = min(batch_every, horizon - t)
        g = np.minimum(np.searchsorted(cq, rng.random((seeds, m)), side="right"), n_seg - 1)
        w = _weights(policy, st, state, g, xg, spec, rng)
        cdf = np.cumsum(w, axis=2)
        u = rng.random((seeds, m, 1)) * cdf[:, :, -1:]
        arms = np.minimum((u >= cdf).sum(axis=2), k - 1)
        r = (rng.random((seeds, m)) < mu[g, arms]).astype(np.float64)
        regret += (best[g] - mu[g, arms]).sum(axis=1)
        best_pulls += (mu[g, arms] == best[g]).sum(axis=1)
        _update(state, g, arms, r, xg)
        t += m
    return {
        "policy": policy,
        "scenario": scenario.name,
        "horizon": horizon,
        "seeds": seeds,
        "batch_every": batch_every,
        "floor": floor,
        "burn_in": burn_in,
        "params": p,
        "regret_mean": float(regret.mean()),
        "regret_se": float(regret.std(ddof=1) / np.sqrt(seeds)) if seeds > 1 else None,
        "regret_per_seed": regret.tolist(),
        "best_arm_fraction": float(best_pulls.mean() / horizon),
        "elapsed_s": round(time.perf_counter() - t0, 3),
        "seed": seed,
    }


def _update(state: _State, g: IntArray, arms: IntArray, r: FloatArray, xg: FloatArray) -> None:
    seeds, m = g.shape
    n_seg, k = state.n.shape[1:]
    idx = ((np.arange(seeds)[:, None] * n_seg + g) * k + arms).ravel()
    size = seeds * n_seg * k
    state.n += np.bincount(idx, minlength=size).reshape(state.n.shape)
    state.s += np.bincount(idx, weights=r.ravel(), minlength=size).reshape(state.s.shape)
    if state.xtx is not None and state.xty is not None:
        x = xg[g]  # (S, B, d)
        onehot = np.eye(k)[arms]  # (S, B, K)
        state.xtx += np.einsum("sbk,sbi,sbj->skij", onehot, x, x)
        state.xty += np.einsum("sbk,sbi,sb->ski", onehot, x, r)


__all__ = [
    "SIMULATED_POLICIES",
    "DIFFER",
    "DIFFER_LOW",
    "MAIN_EFFECT",
    "SAME",
    "SAME_LOW",
    "SCENARIOS",
    "Scenario",
    "default_params",
    "simulate_contextual",
]
