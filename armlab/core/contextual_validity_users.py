"""A ``unit: user`` contextual cell of the validity grid: sticky users whose impressions are
correlated, analysed per user (as the platform does for ``unit: user``,
:mod:`armlab.core.stats.segment_units`) and, for contrast, per impression.

The cell is the request cell's (:mod:`armlab.core.contextual_validity`: three segments with
shares 0.5 / 0.3 / 0.2 plus the declared ``other``, K arms equal within every segment, the
platform's own policy code reallocating from all data at every look) with users instead of
requests. Every look ``look_every`` users arrive; each user's segment is drawn by the shares,
its arm once from that segment's current weights (sticky; the weight is its propensity), its
own click rate q_u ~ Beta with mean the segment's rate and intra-user correlation ``icc``, and
its ``impressions`` impressions click independently at q_u (so Y_u ~ beta-binomial). The policy
learns the impressions and clicks. Analyses at every look (a replication counts if ANY look
rejects):

* ``segments_per_user``: the per-segment IPW tests of :mod:`armlab.core.stats.segments` on one
  term per user (n = users, the user's total Y_u and its sticky propensity; continuous-reward
  kernel; gate: ``min_samples`` users and ``min_events`` users with a click per arm; tau² by
  the same horizon rule from the segment's share of the ``users`` horizon and the per-user
  variance), family-wise over 4 x (K - 1) hypotheses (Bonferroni, as Holm's first step);
* ``segments_per_impression``: the same tests with every impression a term (binary kernel,
  what the platform did for ``unit: user`` before the per-user analysis);
* ``personalisation_per_user`` / ``_per_impression``: the greedy learned policy against the
  best single arm, the lower bound of its confidence sequence above 0 (the true gain is 0);
* ``average_per_user`` / ``_per_impression``: the average effect of each arm against the
  control over all segments (the experiment's IPW test, what ``unit: user`` experiments run on
  :func:`~armlab.adapters.db.queries.unit_sums`: one term per user with its sticky
  propensity, the continuous kernel, tau² frozen at the gate from the per-user variance and
  the ``users`` horizon; per impression the binary kernel and the impressions' horizon),
  Bonferroni over the K - 1 treatments;
* ``srm_segments_per_user`` / ``_per_impression``: the per-segment SRM check (Bonferroni over
  the 4 segments, at 0.001) on the users' sticky propensities, and for contrast on every
  impression with its user's propensity.

Rates with Monte Carlo s.e.; ``fpr_ok`` = rate <= the level (alpha, 0.001 for SRM) + 2 s.e.
The per-impression rows are expected to fail it when ``icc`` > 0: that is the point of the
contrast.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from armlab.core.contextual_validity import (
    LEVELS,
    RATES,
    SHARES,
    ContextualCell,
    Policy,
    _inv,
    _pair_test,
    _spec,
    _weights,
    cs_radius_v,
)
from armlab.core.stats.adaptive import ipw_kernel
from armlab.core.stats.msprt import log_lambda, tau2_for_horizon
from armlab.core.stats.segments import SEGMENT_SRM_ALPHA, segment_srm_p
from armlab.core.stats.validity_cell import SRM_TAU2, FloatArray
from armlab.errors import StatsError


@dataclass(frozen=True)
class ContextualUserCell:
    """One contextual A/A cell with sticky users (see the module doc)."""

    policy: Policy = "segment_thompson"
    segments: str = "differ"
    floor: float = 0.1
    arms: int = 3
    reps: int = 200
    users: int = 4000
    look_every: int = 200
    impressions: int = 5
    icc: float = 0.2
    alpha: float = 0.05
    min_samples: int = 100
    min_events: int = 30
    seed: int = 0

    def __post_init__(self) -> None:
        if self.segments not in RATES:
            raise StatsError(f"segments must be differ or same, got {self.segments!r}")
        if not 0.0 <= self.icc < 1.0 or self.impressions < 1:
            raise StatsError("need 0 <= icc < 1 and impressions >= 1")
        if self.reps < 1 or self.look_every < 1 or self.users < self.look_every:
            raise StatsError("reps >= 1 and users >= look_every >= 1")

    def policy_cell(self) -> ContextualCell:
        """The request cell whose policy code this cell runs (policy, floor, arms)."""
        return ContextualCell(policy=self.policy, segments=self.segments,  # type: ignore[arg-type]
                              floor=self.floor, arms=self.arms, reps=self.reps,
                              horizon=self.users, look_every=self.look_every)


def _draw_users(cell: ContextualUserCell, w: FloatArray, mu: FloatArray, q: FloatArray,
                rng: np.random.Generator) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """One look's users per (S, G, K): count, sum Y, sum Y², users with Y > 0."""
    s_n, g_n, k_n = w.shape
    seg = rng.multinomial(cell.look_every, q, size=s_n)  # (S, G)
    c = rng.multinomial(seg, w / w.sum(axis=-1, keepdims=True))  # (S, G, K)
    cell_of = np.repeat(np.arange(s_n * g_n * k_n), c.ravel())
    rate = mu[(cell_of // k_n) % g_n, cell_of % k_n]
    if cell.icc > 0:
        kappa = (1.0 - cell.icc) / cell.icc
        rate = rng.beta(rate * kappa, (1.0 - rate) * kappa)
    y = rng.binomial(cell.impressions, rate).astype(np.float64)
    size = s_n * g_n * k_n

    def tot(v: Any) -> FloatArray:
        out = np.bincount(cell_of, weights=v, minlength=size).astype(np.float64)
        return np.asarray(out.reshape(w.shape), dtype=np.float64)

    counts: FloatArray = c.astype(np.float64)
    return counts, tot(y), tot(y * y), tot((y > 0).astype(np.float64))


def _pooled_variance(t: FloatArray, y: FloatArray, yy: FloatArray, binary: bool
                     ) -> FloatArray:
    """The reward variance from t terms with sums y and yy: p (1 - p) of 0/1 terms, else the
    sample variance (the per-user totals)."""
    mean = y / np.maximum(t, 1.0)
    if binary:
        return np.asarray(mean * (1 - mean), dtype=np.float64)
    return np.asarray(np.maximum(yy / np.maximum(t, 1.0) - mean * mean, 0.0)
                      * (t / np.maximum(t - 1.0, 1.0)), dtype=np.float64)


def _llr(s: FloatArray, events: FloatArray, cell: ContextualUserCell, horizon: float,
         binary: bool) -> FloatArray:
    """log Lambda of every (treatment, replication, segment) test from kernel sums s
    (7, S, G, K) (-inf where the gate fails): the rule of
    :func:`armlab.core.contextual_validity.segment_llr`, with the continuous kernel and the
    per-user variance when not ``binary``."""
    t_g = s[0].sum(axis=-1)
    share = t_g / np.maximum(t_g.sum(axis=-1, keepdims=True), 1.0)
    sigma2 = _pooled_variance(t_g, s[1].sum(axis=-1), s[2].sum(axis=-1), binary)
    pc = cell.policy_cell()
    tau2 = tau2_for_horizon(1.0, cell.alpha) * np.maximum(sigma2, 1e-12) * _inv(pc) / (
        np.maximum(horizon * share, 1.0))
    out = []
    for j in range(1, s.shape[-1]):
        a, b = s[..., 0], s[..., j]
        ok = ((np.minimum(a[0], b[0]) >= max(cell.min_samples, 1))
              & (np.minimum(events[..., 0], events[..., j]) >= cell.min_events)
              & (sigma2 > 0) & (t_g >= 2))
        t = np.where(ok, t_g, 2.0)
        ka = [np.where(ok, a[0], 1.0), *a[1:]]
        kb = [np.where(ok, b[0], 1.0), *b[1:]]
        with np.errstate(divide="ignore", invalid="ignore"):
            d, var, _ = ipw_kernel(t, *ka, *kb, binary=binary)
        v = var / t
        ok = ok & (v > 0) & np.isfinite(d)
        out.append(np.where(ok, log_lambda(np.where(ok, d, 0.0), np.where(ok, v, 1.0), tau2),
                            -np.inf))
    return np.stack(out)


def _personalisation_lo(s: FloatArray, w: FloatArray, alpha: float, arms: int
                        ) -> FloatArray:
    """Lower bound of the greedy policy's gain over the best arm (S,), from kernel sums."""
    best = np.argmax(w, axis=-1)
    is_, iss = s[4], s[5]
    at_best = np.take_along_axis(is_, best[..., None], axis=-1)
    at_best2 = np.take_along_axis(iss, best[..., None], axis=-1)
    own = np.arange(arms)[None, None, :] == best[..., None]
    d1 = np.where(own, 0.0, at_best - is_).sum(axis=1)
    d2 = np.where(own, 0.0, at_best2 + iss).sum(axis=1)
    n = s[0].sum(axis=(1, 2))[:, None]
    mean = d1 / n
    sd = np.sqrt(np.maximum(d2 / n - mean**2, 0.0) * n / np.maximum(n - 1, 1.0))
    return np.asarray((mean - cs_radius_v(sd, n, alpha / arms)).min(axis=-1))


def _average_llr(s: FloatArray, events: FloatArray, tau2: FloatArray,
                 cell: ContextualUserCell, horizon: float, binary: bool
                 ) -> tuple[FloatArray, FloatArray]:
    """(log Lambda (K - 1, S) of each treatment's average test against arm 0, the frozen tau²
    (S,) updated): kernel sums s (7, S, G, K) summed over segments; tau² is fixed at the first
    look where every arm has ``min_samples`` terms and ``min_events`` events."""
    tot = s.sum(axis=2)  # (7, S, K)
    ev = events.sum(axis=1)  # (S, K)
    t = tot[0].sum(axis=-1)
    sigma2 = _pooled_variance(t, tot[1].sum(axis=-1), tot[2].sum(axis=-1), binary)
    ready = np.all((tot[0] >= max(cell.min_samples, 1)) & (ev >= cell.min_events), axis=-1)
    new = ready & np.isnan(tau2) & (sigma2 > 0)
    tau2 = np.where(new, tau2_for_horizon(1.0, cell.alpha) * np.maximum(sigma2, 1e-12)
                    * _inv(cell.policy_cell()) / horizon, tau2)
    planned = ~np.isnan(tau2)
    a = tot[..., 0]
    out = [_pair_test(a, tot[..., j], t, np.where(planned, tau2, 1.0), planned & (
        np.minimum(ev[:, 0], ev[:, j]) >= cell.min_events) & (
        np.minimum(a[0], tot[0, :, j]) >= max(cell.min_samples, 1)), binary=binary)
        for j in range(1, s.shape[-1])]
    return np.stack(out), tau2


def _srm_hit(s: FloatArray, cell: ContextualUserCell) -> FloatArray:
    """(S,) any segment's SRM check at 0.001 (Bonferroni over segments) from sums (7, S, G, K)."""
    p = segment_srm_p(s[0], s[3], s[6], SRM_TAU2, cell.min_samples)  # (S, G)
    return np.asarray(np.any(np.minimum(1.0, s.shape[2] * p) <= SEGMENT_SRM_ALPHA, axis=-1))


def run_contextual_user_cell(cell: ContextualUserCell) -> dict[str, Any]:
    """Simulate one cell; each analysis's rejection rate with its Monte Carlo s.e."""
    rng = np.random.default_rng(cell.seed)
    spec = _spec()
    g_all = spec.n_segments
    assert g_all == len(LEVELS) + 1
    q = np.array([*SHARES, 0.0])
    mu = np.repeat(np.array([*RATES[cell.segments], 0.05])[:, None], cell.arms, axis=1)
    reps, k = cell.reps, cell.arms
    users = np.zeros((7, reps, g_all, k))
    imps = np.zeros((7, reps, g_all, k))
    ev_users = np.zeros((reps, g_all, k))
    ev_imps = np.zeros((reps, g_all, k))
    n_pol, s_pol = np.zeros((reps, g_all, k)), np.zeros((reps, g_all, k))
    pc = cell.policy_cell()
    m = g_all * (k - 1)
    thr = math.log(m / cell.alpha)
    hits = {name: np.zeros(reps, dtype=bool) for name in (
        "segments_per_user", "segments_per_impression", "personalisation_per_user",
        "personalisation_per_impression", "average_per_user", "average_per_impression",
        "srm_segments_per_user", "srm_segments_per_impression")}
    m_imp = float(cell.impressions)
    tau2_users, tau2_imps = np.full(reps, np.nan), np.full(reps, np.nan)
    thr_avg = math.log((k - 1) / cell.alpha)
    for _ in range(cell.users // cell.look_every):
        w = _weights(pc, spec, n_pol, s_pol, rng)
        c, y, yy, pos = _draw_users(cell, w, mu, q, rng)
        users += np.stack([c, y, yy, c / w, y / w, yy / w**2, c / w**2])
        # per impression: every impression a 0/1 term with its user's propensity
        ci = c * m_imp
        imps += np.stack([ci, y, y, ci / w, y / w, y / w**2, ci / w**2])
        ev_users += pos
        ev_imps = np.minimum(imps[1], imps[0] - imps[1])
        n_pol += ci
        s_pol += y
        hits["segments_per_user"] |= np.any(
            _llr(users, ev_users, cell, float(cell.users), binary=False) >= thr, axis=(0, 2))
        hits["segments_per_impression"] |= np.any(
            _llr(imps, ev_imps, cell, float(cell.users) * m_imp, binary=True) >= thr,
            axis=(0, 2))
        for name, s in (("personalisation_per_user", users),
                        ("personalisation_per_impression", imps)):
            lo = _personalisation_lo(s, w, cell.alpha, k)
            hits[name] |= (lo > 0) & (s[0].sum(axis=(1, 2)) >= cell.min_samples)
        llr, tau2_users = _average_llr(users, ev_users, tau2_users, cell, float(cell.users),
                                       binary=False)
        hits["average_per_user"] |= np.any(llr >= thr_avg, axis=0)
        llr, tau2_imps = _average_llr(imps, ev_imps, tau2_imps, cell,
                                      float(cell.users) * m_imp, binary=True)
        hits["average_per_impression"] |= np.any(llr >= thr_avg, axis=0)
        hits["srm_segments_per_user"] |= _srm_hit(users, cell)
        hits["srm_segments_per_impression"] |= _srm_hit(imps, cell)
    rows: dict[str, Any] = {}
    for name, hit in hits.items():
        r = float(np.mean(hit))
        se = math.sqrt(max(r * (1 - r), 0.0) / reps)
        level = SEGMENT_SRM_ALPHA if name.startswith("srm") else cell.alpha
        rows[name] = {"fpr": r, "fpr_se": se, "level": level, "fpr_ok": r <= level + 2 * se}
    return {"cell": asdict(cell), "null": True, "analyses": rows}


__all__ = ["ContextualUserCell", "run_contextual_user_cell"]
