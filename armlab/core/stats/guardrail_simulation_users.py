"""The ``unit="user"`` option of :mod:`armlab.core.stats.guardrail_simulation`: sticky users
with correlated impressions, and the per-user guardrail test on them.

A batch is ``look_every`` arriving users. Each user gets an arm with the current Thompson
weight (the user's sticky propensity), serves n_u ~ uniform{min_per_user..max_per_user}
impressions, clicks on each at the arm's click rate, and skips among the rest at a
user-level rate q_u ~ Beta with mean skip/(1 - click) (so the arm's skip rate per impression
is ``skip_*``) and intra-class correlation ``icc`` (Beta(m k, (1 - m) k), k = (1 - icc)/icc;
constant at icc = 0). All of a user's impressions land in its batch.

Both analyses run on the same data: the per-impression tests of the module (``ipw``,
``plain``) on the impressions' sums, as if the impressions were independent, and ``user``:
:func:`armlab.core.stats.noninferiority_units.ratio_kernel` (the code
:func:`armlab.core.stats.noninferiority_units.guardrail_unit_test` runs) with tau² planned
from the pooled per-user variance at ``horizon`` users, gated on ``min_samples`` users and
``min_events`` events per arm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from armlab.core.stats.noninferiority_kernels import (
    Harm,
    contrast,
    log_lambda_plus,
    planned_tau2,
)
from armlab.core.stats.noninferiority_units import (
    RATIO_FIELDS,
    ratio_kernel,
    unit_pooled_variance,
)
from armlab.core.stats.validity_grid import thompson_weight

FloatArray = npt.NDArray[np.float64]


class GuardrailSimConfig(Protocol):
    """What this module reads of a cell (:class:`~armlab.core.stats.guardrail_simulation.
    GuardrailSimConfig`; a protocol, so that module can import this one)."""

    @property
    def reps(self) -> int: ...
    @property
    def look_every(self) -> int: ...
    @property
    def horizon(self) -> int: ...
    @property
    def floor(self) -> float: ...
    @property
    def alpha(self) -> float: ...
    @property
    def min_samples(self) -> int: ...
    @property
    def click_a(self) -> float: ...
    @property
    def click_b(self) -> float: ...
    @property
    def skip_a(self) -> float: ...
    @property
    def skip_b(self) -> float: ...
    @property
    def icc(self) -> float: ...
    @property
    def min_per_user(self) -> int: ...
    @property
    def max_per_user(self) -> int: ...
    @property
    def harm(self) -> Harm: ...
    @property
    def margin(self) -> float: ...
    @property
    def relative(self) -> bool: ...


@dataclass
class _Sums:
    """Per arm (rows 0 = control, 1 = treatment; shape (2, reps)): impressions, clicks and the
    metric's sums y, 1/p, y/p, y/p², 1/p² (y² = y: a 0/1 metric)."""

    n: FloatArray
    clicks: FloatArray
    ys: FloatArray
    inv: FloatArray
    ys_p: FloatArray
    ys_p2: FloatArray
    inv2: FloatArray

    @classmethod
    def fresh(cls, reps: int) -> _Sums:
        n, clicks, ys, inv, ys_p, ys_p2, inv2 = (np.zeros((2, reps)) for _ in range(7))
        return cls(n, clicks, ys, inv, ys_p, ys_p2, inv2)




@dataclass
class UserSums:
    """Per arm (shape (2, reps)) the per-user sums of :class:`UnitSums` (the skip metric)."""

    units: FloatArray
    w_1: FloatArray
    w_n: FloatArray
    w_y: FloatArray
    w_yy: FloatArray
    w_yn: FloatArray
    w_nn: FloatArray
    yy: FloatArray
    yn: FloatArray
    nn: FloatArray

    @classmethod
    def fresh(cls, reps: int) -> UserSums:
        return cls(*(np.zeros((2, reps)) for _ in RATIO_FIELDS))

    def add(self, arm: int, mask: FloatArray, n: FloatArray, y: FloatArray, p: FloatArray
            ) -> None:
        """The users of ``arm`` (``mask`` 1 on them; arrays (reps, users)) into the sums."""
        inv, inv2 = mask / p, mask / (p * p)
        self.units[arm] += mask.sum(axis=1)
        for name, x in (("w_1", inv2), ("w_n", n * inv), ("w_y", y * inv), ("w_yy", y * y * inv2),
                        ("w_yn", y * n * inv2), ("w_nn", n * n * inv2), ("yy", y * y * mask),
                        ("yn", y * n * mask), ("nn", n * n * mask)):
            getattr(self, name)[arm] += x.sum(axis=1)


def serve_user_batch(cfg: GuardrailSimConfig, rng: np.random.Generator, sums: _Sums,
                     users: UserSums) -> None:
    """One batch of ``look_every`` sticky users (see the module doc), into both sums."""
    reps, batch = cfg.reps, cfg.look_every
    w_b = thompson_weight(sums.clicks[0], sums.n[0], sums.clicks[1], sums.n[1], cfg.floor)
    treat = rng.random((reps, batch)) < w_b[:, None]
    p = np.where(treat, w_b[:, None], 1.0 - w_b[:, None])
    n = rng.integers(cfg.min_per_user, cfg.max_per_user + 1, (reps, batch)).astype(np.float64)
    c = rng.binomial(n.astype(np.int64), np.where(treat, cfg.click_b, cfg.click_a))
    m = np.where(treat, cfg.skip_b / (1.0 - cfg.click_b), cfg.skip_a / (1.0 - cfg.click_a))
    if cfg.icc > 0.0:
        k = (1.0 - cfg.icc) / cfg.icc
        m = rng.beta(np.maximum(m * k, 1e-9), np.maximum((1.0 - m) * k, 1e-9))
    y = rng.binomial((n - c).astype(np.int64), m).astype(np.float64)
    cf = c.astype(np.float64)
    for arm, mask in ((0, (~treat).astype(np.float64)), (1, treat.astype(np.float64))):
        sums.n[arm] += (n * mask).sum(axis=1)
        sums.clicks[arm] += (cf * mask).sum(axis=1)
        sums.ys[arm] += (y * mask).sum(axis=1)
        sums.inv[arm] += (n * mask / p).sum(axis=1)
        sums.ys_p[arm] += (y * mask / p).sum(axis=1)
        sums.ys_p2[arm] += (y * mask / (p * p)).sum(axis=1)
        sums.inv2[arm] += (n * mask / (p * p)).sum(axis=1)
        users.add(arm, mask, n, y, p)


def user_look(cfg: GuardrailSimConfig, users: UserSums, n: FloatArray, ys: FloatArray,
              events_gate: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """The per-user test at this look: which replications cross the boundary."""
    s, g, m = contrast(cfg.harm, cfg.margin, cfg.relative)
    u = users
    gate = events_gate & (np.minimum(u.units[0], u.units[1]) >= max(cfg.min_samples, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        est, var = ratio_kernel([getattr(u, f)[0] for f in RATIO_FIELDS],
                                [getattr(u, f)[1] for f in RATIO_FIELDS], sign=s, scale=g,
                                binary=True)
        pooled = unit_pooled_variance(u.units.sum(axis=0), n.sum(axis=0), ys.sum(axis=0),
                                      u.yy.sum(axis=0), u.yn.sum(axis=0), u.nn.sum(axis=0))
    tau2 = planned_tau2(pooled, float(cfg.horizon), n_arms=2, floor=cfg.floor,
                        alpha=cfg.alpha)
    ok = gate & (var > 0) & (tau2 > 0) & np.isfinite(est)
    llr = np.where(ok, log_lambda_plus(np.where(ok, est - m, 0.0), np.where(ok, var, 1.0),
                                       np.where(ok, tau2, 1.0)), -np.inf)
    hit: npt.NDArray[np.bool_] = ok & (llr >= -math.log(cfg.alpha))
    return hit
