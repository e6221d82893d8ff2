"""Monte Carlo evidence for the sequential tests under continuous monitoring.

Two Bernoulli arms (control a, treatment b), a look every ``peek_every`` observations per arm
(2·peek_every impressions per batch), stop at the first rejection or at ``max_n`` per arm
(2·max_n impressions). Vectorised over replications: every quantity is an array of shape
(reps,).

Allocation
- fixed: 50/50 (exactly peek_every per arm per batch, propensity 1/2).
- thompson: armlab's Thompson sampling in batches: before each batch the weight of b is the
  Beta(1+S, 1+F) posterior probability that b is best (Monte Carlo, ``ts_draws`` draws),
  projected onto the exploration floor as armlab.core.policies.apply_floor does (for two arms:
  clipped to [floor, 1 - floor]); the batch's arms are drawn with those weights, which are the
  logged propensities. (A private copy of the policy:
  ``armlab.core.stats`` may not import ``armlab.core.policies``.)

Methods
- naive-z: pooled two-proportion z-test at level alpha at every look (invalid when peeking).
- msprt: JKPW mSPRT on the per-arm sample means (valid only for fixed allocation).
- armlab: the adaptive-valid IPW test of ``armlab.core.stats.adaptive`` (valid for both).

n reported = observations per arm at the decision: (n_a + n_b)/2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy.stats import norm

from armlab.core.stats.adaptive import ipw_kernel
from armlab.core.stats.msprt import log_lambda, tau2_for_horizon
from armlab.errors import StatsError

FloatArray = npt.NDArray[np.float64]
Allocation = Literal["fixed", "thompson"]
Method = Literal["naive-z", "msprt", "armlab"]
ALLOCATIONS = ("fixed", "thompson")
METHODS = ("naive-z", "msprt", "armlab")


@dataclass(frozen=True)
class SequentialSimConfig:
    allocation: Allocation = "fixed"
    method: Method = "armlab"
    p_control: float = 0.05
    p_treatment: float = 0.05
    max_n: int = 10_000
    peek_every: int = 100
    reps: int = 2_000
    seed: int = 0
    alpha: float = 0.05
    tau2: float | None = None
    floor: float = 0.1
    min_samples: int = 100
    ts_draws: int = 200

    def __post_init__(self) -> None:
        if self.allocation not in ALLOCATIONS:
            raise StatsError(f"allocation must be one of {ALLOCATIONS}, got {self.allocation!r}")
        if self.method not in METHODS:
            raise StatsError(f"method must be one of {METHODS}, got {self.method!r}")
        for name in ("p_control", "p_treatment"):
            v = getattr(self, name)
            if not (0.0 < v < 1.0):
                raise StatsError(f"{name} must lie in (0, 1), got {v!r}")
        if self.max_n < 1 or self.peek_every < 1 or self.peek_every > self.max_n:
            raise StatsError("need 1 <= peek_every <= max_n")
        if self.reps < 1:
            raise StatsError(f"reps must be >= 1, got {self.reps!r}")
        if not (0.0 < self.alpha < 1.0):
            raise StatsError(f"alpha must lie in (0, 1), got {self.alpha!r}")
        if not (0.0 < self.floor <= 0.5):
            raise StatsError(f"floor must lie in (0, 0.5], got {self.floor!r}")
        if self.tau2 is not None and not self.tau2 > 0:
            raise StatsError(f"tau2 must be positive, got {self.tau2!r}")

    @property
    def tau2_used(self) -> float:
        """Default tau²: Howard et al.'s rule at the horizon for the baseline (control) rate."""
        if self.tau2 is not None:
            return self.tau2
        p = self.p_control
        return tau2_for_horizon(2.0 * p * (1.0 - p) / self.max_n, self.alpha)


def fixed_horizon_n(p_control: float, p_treatment: float, alpha: float = 0.05,
                    power: float = 0.8) -> int:
    """Per-arm n of a two-sided fixed-horizon two-proportion z-test with the given power."""
    if p_control == p_treatment:
        return 0
    z = norm.ppf(1 - alpha / 2) + norm.ppf(power)
    var = p_control * (1 - p_control) + p_treatment * (1 - p_treatment)
    return int(math.ceil(z * z * var / (p_treatment - p_control) ** 2))


def _ts_weight_b(rng: np.random.Generator, s_a: npt.NDArray[np.float64],
                 n_a: npt.NDArray[np.float64], s_b: npt.NDArray[np.float64],
                 n_b: npt.NDArray[np.float64], draws: int, floor: float) -> npt.NDArray[np.float64]:
    """Floored Beta-Bernoulli P(b is best), shape (reps,)."""
    reps = s_a.shape[0]
    ta = rng.beta((1 + s_a)[:, None], (1 + n_a - s_a)[:, None], size=(reps, draws))
    tb = rng.beta((1 + s_b)[:, None], (1 + n_b - s_b)[:, None], size=(reps, draws))
    pbest = (tb > ta).mean(axis=1)
    return np.clip(pbest, floor, 1.0 - floor)


@dataclass
class _SeqState:
    """The running per-replication sums of both arms (shape (reps,) each) and the stopping
    state. IPW sums as in arm_stats: ipw_n = sum 1/p, ipw_sum = sum r/p, ipw_sumsq =
    sum r²/p², ipw_n_sq = sum 1/p²."""

    n_a: FloatArray
    n_b: FloatArray
    s_a: FloatArray
    s_b: FloatArray
    in_a: FloatArray
    is_a: FloatArray
    iss_a: FloatArray
    ins_a: FloatArray
    in_b: FloatArray
    is_b: FloatArray
    iss_b: FloatArray
    ins_b: FloatArray
    active: npt.NDArray[np.bool_]
    rejected: npt.NDArray[np.bool_]
    n_stop: FloatArray

    @classmethod
    def fresh(cls, reps: int, max_n: int) -> _SeqState:
        sums = {f: np.zeros(reps) for f in ("n_a", "n_b", "s_a", "s_b", "in_a", "is_a",
                                               "iss_a", "ins_a", "in_b", "is_b", "iss_b",
                                               "ins_b")}
        return cls(**sums, active=np.ones(reps, dtype=bool),
                   rejected=np.zeros(reps, dtype=bool), n_stop=np.full(reps, float(max_n)))

    def add(self, k_a: FloatArray, k_b: FloatArray, x_a: FloatArray, x_b: FloatArray,
            w_a: FloatArray, w_b: FloatArray) -> None:
        """One batch: ``k`` impressions and ``x`` successes per arm at weights ``w``.
        Rewards are 0/1, so sum r/p = x/w and sum r²/p² = x/w² within a constant-weight batch."""
        self.n_a += k_a
        self.n_b += k_b
        self.s_a += x_a
        self.s_b += x_b
        self.in_a += k_a / w_a
        self.in_b += k_b / w_b
        self.is_a += x_a / w_a
        self.is_b += x_b / w_b
        self.iss_a += x_a / w_a**2
        self.iss_b += x_b / w_b**2
        self.ins_a += k_a / w_a**2
        self.ins_b += k_b / w_b**2

    def stop(self, hit: npt.NDArray[np.bool_]) -> None:
        """Record the first rejection of every still-active replication."""
        newly = self.active & hit
        self.rejected |= newly
        self.n_stop = np.where(newly, (self.n_a + self.n_b) / 2.0, self.n_stop)
        self.active &= ~hit


def _draw_batch(cfg: SequentialSimConfig, rng: np.random.Generator, st: _SeqState
                ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray,
                           FloatArray]:
    """(k_a, k_b, x_a, x_b, w_a, w_b) of one batch: impressions per arm (exactly half each on
    the fixed split, binomial with the Thompson weight otherwise) and their successes."""
    batch, reps = cfg.peek_every, cfg.reps
    if cfg.allocation == "fixed":
        w_b = np.full(reps, 0.5)
        k_b = np.full(reps, float(batch))
        k_a = np.full(reps, float(batch))
    else:
        w_b = _ts_weight_b(rng, st.s_a, st.n_a, st.s_b, st.n_b, cfg.ts_draws, cfg.floor)
        k_b = rng.binomial(2 * batch, w_b).astype(np.float64)
        k_a = 2 * batch - k_b
    w_a = 1.0 - w_b
    x_a = rng.binomial(k_a.astype(np.int64), cfg.p_control).astype(np.float64)
    x_b = rng.binomial(k_b.astype(np.int64), cfg.p_treatment).astype(np.float64)
    return k_a, k_b, x_a, x_b, w_a, w_b


def _look(cfg: SequentialSimConfig, st: _SeqState, tau2: float, log_thr: float,
          z_crit: float) -> npt.NDArray[np.bool_]:
    """Which replications the method rejects at this look (enough samples in both arms)."""
    n_a, n_b, s_a, s_b = st.n_a, st.n_b, st.s_a, st.s_b
    enough = np.minimum(n_a, n_b) >= max(cfg.min_samples, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        if cfg.method == "naive-z":
            pool = (s_a + s_b) / (n_a + n_b)
            se = np.sqrt(pool * (1 - pool) * (1 / n_a + 1 / n_b))
            stat = np.abs(s_b / n_b - s_a / n_a) / se
            hit: npt.NDArray[np.bool_] = enough & (se > 0) & (stat > z_crit)
            return hit
        if cfg.method == "msprt":
            ma, mb = s_a / n_a, s_b / n_b
            d = mb - ma
            v = ma * (1 - ma) / n_a + mb * (1 - mb) / n_b
        else:  # armlab: IPW contributions over all T impressions (platform code)
            t = n_a + n_b
            d, sigma2, _ = ipw_kernel(t, n_a, s_a, s_a, st.in_a, st.is_a, st.iss_a, st.ins_a,
                                      n_b, s_b, s_b, st.in_b, st.is_b, st.iss_b, st.ins_b,
                                      binary=True)
            v = sigma2 / t
        ok = enough & (v > 0)
        llr = np.where(ok, log_lambda(d, np.where(ok, v, 1.0), tau2), 0.0)
        hit = ok & (llr >= log_thr)
        return hit


def _summary(cfg: SequentialSimConfig, st: _SeqState, tau2: float
             ) -> dict[str, float | int | str | None]:
    """The configuration with the rejection rate (and its Monte Carlo SE) and n at decision."""
    reps = cfg.reps
    rate = float(st.rejected.mean())
    stopped = st.n_stop[st.rejected]
    return {
        "allocation": cfg.allocation,
        "method": cfg.method,
        "p_control": cfg.p_control,
        "p_treatment": cfg.p_treatment,
        "max_n": cfg.max_n,
        "peek_every": cfg.peek_every,
        "reps": reps,
        "seed": cfg.seed,
        "alpha": cfg.alpha,
        "tau2": tau2,
        "floor": cfg.floor if cfg.allocation == "thompson" else None,
        "rejection_rate": rate,
        "rejection_rate_se": math.sqrt(max(rate * (1 - rate), 1e-12) / reps),
        "mean_n": float(st.n_stop.mean()),
        "median_n": float(np.median(st.n_stop)),
        "mean_n_rejected": float(stopped.mean()) if stopped.size else None,
        "fixed_horizon_n_80": fixed_horizon_n(cfg.p_control, cfg.p_treatment, cfg.alpha),
    }


def simulate_sequential(cfg: SequentialSimConfig) -> dict[str, float | int | str | None]:
    """Run the simulation; returns rejection rate (with its Monte Carlo SE) and n at decision."""
    rng = np.random.default_rng(cfg.seed)
    tau2 = cfg.tau2_used
    log_thr = -math.log(cfg.alpha)
    z_crit = float(norm.ppf(1 - cfg.alpha / 2))
    st = _SeqState.fresh(cfg.reps, cfg.max_n)
    for _ in range(cfg.max_n // cfg.peek_every):
        st.add(*_draw_batch(cfg, rng, st))
        st.stop(_look(cfg, st, tau2, log_thr, z_crit))
        if not st.active.any():
            break
    return _summary(cfg, st, tau2)
