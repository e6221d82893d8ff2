"""The validity grid: Monte Carlo false-positive rate, SRM false alarms, confidence-sequence
coverage, power and sample size of armlab's sequential test where recommender traffic lives
(low click rates, sticky users, delayed feedback, frequent looks).

One *cell* fixes the base rate p, the exploration floor f, how often the test looks (every
``look_every`` impressions), the randomisation unit and whether feedback is delayed. Each cell
simulates two experiments of ``2 * max_n`` impressions, vectorised over replications (every
state is an array of shape (reps,)):

* A/A (both arms at p) and A/B (treatment at ``lift`` x p; 0.05 -> 0.06 at the default lift
  1.2 and p = 0.05);
* allocation by armlab's Thompson policy in batches: every ``alloc_every`` impressions the
  treatment's weight becomes P(b is best) under Beta(1 + S, 1 + F) posteriors (normal
  approximation to the two Betas, for speed), clipped to [f, 1 - f] (the floor projection
  of :func:`armlab.core.policies.apply_floor` for two arms), computed on the *matured* data
  as the allocator does; and, as a same-run baseline, a fixed 50/50 split.

Analyses run on the same simulated data (same-run baselines):

* ``armlab``: the platform's test, :func:`armlab.core.stats.adaptive.ipw_kernel` (the exact
  code :mod:`armlab.core.decisions` runs) with the information gate of
  :func:`armlab.core.stats.adaptive.informative` (``min_samples`` impressions and
  ``min_events`` successes per arm), tau² from :func:`armlab.core.decisions.planned_variance`
  -style planning (Howard et al. 2021 §3.5 rule at the planned horizon, IPW variance implied
  by the floor), on matured data; for ``unit: user`` one term per user (the per-user reward
  total with its sticky propensity: a cluster-level analysis, so the variance is
  cluster-robust). Also reported one-sided ("treatment better", the half-normal mixture of
  :func:`armlab.core.stats.msprt.log_lambda_greater`) for power.
* ``armlab_horizon``: the same analysis with ``sequential.boundary: horizon`` (the flat
  boundary of :class:`armlab.core.stats.msprt.HorizonBoundary` up to the planned information,
  80% of alpha, beside the mixture with the rest), two-sided and one-sided.
* ``msprt_thompson``: plain mSPRT (JKPW 2022) on the arm means under the same Thompson
  allocation, no information gate: what armlab replaced.
* ``msprt_fixed``: plain mSPRT on a fixed 50/50 split: the reference power.
* for ``unit: user`` also ``ipw_per_impression``: the IPW test with every impression as an
  independent term (the analysis armlab used before it analysed users).

Unit ``user``: each user brings ``impressions_per_user`` impressions at once, all in the arm
drawn at first exposure with that moment's weight; the user's click probability is
Beta(p kappa, (1 - p) kappa) with kappa = 1/icc - 1, so two impressions of one user have
correlation icc (beta-binomial). Delay: every impression's reward becomes known
``delay_impressions`` impressions after it was served (its attribution window); the test and
the policy see only impressions older than that (matured), like the allocator.

Monte Carlo standard errors are sqrt(rate (1 - rate) / reps).
"""

from __future__ import annotations

import math
import zlib
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy.special import ndtr

from armlab.core.stats.adaptive import ipw_kernel
from armlab.core.stats.msprt import (
    DEFAULT_HORIZON_SHARE,
    cs_halfwidth,
    horizon_critical,
    horizon_p,
    log_lambda,
    log_lambda_greater,
    tau2_for_horizon,
    variance_for_tau2,
)
from armlab.errors import StatsError

FloatArray = npt.NDArray[np.float64]
Unit = Literal["request", "user"]

SRM_ALPHA = 0.001
SRM_TAU2 = 0.02**2
# The sums one allocation keeps per arm (index into the state array):
# n, s, ss, in, is, iss, ins  (as ArmSums: n, reward_sum, reward_sumsq, ipw_n, ipw_sum,
# ipw_sumsq, ipw_n_sq), plus impression-level n, s, in, is, iss, ins for unit user.
_FIELDS = ("n", "s", "ss", "in", "is", "iss", "ins", "imp_n", "imp_s", "imp_in", "imp_is",
           "imp_iss", "imp_ins")
_IDX = {f: i for i, f in enumerate(_FIELDS)}


@dataclass(frozen=True)
class CellConfig:
    """One cell of the grid (see the module doc)."""

    base_rate: float = 0.05
    floor: float = 0.1
    look_every: int = 100
    unit: Unit = "request"
    delay: bool = False
    reps: int = 1000
    reps_alt: int | None = None
    seed: int = 0
    max_n: int = 10_000
    lift: float = 1.2
    alpha: float = 0.05
    alloc_every: int = 100
    min_samples: int = 100
    min_events: int = 30
    impressions_per_user: int = 10
    icc: float = 0.15
    delay_impressions: int = 1000

    def __post_init__(self) -> None:
        if not (0.0 < self.base_rate < 1.0 and 0.0 < self.base_rate * self.lift < 1.0):
            raise StatsError(f"base_rate must lie in (0, 1) with lift, got {self.base_rate!r}")
        if not (0.0 < self.floor < 0.5):
            raise StatsError(f"floor must lie in (0, 0.5), got {self.floor!r}")
        if self.unit not in ("request", "user"):
            raise StatsError(f"unit must be request or user, got {self.unit!r}")
        if self.reps < 1 or (self.reps_alt is not None and self.reps_alt < 1):
            raise StatsError("reps must be >= 1")
        if self.look_every < 1 or self.alloc_every < 1 or self.max_n < 1:
            raise StatsError("look_every, alloc_every and max_n must be >= 1")
        if self.unit == "user" and self.look_every % self.impressions_per_user:
            raise StatsError("for unit user, look_every must be a multiple of "
                             f"impressions_per_user ({self.impressions_per_user})")
        if not (0.0 < self.icc < 1.0):
            raise StatsError(f"icc must lie in (0, 1), got {self.icc!r}")

    @property
    def horizon(self) -> int:
        """Total impressions (both arms)."""
        return 2 * self.max_n


def thompson_weight(s_a: FloatArray, n_a: FloatArray, s_b: FloatArray, n_b: FloatArray,
                     floor: float) -> FloatArray:
    """P(b best) under Beta(1+S, 1+F) posteriors, normal approximation, clipped to the floor."""
    ma, mb = (1 + s_a) / (2 + n_a), (1 + s_b) / (2 + n_b)
    va, vb = ma * (1 - ma) / (3 + n_a), mb * (1 - mb) / (3 + n_b)
    w = ndtr((mb - ma) / np.sqrt(va + vb))
    return np.clip(w, floor, 1.0 - floor)


def _planned_tau2(sigma2: float, horizon: float, inv_sum: float, alpha: float) -> float:
    """Howard et al. (2021) §3.5 tuning at Var(D) = sigma2 * inv_sum / horizon, where
    inv_sum is the planned mean of 1/p(a) + 1/p(b) (4 for 50/50; see planned_variance)."""
    return tau2_for_horizon(sigma2 * inv_sum / horizon, alpha)


class _Tracker:
    """Running always-valid state of one analysis over the looks of one simulation."""

    def __init__(self, reps: int, alpha: float, theta: float, tau2: float, n_max: float) -> None:
        self.alpha, self.theta, self.tau2 = alpha, theta, tau2
        self.thr = -math.log(alpha)
        self.rejected = np.zeros(reps, dtype=bool)
        self.right_way = np.zeros(reps, dtype=bool)
        self.greater = np.zeros(reps, dtype=bool)
        self.miss = np.zeros(reps, dtype=bool)
        self.miss_greater = np.zeros(reps, dtype=bool)
        self.n_at = np.full(reps, n_max)
        self.n_at_greater = np.full(reps, n_max)
        self.width = np.full(reps, np.inf)

    def look(self, ok: npt.NDArray[np.bool_], d: FloatArray, v: FloatArray,
             n_per_arm: FloatArray, t: FloatArray | None = None) -> None:
        vv = np.where(ok, v, 1.0)
        llr = np.where(ok, log_lambda(d, vv, self.tau2), -np.inf)
        hit = ok & (llr >= self.thr) & ~self.rejected
        self.right_way |= hit & (d > 0)
        self.n_at = np.where(hit, n_per_arm, self.n_at)
        self.rejected |= hit
        # coverage: theta outside {theta: Lambda(theta) < 1/alpha} at some look
        self.miss |= ok & (np.where(ok, log_lambda(d - self.theta, vv, self.tau2), -np.inf)
                           >= self.thr)
        gl = np.where(ok, log_lambda_greater(d, vv, self.tau2), -np.inf)
        hit_g = ok & (gl >= self.thr) & ~self.greater
        self.n_at_greater = np.where(hit_g, n_per_arm, self.n_at_greater)
        self.greater |= hit_g
        self.miss_greater |= ok & (np.where(ok, log_lambda_greater(d - self.theta, vv,
                                                                   self.tau2), -np.inf)
                                   >= self.thr)
        self.width = np.where(ok, np.minimum(self.width, 2 * cs_halfwidth(vv, self.tau2,
                                                                          self.alpha)),
                              self.width)


class _HorizonTracker(_Tracker):
    """The same analysis with ``sequential.boundary: horizon``: the flat boundary of
    :class:`armlab.core.stats.msprt.HorizonBoundary` on the sum t·D up to the planned
    information ``info`` (share·alpha) beside the mixture ((1 - share)·alpha)."""

    def __init__(self, reps: int, alpha: float, theta: float, tau2: float, n_max: float,
                 info: float, share: float = DEFAULT_HORIZON_SHARE) -> None:
        super().__init__(reps, alpha, theta, tau2, n_max)
        self.info, self.share = info, share
        self.root = math.sqrt(info)
        self.margin = horizon_critical(share * alpha, "two-sided") * self.root

    def _p(self, d: FloatArray, vv: FloatArray, t: FloatArray, greater: bool) -> FloatArray:
        llr = (log_lambda_greater if greater else log_lambda)(d, vv, self.tau2)
        p_mix = np.exp(-np.maximum(llr, 0.0))
        active = t * t * vv <= self.info
        p_h = np.where(active, horizon_p(t * d / self.root,
                                         "greater" if greater else "two-sided"), 1.0)
        return np.minimum(p_h / self.share, p_mix / (1.0 - self.share))

    def look(self, ok: npt.NDArray[np.bool_], d: FloatArray, v: FloatArray,
             n_per_arm: FloatArray, t: FloatArray | None = None) -> None:
        if t is None:
            raise StatsError("the horizon boundary needs t")
        vv = np.where(ok, v, 1.0)
        tt = np.where(ok, t, 1.0)
        hit = ok & (self._p(d, vv, tt, False) <= self.alpha) & ~self.rejected
        self.right_way |= hit & (d > 0)
        self.n_at = np.where(hit, n_per_arm, self.n_at)
        self.rejected |= hit
        self.miss |= ok & (self._p(d - self.theta, vv, tt, False) <= self.alpha)
        hit_g = ok & (self._p(d, vv, tt, True) <= self.alpha) & ~self.greater
        self.n_at_greater = np.where(hit_g, n_per_arm, self.n_at_greater)
        self.greater |= hit_g
        self.miss_greater |= ok & (self._p(d - self.theta, vv, tt, True) <= self.alpha)
        half = cs_halfwidth(vv, self.tau2, (1.0 - self.share) * self.alpha)
        half = np.where(tt * tt * vv <= self.info, np.minimum(half, self.margin / tt), half)
        self.width = np.where(ok, np.minimum(self.width, 2 * half), self.width)


def _simulate(cfg: CellConfig, *, p_b: float, reps: int, allocation: str, seed: int
              ) -> dict[str, dict[str, Any]]:
    """One simulated experiment (A/A when p_b == base_rate) with every analysis on it."""
    rng = np.random.default_rng(seed)
    p_a = cfg.base_rate
    user = cfg.unit == "user"
    m = cfg.impressions_per_user if user else 1
    batch_imp = cfg.look_every
    batch_units = batch_imp // m
    looks = cfg.horizon // batch_imp
    alloc_batches = max(1, cfg.alloc_every // batch_imp)
    lag = int(math.ceil(cfg.delay_impressions / batch_imp)) if cfg.delay else 0
    kappa = 1.0 / cfg.icc - 1.0

    # state[arm] : (len(_FIELDS), reps) matured sums; pending increments wait `lag` batches
    seen = np.zeros((2, len(_FIELDS), reps))
    pending: deque[FloatArray] = deque()

    # analyses
    alpha = cfg.alpha
    horizon_units = cfg.horizon / m
    if user:
        # per-user total Y ~ beta-binomial(m, p, icc): Var = m p (1-p) (1 + (m-1) icc)
        sigma2_unit = m * p_a * (1 - p_a) * (1 + (m - 1) * cfg.icc)
        theta_unit = m * (p_b - p_a)
    else:
        sigma2_unit = p_a * (1 - p_a)
        theta_unit = p_b - p_a
    inv_ipw = 1.0 / cfg.floor + 1.0 / (1.0 - cfg.floor)
    tau2_ipw = _planned_tau2(sigma2_unit, horizon_units, inv_ipw, alpha)
    tau2_plain = _planned_tau2(p_a * (1 - p_a), cfg.horizon, 4.0, alpha)
    tau2_imp = _planned_tau2(p_a * (1 - p_a), cfg.horizon, inv_ipw, alpha)
    n_max = float(cfg.max_n)
    trackers: dict[str, _Tracker] = {}
    if allocation == "thompson":
        trackers["armlab"] = _Tracker(reps, alpha, theta_unit, tau2_ipw, n_max)
        # the plan of the horizon boundary, as the platform derives it from the frozen tau²
        info = horizon_units**2 * variance_for_tau2(tau2_ipw, alpha)
        trackers["armlab_horizon"] = _HorizonTracker(reps, alpha, theta_unit, tau2_ipw, n_max,
                                                     info)
        trackers["msprt_thompson"] = _Tracker(reps, alpha, p_b - p_a, tau2_plain, n_max)
        if user:
            trackers["ipw_per_impression"] = _Tracker(reps, alpha, p_b - p_a, tau2_imp, n_max)
    else:
        trackers["msprt_fixed"] = _Tracker(reps, alpha, p_b - p_a, tau2_plain, n_max)
    srm_p = np.ones(reps)
    srm_p_imp = np.ones(reps)

    w_b = np.full(reps, 0.5)
    for step in range(looks):
        if allocation == "thompson" and step % alloc_batches == 0:
            ia, ib = seen[0], seen[1]
            w_b = thompson_weight(ia[_IDX["imp_s"]], ia[_IDX["imp_n"]], ib[_IDX["imp_s"]],
                                   ib[_IDX["imp_n"]], cfg.floor)
        inc = np.zeros((2, len(_FIELDS), reps))
        if user:
            in_b = rng.random((reps, batch_units)) < w_b[:, None]
            q_a = rng.beta(p_a * kappa, (1 - p_a) * kappa, size=(reps, batch_units))
            q_b = rng.beta(p_b * kappa, (1 - p_b) * kappa, size=(reps, batch_units))
            y = np.where(in_b, rng.binomial(m, q_b), rng.binomial(m, q_a)).astype(np.float64)
            for arm, mask, w in ((0, ~in_b, 1.0 - w_b), (1, in_b, w_b)):
                k = mask.sum(axis=1).astype(np.float64)
                sy = np.where(mask, y, 0.0).sum(axis=1)
                syy = np.where(mask, y * y, 0.0).sum(axis=1)
                inc[arm] = (k, sy, syy, k / w, sy / w, syy / w**2, k / w**2,
                            m * k, sy, m * k / w, sy / w, sy / w**2, m * k / w**2)
        else:
            if allocation == "thompson":
                k_b = rng.binomial(batch_imp, w_b).astype(np.float64)
            else:
                k_b = np.full(reps, batch_imp / 2.0)
            k_a = batch_imp - k_b
            x_a = rng.binomial(k_a.astype(np.int64), p_a).astype(np.float64)
            x_b = rng.binomial(k_b.astype(np.int64), p_b).astype(np.float64)
            for arm, k, x, w in ((0, k_a, x_a, 1.0 - w_b), (1, k_b, x_b, w_b)):
                inc[arm] = (k, x, x, k / w, x / w, x / w**2, k / w**2,
                            k, x, k / w, x / w, x / w**2, k / w**2)
        pending.append(inc)
        if len(pending) > lag:
            seen += pending.popleft()
        _analyse(cfg, seen, trackers, user)
        # SRM (armlab's, on the analysed units; and per impression for comparison)
        srm_p = np.minimum(srm_p, _srm_p(seen, per_impression=False,
                                         min_samples=cfg.min_samples))
        if user:
            srm_p_imp = np.minimum(srm_p_imp, _srm_p(seen, per_impression=True,
                                                     min_samples=cfg.min_samples))

    out: dict[str, dict[str, Any]] = {}
    for name, tr in trackers.items():
        out[name] = {
            "reject": tr.rejected, "right_way": tr.right_way, "greater": tr.greater,
            "miss": tr.miss, "miss_greater": tr.miss_greater, "n_at": tr.n_at,
            "n_at_greater": tr.n_at_greater, "width": tr.width,
        }
    if allocation == "thompson":
        out["armlab"]["srm"] = srm_p <= SRM_ALPHA
        out["armlab_horizon"]["srm"] = out["armlab"]["srm"]
        if user:
            out["ipw_per_impression"]["srm"] = srm_p_imp <= SRM_ALPHA
    return out


def _srm_p(seen: FloatArray, *, per_impression: bool, min_samples: int
           ) -> FloatArray:
    """Always-valid SRM p-value (Bonferroni over the two arms) of :func:`srm_check`, vectorised."""
    if per_impression:
        n = seen[:, _IDX["imp_n"]]
        s1 = seen[:, _IDX["imp_in"]]
        s2 = seen[:, _IDX["imp_ins"]]
    else:
        n = seen[:, _IDX["n"]]
        s1 = seen[:, _IDX["in"]]
        s2 = seen[:, _IDX["ins"]]
    t = n.sum(axis=0)
    ok = t >= max(min_samples, 2)
    tt = np.where(ok, t, 1.0)
    mean = s1 / tt - 1.0
    sigma2 = np.maximum((s2 - 2 * s1 + tt) / tt - mean * mean, 0.0)
    ok2 = ok & (sigma2.min(axis=0) > 0)
    v = np.where(ok2, sigma2 / tt, 1.0)
    llr = np.where(ok2, log_lambda(mean, v, SRM_TAU2), 0.0)
    p = np.minimum(1.0, np.exp(-np.maximum(llr, 0.0)))
    return np.minimum(1.0, 2 * p.min(axis=0))


def _analyse(cfg: CellConfig, seen: FloatArray, trackers: dict[str, _Tracker],
             user: bool) -> None:
    a, b = seen[0], seen[1]
    n_imp_a, n_imp_b = a[_IDX["imp_n"]], b[_IDX["imp_n"]]
    n_per_arm = (n_imp_a + n_imp_b) / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        if "armlab" in trackers:
            n_a, n_b = a[_IDX["n"]], b[_IDX["n"]]
            t = n_a + n_b
            succ_a, succ_b = a[_IDX["s"]], b[_IDX["s"]]
            if user:  # events = clicks of the arm's users
                ev = np.minimum(succ_a, succ_b)
            else:
                ev = np.minimum(np.minimum(succ_a, n_a - succ_a), np.minimum(succ_b, n_b - succ_b))
            ok = (np.minimum(n_a, n_b) >= max(cfg.min_samples, 1)) & (ev >= cfg.min_events)
            safe = [np.where(ok, x, 1.0) for x in (n_a, n_b, t)]
            d, sigma2, _ = ipw_kernel(
                safe[2], safe[0], a[1], a[2], a[3], a[4], a[5], a[6],
                safe[1], b[1], b[2], b[3], b[4], b[5], b[6], binary=not user)
            v = sigma2 / safe[2]
            trackers["armlab"].look(ok & (v > 0), d, v, n_per_arm)
            if "armlab_horizon" in trackers:
                trackers["armlab_horizon"].look(ok & (v > 0), d, v, n_per_arm, safe[2])
        if "ipw_per_impression" in trackers:
            n_a, n_b = n_imp_a, n_imp_b
            t = n_a + n_b
            ok = np.minimum(n_a, n_b) >= max(cfg.min_samples, 1)
            sa, sb = a[_IDX["imp_s"]], b[_IDX["imp_s"]]
            safe = [np.where(ok, x, 1.0) for x in (n_a, n_b, t)]
            d, sigma2, _ = ipw_kernel(
                safe[2], safe[0], sa, sa, a[_IDX["imp_in"]], a[_IDX["imp_is"]],
                a[_IDX["imp_iss"]], a[_IDX["imp_ins"]], safe[1], sb, sb, b[_IDX["imp_in"]],
                b[_IDX["imp_is"]], b[_IDX["imp_iss"]], b[_IDX["imp_ins"]], binary=True)
            v = sigma2 / safe[2]
            trackers["ipw_per_impression"].look(ok & (v > 0), d, v, n_per_arm)
        for name in ("msprt_thompson", "msprt_fixed"):
            if name not in trackers:
                continue
            ok = np.minimum(n_imp_a, n_imp_b) >= max(cfg.min_samples, 1)
            na, nb = np.where(ok, n_imp_a, 1.0), np.where(ok, n_imp_b, 1.0)
            ma, mb = a[_IDX["imp_s"]] / na, b[_IDX["imp_s"]] / nb
            v = ma * (1 - ma) / na + mb * (1 - mb) / nb
            trackers[name].look(ok & (v > 0), mb - ma, v, n_per_arm)


def _rate(x: npt.NDArray[np.bool_]) -> tuple[float, float]:
    r = float(np.mean(x))
    return r, math.sqrt(max(r * (1 - r), 0.0) / x.shape[0])


def run_cell(cfg: CellConfig) -> dict[str, Any]:
    """A/A and A/B simulations of one cell; every analysis's figures (see module doc)."""
    reps_alt = cfg.reps_alt or cfg.reps
    p_b = cfg.base_rate * cfg.lift
    rows: dict[str, dict[str, Any]] = {}
    for allocation in ("thompson", "fixed"):
        seed = cfg.seed * 4 + (0 if allocation == "thompson" else 2)
        aa = _simulate(cfg, p_b=cfg.base_rate, reps=cfg.reps, allocation=allocation,
                       seed=seed)
        ab = _simulate(cfg, p_b=p_b, reps=reps_alt, allocation=allocation, seed=seed + 1)
        for name in aa:
            fpr, fpr_se = _rate(aa[name]["reject"])
            fpr_g, fpr_g_se = _rate(aa[name]["greater"])
            pw, pw_se = _rate(ab[name]["right_way"])
            pw_g, pw_g_se = _rate(ab[name]["greater"])
            cov = 1.0 - float(np.mean(ab[name]["miss"]))
            cov_g = 1.0 - float(np.mean(ab[name]["miss_greater"]))
            row: dict[str, Any] = {
                "fpr": fpr, "fpr_se": fpr_se,
                "fpr_ok": fpr <= cfg.alpha + 2 * fpr_se,
                "fpr_greater": fpr_g, "fpr_greater_se": fpr_g_se,
                "coverage": cov, "coverage_greater": cov_g,
                "power": pw, "power_se": pw_se,
                "power_greater": pw_g, "power_greater_se": pw_g_se,
                "mean_n_at_decision_aa": float(np.mean(aa[name]["n_at"])),
                "mean_n_at_decision": float(np.mean(ab[name]["n_at"])),
                "mean_n_at_decision_greater": float(np.mean(ab[name]["n_at_greater"])),
            }
            if "srm" in aa[name]:
                srm, srm_se = _rate(aa[name]["srm"])
                row.update(srm_false_alarm=srm, srm_false_alarm_se=srm_se)
            rows[name] = row
    return {"cell": asdict(cfg), "p_treatment": p_b, "analyses": rows}


GRID_BASE_RATES = (0.005, 0.01, 0.02, 0.05, 0.10)
GRID_FLOORS = (0.05, 0.1, 0.2)
GRID_LOOKS = (10, 100)
GRID_UNITS: tuple[Unit, ...] = ("request", "user")
GRID_DELAYS = (False, True)


def grid(
    base_rates: tuple[float, ...] = GRID_BASE_RATES,
    floors: tuple[float, ...] = GRID_FLOORS,
    looks: tuple[int, ...] = GRID_LOOKS,
    units: tuple[Unit, ...] = GRID_UNITS,
    delays: tuple[bool, ...] = GRID_DELAYS,
    **common: Any,
) -> list[CellConfig]:
    """The cells of the grid; each cell's seed depends on its coordinates only, so a subset
    reproduces the same figures as the full grid."""
    seed = int(common.pop("seed", 0))
    cells = []
    for p in base_rates:
        for f in floors:
            for le in looks:
                for u in units:
                    for d in delays:
                        key = f"{p}|{f}|{le}|{u}|{int(d)}".encode()
                        cell_seed = seed * 1_000_003 + zlib.crc32(key)
                        cells.append(CellConfig(base_rate=p, floor=f, look_every=le, unit=u,
                                                delay=d, seed=cell_seed, **common))
    return cells


def summarise(results: list[dict[str, Any]], alpha: float = 0.05) -> dict[str, Any]:
    """Worst cells per analysis: the largest A/A false-positive rate (and whether it is within
    2 Monte Carlo SE of alpha), the lowest coverage, the largest SRM false-alarm rate."""
    out: dict[str, Any] = {}
    names = sorted({n for r in results for n in r["analyses"]})
    for name in names:
        rows = [(r["cell"], r["analyses"][name]) for r in results if name in r["analyses"]]
        worst = max(rows, key=lambda x: x[1]["fpr"] - alpha - 2 * x[1]["fpr_se"])
        cov = min(rows, key=lambda x: x[1]["coverage"])
        entry: dict[str, Any] = {
            "cells": len(rows),
            "cells_fpr_within_2se": sum(1 for _, a in rows if a["fpr_ok"]),
            "max_fpr": worst[1]["fpr"], "max_fpr_se": worst[1]["fpr_se"],
            "max_fpr_cell": _coords(worst[0]),
            "min_coverage": cov[1]["coverage"], "min_coverage_cell": _coords(cov[0]),
        }
        srm = [(c, a) for c, a in rows if "srm_false_alarm" in a]
        if srm:
            w = max(srm, key=lambda x: x[1]["srm_false_alarm"])
            entry.update(max_srm_false_alarm=w[1]["srm_false_alarm"],
                         max_srm_cell=_coords(w[0]))
        out[name] = entry
    return out


def _coords(cell: dict[str, Any]) -> str:
    return (f"p={cell['base_rate']} floor={cell['floor']} look={cell['look_every']} "
            f"unit={cell['unit']} delay={'yes' if cell['delay'] else 'no'}")
