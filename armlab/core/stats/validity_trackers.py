"""The running always-valid state of one analysis of the validity grid
(:mod:`armlab.core.stats.validity_grid`) over the looks of one simulation, vectorised over
replications: rejections (two- and one-sided), coverage misses, the sample size at the
decision and the narrowest confidence-sequence width."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from armlab.core.stats.msprt import (
    DEFAULT_HORIZON_SHARE,
    cs_halfwidth,
    horizon_critical,
    horizon_p,
    log_lambda,
    log_lambda_greater,
    variance_for_tau2,
)
from armlab.core.stats.validity_cell import FloatArray
from armlab.errors import StatsError


class _Tracker:
    """Running always-valid state of one analysis over the looks of one simulation.

    ``tau2``: a number (planned before the run, as the baselines are), or None: planned per
    replication by :meth:`plan` from the data of its first informative look, as the platform
    freezes tau² (:func:`armlab.core.decisions.plan_look`); a replication looks only once
    planned."""

    def __init__(self, reps: int, alpha: float, theta: float, tau2: float | None,
                 n_max: float) -> None:
        self.alpha, self.theta = alpha, theta
        self.tau2 = np.full(reps, 1.0 if tau2 is None else tau2)
        self.planned = np.full(reps, tau2 is not None)
        self.thr = -math.log(alpha)
        self.rejected = np.zeros(reps, dtype=bool)
        self.right_way = np.zeros(reps, dtype=bool)
        self.greater = np.zeros(reps, dtype=bool)
        self.miss = np.zeros(reps, dtype=bool)
        self.miss_greater = np.zeros(reps, dtype=bool)
        self.n_at = np.full(reps, n_max)
        self.n_at_greater = np.full(reps, n_max)
        self.width = np.full(reps, np.inf)

    def plan(self, ready: npt.NDArray[np.bool_], tau2: FloatArray) -> None:
        """Freeze tau² of the replications that are ``ready`` and not yet planned."""
        new = ready & ~self.planned
        self.tau2 = np.where(new, tau2, self.tau2)
        self.planned |= new

    def look(self, ok: npt.NDArray[np.bool_], d: FloatArray, v: FloatArray,
             n_per_arm: FloatArray, t: FloatArray | None = None) -> None:
        ok = ok & self.planned
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

    def __init__(self, reps: int, alpha: float, theta: float, tau2: float | None,
                 n_max: float, info: float, share: float = DEFAULT_HORIZON_SHARE,
                 horizon: float = 1.0) -> None:
        """``info``: V_plan when tau2 is given; else :meth:`plan` derives it per replication
        from tau² as the platform does: horizon² x the Var(D) tau² was tuned for."""
        super().__init__(reps, alpha, theta, tau2, n_max)
        self.share, self.horizon = share, horizon
        self.info = np.full(reps, info)
        self._set_root()

    def _set_root(self) -> None:
        self.root = np.sqrt(self.info)
        self.margin = horizon_critical(self.share * self.alpha, "two-sided") * self.root

    def plan(self, ready: npt.NDArray[np.bool_], tau2: FloatArray) -> None:
        new = ready & ~self.planned
        self.info = np.where(new, self.horizon**2 * variance_for_tau2(1.0, self.alpha) * tau2,
                             self.info)
        self._set_root()
        super().plan(ready, tau2)

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
        ok = ok & self.planned
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
