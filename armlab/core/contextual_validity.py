"""Contextual cells of the validity grid: A/A false-positive rates of armlab's tests when a
contextual policy (``segment_thompson`` or ``linear_thompson``) allocates the traffic.

A cell: three segments (feature ``segment``, levels s0, s1, s2, shares 0.5 / 0.3 / 0.2; the
features' ``other`` level is declared too, so the platform counts 4 segments) and K arms that
are equal within every segment (A/A). ``segments: differ``: the segments' click rates differ
(0.02, 0.05, 0.10), so a contextual policy has structure to chase; ``same``: 0.05 everywhere.
Every ``look_every`` impressions the policy (the platform's own code: :func:`armlab.core.
policies.contextual.segment_weights`, or :func:`~armlab.core.policies.linear_thompson.
fit_linear` / ``linear_weights``) recomputes its weights per
segment from all data, with the exploration floor; the look's impressions are drawn per segment
with those weights, whose values are the logged propensities. Vectorised over replications.

Analyses at every look (a replication counts as a false positive if ANY look rejects):

* ``average``: the per-arm IPW test of :mod:`armlab.core.decisions` (the kernel
  :func:`armlab.core.stats.adaptive.ipw_kernel`, its information gate, tau² frozen per
  replication at the first look where every arm passes the gate, as ``plan_look`` does),
  family-wise over the K - 1 treatments (Holm rejects something iff Bonferroni does);
* ``segments``: the per-segment tests of :mod:`armlab.core.stats.segments` (tau² recomputed at
  every look from the segment's share and pooled variance), family-wise over the
  4 x (K - 1) hypotheses; ``segments_unadjusted`` the same tests at alpha each (what one gets
  without multiplicity control);
* ``srm_segments``: the per-segment SRM check, Bonferroni over the 4 segments, at 0.001;
* ``personalisation``: the greedy learned policy against the best single arm
  (:mod:`armlab.core.stats.personalisation`, each look's snapshot evaluated on all data so far):
  the rate at which the confidence sequence's lower bound exceeds 0 at some look; the true gain
  is 0 in an A/A cell.

``segments: crossed`` (each segment its own best arm) and ``lift`` != 1 are not A/A: their
rates are power (``null`` False in the result).

Rates come with Monte Carlo standard errors sqrt(r (1 - r) / reps); ``fpr_ok`` = rate <= alpha
(0.001 for SRM) + 2 s.e.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from armlab.core.policies.context_features import ContextParams, ContextSpec
from armlab.core.policies.contextual import SegmentThompsonSettings, segment_weights
from armlab.core.policies.linear_thompson import (
    LinearThompsonSettings,
    fit_linear,
    linear_weights,
)
from armlab.core.stats.adaptive import ipw_kernel
from armlab.core.stats.msprt import log_lambda, tau2_for_horizon
from armlab.core.stats.segments import SEGMENT_SRM_ALPHA, segment_srm_p
from armlab.core.stats.validity_cell import SRM_TAU2, FloatArray
from armlab.errors import StatsError

Policy = Literal["segment_thompson", "linear_thompson"]
Segments = Literal["differ", "same", "crossed"]
SHARES = (0.5, 0.3, 0.2)
RATES = {"differ": (0.02, 0.05, 0.10), "same": (0.05, 0.05, 0.05)}
LEVELS = ("s0", "s1", "s2")
#: ``crossed`` (not A/A: a power check of the personalisation value): each segment has its own
#: best arm, pooled the arms are close (the ``segments_differ`` scenario of ``armlab bench
#: contextual``); needs 3 arms.
CROSSED = ((0.06, 0.04, 0.03), (0.03, 0.07, 0.04), (0.02, 0.03, 0.08))


@dataclass(frozen=True)
class ContextualCell:
    """One contextual A/A cell (see the module doc)."""

    policy: Policy = "segment_thompson"
    segments: Segments = "differ"
    floor: float = 0.1
    arms: int = 3
    reps: int = 500
    horizon: int = 20_000
    look_every: int = 500
    alpha: float = 0.05
    min_samples: int = 100
    min_events: int = 30
    seed: int = 0
    #: arm 1's click rate x ``lift`` in every segment (1.0: the A/A cell; else a power check)
    lift: float = 1.0

    def __post_init__(self) -> None:
        if self.policy not in ("segment_thompson", "linear_thompson"):
            raise StatsError(f"policy must be segment_thompson or linear_thompson, "
                             f"got {self.policy!r}")
        if self.segments not in (*RATES, "crossed"):
            raise StatsError(f"segments must be differ, same or crossed, got "
                             f"{self.segments!r}")
        if self.segments == "crossed" and self.arms != 3:
            raise StatsError("segments crossed needs 3 arms")
        if self.arms < 2 or not (0.0 < self.floor * self.arms <= 1.0):
            raise StatsError("need >= 2 arms and 0 < floor x arms <= 1")
        if self.reps < 1 or self.look_every < 1 or self.horizon < self.look_every:
            raise StatsError("reps >= 1 and horizon >= look_every >= 1")


def _spec() -> ContextSpec:
    feats = [{"name": "segment", "kind": "categorical", "levels": list(LEVELS)}]
    return ContextSpec(ContextParams(features=feats).features)


def _weights(cell: ContextualCell, spec: ContextSpec, n: FloatArray, s: FloatArray,
             rng: np.random.Generator) -> FloatArray:
    """(S, G, K) serving weights of every segment from the counts n, s (S, G, K)."""
    feats = [f.model_dump() for f in spec.features]
    if cell.policy == "segment_thompson":
        st = SegmentThompsonSettings(features=feats, floor=cell.floor)
        return segment_weights(n, s, st, rng)[0]
    lt = LinearThompsonSettings(features=feats, floor=cell.floor)
    xg = spec.encode_many([{"segment": lev} for lev in (*LEVELS, None)])  # (G, d)
    xtx = np.einsum("sgk,gi,gj->skij", n, xg, xg)
    xty = np.einsum("sgk,gi->ski", s, xg)
    model = fit_linear(spec, lt, xtx, xty)
    x = np.broadcast_to(xg, (n.shape[0], *xg.shape))
    return linear_weights(x, model.mean, model.cov, lt.floor, lt.grid, model.pooled,
                          model.context_weight)[0]


def _draw(cell: ContextualCell, w: FloatArray, mu: FloatArray, q: FloatArray,
          rng: np.random.Generator) -> tuple[FloatArray, FloatArray]:
    """One look's impressions and clicks per (S, G, K)."""
    seg = rng.multinomial(cell.look_every, q, size=w.shape[0])  # (S, G)
    k = rng.multinomial(seg, w / w.sum(axis=-1, keepdims=True))  # (S, G, K)
    x = rng.binomial(k, np.broadcast_to(mu[None], k.shape))
    return k.astype(np.float64), x.astype(np.float64)


def _kernel_sums(sums: FloatArray) -> list[FloatArray]:
    """The seven kernel sums (n, s, ss, in, is, iss, ins) of a (7, ...) array."""
    return [sums[i] for i in range(7)]


def _pair_test(a: FloatArray, b: FloatArray, t: FloatArray, tau2: FloatArray,
               gate: Any, *, binary: bool = True) -> FloatArray:
    """log Lambda of the IPW test of b vs a (arrays of kernel sums), -inf where not gated;
    the continuous-reward kernel when not ``binary`` (one term per user)."""
    ok = gate & (t >= 2)
    safe_t = np.where(ok, t, 2.0)
    ka, kb = _kernel_sums(a), _kernel_sums(b)
    ka[0], kb[0] = np.where(ok, ka[0], 1.0), np.where(ok, kb[0], 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        d, sigma2, _ = ipw_kernel(safe_t, *ka, *kb, binary=binary)
    v = sigma2 / safe_t
    ok = ok & (v > 0) & np.isfinite(d)
    return np.where(ok, log_lambda(np.where(ok, d, 0.0), np.where(ok, v, 1.0), tau2), -np.inf)


def _gate(a: FloatArray, b: FloatArray, cell: ContextualCell) -> Any:
    ev = np.minimum(np.minimum(a[1], a[0] - a[1]), np.minimum(b[1], b[0] - b[1]))
    return (np.minimum(a[0], b[0]) >= max(cell.min_samples, 1)) & (ev >= cell.min_events)


def _inv(cell: ContextualCell) -> float:
    f, k = cell.floor, cell.arms
    return 1.0 / f + 1.0 / max(1.0 - (k - 1) * f, f)


class _Run:
    """The running sums and outcomes of one simulated cell."""

    def __init__(self, cell: ContextualCell, g_all: int) -> None:
        reps, k = cell.reps, cell.arms
        self.cell = cell
        self.sums = np.zeros((7, reps, g_all, k))  # n, s, ss, in, is, iss, ins
        self.tau2 = np.full(reps, np.nan)  # the average test's frozen tau²
        self.hits = {name: np.zeros(reps, dtype=bool) for name in
                     ("average", "segments", "segments_unadjusted", "srm_segments",
                      "personalisation")}

    def add(self, k: FloatArray, x: FloatArray, w: FloatArray) -> None:
        self.sums += np.stack([k, x, x, k / w, x / w, x / w**2, k / w**2])

    def analyse(self, w: FloatArray) -> None:
        self._average()
        self._segments()
        self._srm()
        self._personalisation(w)

    def _average(self) -> None:
        c, tot = self.cell, self.sums.sum(axis=2)  # (7, S, K)
        t = tot[0].sum(axis=-1)
        k = c.arms
        ev = np.minimum(tot[1], tot[0] - tot[1])
        ready = np.all((tot[0] >= c.min_samples) & (ev >= c.min_events), axis=-1)
        mean = tot[1].sum(axis=-1) / np.maximum(t, 1.0)
        sigma2 = mean * (1 - mean)
        new = ready & np.isnan(self.tau2) & (sigma2 > 0)
        tau2_new = tau2_for_horizon(1.0, c.alpha) * sigma2 * _inv(c) / c.horizon
        self.tau2 = np.where(new, tau2_new, self.tau2)
        planned = ~np.isnan(self.tau2)
        thr = math.log((k - 1) / c.alpha)
        for j in range(1, k):
            a, b = tot[..., 0], tot[..., j]
            llr = _pair_test(a, b, t, np.where(planned, self.tau2, 1.0),
                             _gate(a, b, c) & planned)
            self.hits["average"] |= llr >= thr

    def _segments(self) -> None:
        c, g_all = self.cell, self.sums.shape[2]
        m = g_all * (c.arms - 1)
        llr = segment_llr(self.sums, c)  # (K - 1, S, G)
        self.hits["segments"] |= np.any(llr >= math.log(m / c.alpha), axis=(0, 2))
        self.hits["segments_unadjusted"] |= np.any(llr >= math.log(1 / c.alpha), axis=(0, 2))

    def _srm(self) -> None:
        s, g_all = self.sums, self.sums.shape[2]
        p = segment_srm_p(s[0], s[3], s[6], SRM_TAU2, self.cell.min_samples)  # (S, G)
        self.hits["srm_segments"] |= np.any(np.minimum(1.0, g_all * p) <= SEGMENT_SRM_ALPHA,
                                            axis=-1)

    def _personalisation(self, w: FloatArray) -> None:
        """Greedy policy (argmax of this look's weights per segment) vs every arm, IPW
        differences from the per-(segment, arm) sums, Bonferroni over the K arms."""
        c, s = self.cell, self.sums
        best = np.argmax(w, axis=-1)  # (S, G)
        is_, iss = s[4], s[5]  # (S, G, K)
        at_best = np.take_along_axis(is_, best[..., None], axis=-1)
        at_best2 = np.take_along_axis(iss, best[..., None], axis=-1)
        own = np.arange(c.arms)[None, None, :] == best[..., None]
        d1 = np.where(own, 0.0, at_best - is_).sum(axis=1)  # (S, K)
        d2 = np.where(own, 0.0, at_best2 + iss).sum(axis=1)
        n = s[0].sum(axis=(1, 2))[:, None]
        mean = d1 / n
        sd = np.sqrt(np.maximum(d2 / n - mean**2, 0.0) * n / np.maximum(n - 1, 1.0))
        lo = mean - cs_radius_v(sd, n, c.alpha / c.arms)
        self.hits["personalisation"] |= (lo.min(axis=-1) > 0) & (n[:, 0] >= c.min_samples)


def segment_llr(s: FloatArray, c: ContextualCell) -> FloatArray:
    """log Lambda of every (treatment, replication, segment) test, shape (K - 1, S, G), from
    the kernel sums ``s`` (7, S, G, K): the rule of :func:`armlab.core.stats.segments.
    segment_effects` (tau² from the segment's share and pooled variance at this look; -inf
    where the look gate fails)."""
    t_g = s[0].sum(axis=-1)  # (S, G)
    share = t_g / np.maximum(t_g.sum(axis=-1, keepdims=True), 1.0)
    mean = s[1].sum(axis=-1) / np.maximum(t_g, 1.0)
    sigma2 = mean * (1 - mean)
    tau2 = tau2_for_horizon(1.0, c.alpha) * np.maximum(sigma2, 1e-12) * _inv(c) / (
        np.maximum(c.horizon * share, 1.0))
    return np.stack([_pair_test(s[..., 0], s[..., j], t_g, tau2,
                                _gate(s[..., 0], s[..., j], c) & (sigma2 > 0))
                     for j in range(1, s.shape[-1])])


def cs_radius_v(sd: FloatArray, t: FloatArray, alpha: float,
                t_opt: int = 10_000) -> FloatArray:
    """:func:`armlab.core.stats.ope_estimate.cs_radius`, vectorised (same fixed horizon)."""
    la = -2.0 * math.log(alpha)
    eta2 = (la + math.log(la + 1.0)) / t_opt
    inner = 2.0 * (t * eta2 + 1.0) / (t * t * eta2) * np.log(np.sqrt(t * eta2 + 1.0) / alpha)
    return np.asarray(sd * np.sqrt(inner), dtype=np.float64)


def run_contextual_cell(cell: ContextualCell) -> dict[str, Any]:
    """Simulate one cell; every analysis's rejection rate with its MC s.e. (the false-positive
    rate when ``lift`` is 1)."""
    rng = np.random.default_rng(cell.seed)
    spec = _spec()
    g_all = spec.n_segments  # the three levels and ``other`` (no traffic)
    q = np.array([*SHARES, 0.0])
    if cell.segments == "crossed":
        mu = np.array([*CROSSED, (0.05,) * 3])
    else:
        mu = np.repeat(np.array([*RATES[cell.segments], 0.05])[:, None], cell.arms, axis=1)
    mu[:, 1] *= cell.lift
    run = _Run(cell, g_all)
    for _ in range(cell.horizon // cell.look_every):
        n, s = run.sums[0], run.sums[1]
        w = _weights(cell, spec, n, s, rng)
        k, x = _draw(cell, w, mu, q, rng)
        run.add(k, x, w)
        run.analyse(w)
    rows: dict[str, Any] = {}
    for name, hit in run.hits.items():
        level = SEGMENT_SRM_ALPHA if name == "srm_segments" else cell.alpha
        r = float(np.mean(hit))
        se = math.sqrt(max(r * (1 - r), 0.0) / cell.reps)
        rows[name] = {"fpr": r, "fpr_se": se, "level": level,
                      "fpr_ok": r <= level + 2 * se}
    null = cell.lift == 1.0 and cell.segments != "crossed"
    return {"cell": asdict(cell), "null": null, "analyses": rows}


def contextual_grid(policies: tuple[Policy, ...] = ("segment_thompson", "linear_thompson"),
                    segments: tuple[Segments, ...] = ("differ", "same"),
                    floors: tuple[float, ...] = (0.1,), **common: Any) -> list[ContextualCell]:
    """The contextual cells (a seed per cell from its coordinates and ``seed``)."""
    seed = int(common.pop("seed", 0))
    return [ContextualCell(policy=p, segments=sg, floor=f,
                           seed=seed * 1_000_003 + i * 7919, **common)
            for i, (p, sg, f) in enumerate((p, sg, f) for p in policies for sg in segments
                                           for f in floors)]


__all__ = ["ContextualCell", "contextual_grid", "cs_radius_v", "run_contextual_cell",
           "segment_llr"]
