"""One simulated experiment of the validity grid (:mod:`armlab.core.stats.validity_grid`) with
every analysis on it, vectorised over replications.

The steps of :func:`_simulate`: derive the plan of the run from its cell (:func:`_plan`), set
up the analyses with their planned tau² (:func:`_make_trackers`), then per look: update the
Thompson weight from the matured data, draw the look's batch (:func:`_draw_user_batch` or
:func:`_draw_request_batch`), let it mature after ``lag`` looks, run the analyses on the matured
sums (:func:`_analyse`) and the SRM checks (:func:`_track_srm`); finally collect every
analysis's per-replication outcomes (:func:`_outcomes`). The random draws happen in the same
order as a single loop would make them, so a seed gives the same figures.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from armlab.core.stats.adaptive import ipw_kernel
from armlab.core.stats.cuped import adjusted_sums, pooled_slope
from armlab.core.stats.msprt import log_lambda, tau2_for_horizon
from armlab.core.stats.validity_cell import (
    _FIELDS,
    _IDX,
    SRM_ALPHA,
    SRM_TAU2,
    CellConfig,
    FloatArray,
    _planned_tau2,
    thompson_weight,
)
from armlab.core.stats.validity_trackers import _HorizonTracker, _Tracker


@dataclass(frozen=True)
class _Plan:
    """What one simulated experiment derives from its cell before the first look."""

    p_a: float
    p_b: float
    reps: int
    allocation: str
    user: bool
    m: int  # impressions per unit (1 for unit request)
    batch_imp: int  # impressions per look
    batch_units: int  # units per look
    looks: int
    alloc_batches: int  # looks between two updates of the allocation
    lag: int  # looks before a batch's rewards are known (0 without delay)
    kappa: float  # beta-binomial concentration, 1/icc - 1
    pre: int = 0  # pre-period impressions per user behind the covariate X (0: none)


def _plan(cfg: CellConfig, *, p_b: float, reps: int, allocation: str) -> _Plan:
    """The run's constants: batch sizes, number of looks, allocation cadence and delay."""
    user = cfg.unit == "user"
    m = cfg.impressions_per_user if user else 1
    batch_imp = cfg.look_every
    return _Plan(
        p_a=cfg.base_rate, p_b=p_b, reps=reps, allocation=allocation, user=user, m=m,
        batch_imp=batch_imp, batch_units=batch_imp // m, looks=cfg.horizon // batch_imp,
        alloc_batches=max(1, cfg.alloc_every // batch_imp),
        lag=int(math.ceil(cfg.delay_impressions / batch_imp)) if cfg.delay else 0,
        kappa=1.0 / cfg.icc - 1.0, pre=cfg.pre_impressions,
    )


def _make_trackers(cfg: CellConfig, plan: _Plan) -> dict[str, _Tracker]:
    """The analyses of this run (module doc of :mod:`armlab.core.stats.validity_grid`), each with
    tau² planned at the horizon as the platform plans it."""
    alpha, reps, m = cfg.alpha, plan.reps, plan.m
    p_a, p_b = plan.p_a, plan.p_b
    horizon_units = cfg.horizon / m
    theta_unit = m * (p_b - p_a) if plan.user else p_b - p_a
    inv_ipw = 1.0 / cfg.floor + 1.0 / (1.0 - cfg.floor)
    tau2_plain = _planned_tau2(p_a * (1 - p_a), cfg.horizon, 4.0, alpha)
    tau2_imp = _planned_tau2(p_a * (1 - p_a), cfg.horizon, inv_ipw, alpha)
    n_max = float(cfg.max_n)
    trackers: dict[str, _Tracker] = {}
    if plan.allocation == "thompson":
        # tau² (and the horizon plan derived from it) frozen per replication from its own data,
        # as the platform does: see _plan_from_data
        trackers["armlab"] = _Tracker(reps, alpha, theta_unit, None, n_max)
        trackers["armlab_horizon"] = _HorizonTracker(reps, alpha, theta_unit, None, n_max,
                                                     1.0, cfg.horizon_share, horizon_units)
        if plan.pre:  # CUPED on the pre-period covariate (armlab.core.stats.cuped)
            trackers["armlab_cuped"] = _Tracker(reps, alpha, theta_unit, None, n_max)
            trackers["armlab_cuped_horizon"] = _HorizonTracker(
                reps, alpha, theta_unit, None, n_max, 1.0, cfg.horizon_share, horizon_units)
        trackers["msprt_thompson"] = _Tracker(reps, alpha, p_b - p_a, tau2_plain, n_max)
        if plan.user:
            trackers["ipw_per_impression"] = _Tracker(reps, alpha, p_b - p_a, tau2_imp, n_max)
    else:
        trackers["msprt_fixed"] = _Tracker(reps, alpha, p_b - p_a, tau2_plain, n_max)
    return trackers


def _user_rates(plan: _Plan, rng: np.random.Generator
                ) -> tuple[FloatArray, FloatArray, FloatArray | None]:
    """Each user's click probability in arm a and in arm b, and its pre-period clicks X.

    Without a pre-period (``pre`` 0) the two are independent Beta draws (the grid's model).
    With one, a user has one latent rate q ~ Beta(p_a kappa, (1 - p_a) kappa): q in arm a,
    q x p_b / p_a in arm b (so an A/A user is the same user in both), and X ~ Binomial(pre, q)
    drawn before the experiment, whatever the arm."""
    reps, units, kappa = plan.reps, plan.batch_units, plan.kappa
    p_a, p_b = plan.p_a, plan.p_b
    q_a = rng.beta(p_a * kappa, (1 - p_a) * kappa, size=(reps, units))
    if not plan.pre:
        return q_a, rng.beta(p_b * kappa, (1 - p_b) * kappa, size=(reps, units)), None
    x = rng.binomial(plan.pre, q_a).astype(np.float64)
    return q_a, np.minimum(q_a * (p_b / p_a), 1.0), x


def _draw_user_batch(plan: _Plan, rng: np.random.Generator, w_b: FloatArray) -> FloatArray:
    """One look's increments for unit user: each user's arm is drawn with the current weight,
    its click probability from the beta prior, its clicks as a binomial of ``m`` impressions."""
    reps, m = plan.reps, plan.m
    inc = np.zeros((2, len(_FIELDS), reps))
    in_b = rng.random((reps, plan.batch_units)) < w_b[:, None]
    q_a, q_b, x = _user_rates(plan, rng)
    y = np.where(in_b, rng.binomial(m, q_b), rng.binomial(m, q_a)).astype(np.float64)
    for arm, mask, w in ((0, ~in_b, 1.0 - w_b), (1, in_b, w_b)):
        k = mask.sum(axis=1).astype(np.float64)
        sy = np.where(mask, y, 0.0).sum(axis=1)
        syy = np.where(mask, y * y, 0.0).sum(axis=1)
        inc[arm, :13] = (k, sy, syy, k / w, sy / w, syy / w**2, k / w**2,
                         m * k, sy, m * k / w, sy / w, sy / w**2, m * k / w**2)
        if x is not None:
            sx, sxx, sxy = (np.where(mask, v, 0.0).sum(axis=1) for v in (x, x * x, x * y))
            inc[arm, 13:] = (sx, sxx, sxy, sx / w, sxx / w**2, sxy / w**2)
    return inc


def _draw_request_batch(plan: _Plan, rng: np.random.Generator, w_b: FloatArray) -> FloatArray:
    """One look's increments for unit request: the treatment's impressions (binomial with the
    current weight, or exactly half on the fixed split) and each arm's clicks."""
    reps, batch_imp = plan.reps, plan.batch_imp
    inc = np.zeros((2, len(_FIELDS), reps))
    if plan.allocation == "thompson":
        k_b = rng.binomial(batch_imp, w_b).astype(np.float64)
    else:
        k_b = np.full(reps, batch_imp / 2.0)
    k_a = batch_imp - k_b
    x_a = rng.binomial(k_a.astype(np.int64), plan.p_a).astype(np.float64)
    x_b = rng.binomial(k_b.astype(np.int64), plan.p_b).astype(np.float64)
    for arm, k, x, w in ((0, k_a, x_a, 1.0 - w_b), (1, k_b, x_b, w_b)):
        inc[arm, :13] = (k, x, x, k / w, x / w, x / w**2, k / w**2,
                         k, x, k / w, x / w, x / w**2, k / w**2)
    return inc


@dataclass
class _State:
    """The running state of one run: the matured sums ``seen[arm]`` of shape
    (len(_FIELDS), reps), the increments that wait ``lag`` looks, the treatment's weight and
    the running minimum of the SRM p-values (on the analysed units and per impression)."""

    seen: FloatArray
    w_b: FloatArray
    srm_p: FloatArray
    srm_p_imp: FloatArray
    inverse: FloatArray  # sum over served units of 1/p(a) + 1/p(b) (the pair's information)
    pending: deque[FloatArray] = field(default_factory=deque)

    @classmethod
    def fresh(cls, reps: int) -> _State:
        return cls(seen=np.zeros((2, len(_FIELDS), reps)), w_b=np.full(reps, 0.5),
                   srm_p=np.ones(reps), srm_p_imp=np.ones(reps), inverse=np.zeros(reps))

    def mature(self, inc: FloatArray, lag: int) -> None:
        """Queue this look's increments; the oldest joins ``seen`` once ``lag`` looks old."""
        self.pending.append(inc)
        if len(self.pending) > lag:
            self.seen += self.pending.popleft()


def _simulate(cfg: CellConfig, *, p_b: float, reps: int, allocation: str, seed: int
              ) -> dict[str, dict[str, Any]]:
    """One simulated experiment (A/A when p_b == base_rate) with every analysis on it."""
    rng = np.random.default_rng(seed)
    plan = _plan(cfg, p_b=p_b, reps=reps, allocation=allocation)
    trackers = _make_trackers(cfg, plan)
    state = _State.fresh(reps)
    draw = _draw_user_batch if plan.user else _draw_request_batch
    for step in range(plan.looks):
        if allocation == "thompson" and step % plan.alloc_batches == 0:
            ia, ib = state.seen[0], state.seen[1]
            state.w_b = thompson_weight(ia[_IDX["imp_s"]], ia[_IDX["imp_n"]],
                                        ib[_IDX["imp_s"]], ib[_IDX["imp_n"]], cfg.floor)
        state.inverse += plan.batch_units * (1.0 / state.w_b + 1.0 / (1.0 - state.w_b))
        state.mature(draw(plan, rng, state.w_b), plan.lag)
        _analyse(cfg, state.seen, trackers, plan.user)
        _track_srm(cfg, state, plan.user)
    state.inverse /= plan.looks * plan.batch_units
    return _outcomes(trackers, state, allocation, plan.user)


def _track_srm(cfg: CellConfig, state: _State, user: bool) -> None:
    """SRM (armlab's, on the analysed units; and per impression for comparison)."""
    state.srm_p = np.minimum(state.srm_p, _srm_p(state.seen, per_impression=False,
                                                 min_samples=cfg.min_samples))
    if user:
        state.srm_p_imp = np.minimum(state.srm_p_imp, _srm_p(state.seen, per_impression=True,
                                                             min_samples=cfg.min_samples))


def _outcomes(trackers: dict[str, _Tracker], state: _State, allocation: str, user: bool
              ) -> dict[str, dict[str, Any]]:
    """Per analysis, the per-replication outcomes :func:`armlab.core.stats.validity_grid.run_cell`
    turns into rates (and the SRM false alarms of the analyses that check SRM)."""
    out: dict[str, dict[str, Any]] = {}
    for name, tr in trackers.items():
        out[name] = {
            "reject": tr.rejected, "right_way": tr.right_way, "greater": tr.greater,
            "miss": tr.miss, "miss_greater": tr.miss_greater, "n_at": tr.n_at,
            "n_at_greater": tr.n_at_greater, "width": tr.width,
            # mean over the served units of 1/p(a) + 1/p(b): 4 on a 50/50 split
            "inverse_sum": state.inverse,
        }
    if allocation == "thompson":
        out["armlab"]["srm"] = state.srm_p <= SRM_ALPHA
        out["armlab_horizon"]["srm"] = out["armlab"]["srm"]
        if user:
            out["ipw_per_impression"]["srm"] = state.srm_p_imp <= SRM_ALPHA
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
    """One look of every analysis on the matured sums."""
    a, b = seen[0], seen[1]
    n_imp_a, n_imp_b = a[_IDX["imp_n"]], b[_IDX["imp_n"]]
    n_per_arm = (n_imp_a + n_imp_b) / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        if "armlab" in trackers:
            n_a, n_b = a[_IDX["n"]], b[_IDX["n"]]
            succ_a, succ_b = a[_IDX["s"]], b[_IDX["s"]]
            if user:  # events = clicks of the arm's users
                ev = np.minimum(succ_a, succ_b)
            else:
                ev = np.minimum(np.minimum(succ_a, n_a - succ_a), np.minimum(succ_b, n_b - succ_b))
            enough_n = np.minimum(n_a, n_b) >= max(cfg.min_samples, 1)
            ok = enough_n & (ev >= cfg.min_events)
            ready = ok if cfg.plan_at == "events" else enough_n
            _ipw_look(cfg, (a[:7], b[:7]), ok, ready, n_per_arm, trackers, "armlab",
                      binary=not user)
            if "armlab_cuped" in trackers:
                _ipw_look(cfg, _cuped(a, b), ok, ready, n_per_arm, trackers, "armlab_cuped",
                          binary=False)
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


def _cuped(a: FloatArray, b: FloatArray) -> tuple[tuple[FloatArray, ...], tuple[FloatArray, ...]]:
    """Both arms' seven kernel sums of Y' = Y - theta X (:mod:`armlab.core.stats.cuped`)."""
    i = _IDX
    theta = pooled_slope((a[i["n"]], b[i["n"]]), (a[i["s"]], b[i["s"]]), (a[i["x"]], b[i["x"]]),
                         (a[i["xx"]], b[i["xx"]]), (a[i["xy"]], b[i["xy"]]))
    return tuple(adjusted_sums(theta, *arm[:7], *arm[13:19]) for arm in (a, b))  # type: ignore[return-value]


def _ipw_look(cfg: CellConfig, sums: tuple[Any, Any], ok: npt.NDArray[np.bool_],
              ready: npt.NDArray[np.bool_], n_per_arm: FloatArray,
              trackers: dict[str, _Tracker], name: str, *, binary: bool) -> None:
    """armlab's test on one pair of kernel sums: plan the replications that are ``ready``,
    then look with the platform's kernel (and with the horizon boundary, ``name``_horizon)."""
    a, b = sums
    _plan_from_data(cfg, a, b, ready, (trackers[name], trackers[name + "_horizon"]),
                    binary=binary)
    n_a, n_b = a[0], b[0]
    t = n_a + n_b
    safe = [np.where(ok, x, 1.0) for x in (n_a, n_b, t)]
    d, sigma2, _ = ipw_kernel(safe[2], safe[0], a[1], a[2], a[3], a[4], a[5], a[6],
                              safe[1], b[1], b[2], b[3], b[4], b[5], b[6], binary=binary)
    v = sigma2 / safe[2]
    trackers[name].look(ok & (v > 0), d, v, n_per_arm)
    trackers[name + "_horizon"].look(ok & (v > 0), d, v, n_per_arm, safe[2])


def _plan_from_data(cfg: CellConfig, a: Any, b: Any, ready: npt.NDArray[np.bool_],
                    trackers: tuple[_Tracker, ...], *, binary: bool) -> None:
    """Freeze tau² of the replications that become ``ready`` at this look, as
    :func:`armlab.core.decisions.plan_look` does: Howard et al.'s rule at the horizon (in units
    of analysis) for the IPW variance the floor implies, sigma² the pooled variance of the
    matured data (p(1 - p) for a click; the per-user totals' sample variance for unit user)."""
    n, s, ss = a[0] + b[0], a[1] + b[1], a[2] + b[2]
    nn = np.maximum(n, 2.0)
    mean = s / nn
    if binary:
        sigma2 = mean * (1.0 - mean)
    else:
        sigma2 = np.maximum(ss / nn - mean * mean, 0.0) * nn / (nn - 1.0)
    m = cfg.impressions_per_user if cfg.unit == "user" else 1
    inv = 1.0 / cfg.floor + 1.0 / (1.0 - cfg.floor)
    tau2 = tau2_for_horizon(1.0, cfg.alpha) * sigma2 * inv / (cfg.horizon / m)
    for tr in trackers:
        tr.plan(ready & (sigma2 > 0), tau2)
