"""Monte Carlo evidence for the guardrail test under bandit allocation and continuous looks.

Two arms, control a and treatment b, ``horizon`` impressions in batches of ``look_every``.
Each impression ends in exactly one of: a click (the primary reward, rate ``click_*``), a skip
(rate ``skip_*``; clicks and skips exclude each other, as on a real list) or nothing. Before
every batch armlab's Thompson policy sets the treatment's weight to P(b has the better click
rate) under Beta(1 + S, 1 + F) posteriors (the normal approximation of
:mod:`armlab.core.stats.validity_grid`), clipped to [floor, 1 - floor] (the two-arm floor
projection); the batch's arms are drawn with those weights, which are the logged
propensities. So the allocation depends on the past clicks and, through their exclusion, on
the past skips: exactly the adaptivity the IPW test is built for.

The guardrail metric is the skip (``metric="skip"``) or the click itself (``metric="click"``:
a guardrail on the primary reward, the allocation's own signal, the hardest case for a test
that ignores the allocation). After every batch (a look) two analyses run on the same data:

* ``ipw``: the platform's test, :func:`armlab.core.stats.noninferiority.excess_kernel` (the exact
  code :func:`armlab.core.stats.noninferiority.guardrail_test` runs) with tau² from
  :func:`armlab.core.stats.noninferiority.planned_tau2` recomputed at every look as the test does
  by default, the information gate (``min_samples`` impressions and ``min_events`` events per
  arm) and the one-sided mixture (:func:`armlab.core.stats.noninferiority.log_lambda_plus`);
* ``plain``: the one-sided mSPRT (Johari et al. 2022) on the plain per-arm means, same gate,
  tau² planned for a fixed 50/50 split: what a guardrail test that ignores the allocation does.

Both are run in *shadow*: the allocation never reacts to them, so each one's first breach is
exactly the breach it would cause, and the breach time tau tells what a rollback would have
changed: with rollback at tau every later impression goes to the control, so (in
expectation) the treatment serves only its impressions before tau. The no-guardrail run is
the same simulation without a rollback: a same-run baseline with common random numbers.

``unit="user"`` (:mod:`armlab.core.stats.guardrail_simulation_users`): ``horizon`` and
``look_every`` count sticky users, each with ``min_per_user``..``max_per_user`` impressions
and a user-level skip rate with intra-class correlation ``icc``; a third analysis, ``user``,
runs the per-user guardrail test (the platform's analysis for ``unit: user``) next to the
per-impression ones, which then treat correlated impressions as independent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from armlab.core.stats.adaptive import planned_variance
from armlab.core.stats.guardrail_simulation_users import (
    UserSums,
    _Sums,
    serve_user_batch,
    user_look,
)
from armlab.core.stats.noninferiority import (
    HARMS,
    Harm,
    contrast,
    excess_kernel,
    log_lambda_plus,
    planned_tau2,
    pooled_variance,
    tau2_factor,
)
from armlab.core.stats.validity_grid import thompson_weight
from armlab.errors import StatsError

FloatArray = npt.NDArray[np.float64]
Metric = Literal["skip", "click"]
Unit = Literal["request", "user"]


@dataclass(frozen=True)
class GuardrailSimConfig:
    """One cell (see the module doc). Margins: absolute ``margin`` or relative (x control)."""

    click_a: float = 0.05
    click_b: float = 0.06
    skip_a: float = 0.10
    skip_b: float = 0.10
    metric: Metric = "skip"
    harm: Harm = "increase"
    margin: float = 0.0
    relative: bool = False
    horizon: int = 20_000
    look_every: int = 20
    floor: float = 0.1
    alpha: float = 0.05
    min_samples: int = 1
    min_events: int = 30
    reps: int = 1000
    seed: int = 0
    unit: Unit = "request"
    icc: float = 0.0
    min_per_user: int = 10
    max_per_user: int = 40

    def __post_init__(self) -> None:
        self._check_unit()
        for name in ("click_a", "click_b", "skip_a", "skip_b"):
            v = getattr(self, name)
            if not (0.0 <= v < 1.0):
                raise StatsError(f"{name} must lie in [0, 1), got {v!r}")
        if self.click_a + self.skip_a >= 1.0 or self.click_b + self.skip_b >= 1.0:
            raise StatsError("click + skip rate must stay below 1 per arm")
        if self.metric not in ("skip", "click"):
            raise StatsError(f"metric must be skip or click, got {self.metric!r}")
        if self.harm not in HARMS:
            raise StatsError(f"harm must be one of {HARMS}, got {self.harm!r}")
        if not (self.margin >= 0.0 and math.isfinite(self.margin)):
            raise StatsError(f"margin must be a finite number >= 0, got {self.margin!r}")
        if self.look_every < 1 or self.horizon < self.look_every:
            raise StatsError("need 1 <= look_every <= horizon")
        if not (0.0 < self.floor < 0.5):
            raise StatsError(f"floor must lie in (0, 0.5), got {self.floor!r}")
        if not (0.0 < self.alpha < 1.0):
            raise StatsError(f"alpha must lie in (0, 1), got {self.alpha!r}")
        if self.reps < 1:
            raise StatsError(f"reps must be >= 1, got {self.reps!r}")

    def _check_unit(self) -> None:
        if self.unit not in ("request", "user"):
            raise StatsError(f"unit must be request or user, got {self.unit!r}")
        if not (0.0 <= self.icc < 1.0):
            raise StatsError(f"icc must lie in [0, 1), got {self.icc!r}")
        if not (1 <= self.min_per_user <= self.max_per_user):
            raise StatsError("need 1 <= min_per_user <= max_per_user")
        if self.unit == "user" and self.metric != "skip":
            raise StatsError("unit user simulates the skip metric only")

    @property
    def horizon_impressions(self) -> float:
        """The planned impressions (the per-impression tests' tau² plan): ``horizon``, or for
        ``unit="user"`` its users times their mean impressions."""
        if self.unit == "user":
            return self.horizon * (self.min_per_user + self.max_per_user) / 2.0
        return float(self.horizon)

    @property
    def analyses(self) -> tuple[str, ...]:
        return ("ipw", "plain", "user") if self.unit == "user" else ("ipw", "plain")

    @property
    def guard_rates(self) -> tuple[float, float]:
        return ((self.skip_a, self.skip_b) if self.metric == "skip"
                else (self.click_a, self.click_b))

    @property
    def true_excess(self) -> float:
        """E = s (mu_b - g mu_a) - m at the simulated rates (<= 0: no harm beyond the margin)."""
        s, g, m = contrast(self.harm, self.margin, self.relative)
        mu_a, mu_b = self.guard_rates
        return s * (mu_b - g * mu_a) - m


def _serve_batch(cfg: GuardrailSimConfig, rng: np.random.Generator, sums: _Sums) -> None:
    """One batch: the Thompson weight from the clicks so far, the treatment's impressions, then
    per arm its clicks and (among the rest) its skips, added to the sums."""
    batch = cfg.look_every
    rates_click = (cfg.click_a, cfg.click_b)
    rates_skip = (cfg.skip_a, cfg.skip_b)
    n, clicks = sums.n, sums.clicks
    w_b = thompson_weight(clicks[0], n[0], clicks[1], n[1], cfg.floor)
    k_b = rng.binomial(batch, w_b).astype(np.float64)
    for arm, k, w in ((0, batch - k_b, 1.0 - w_b), (1, k_b, w_b)):
        c = rng.binomial(k.astype(np.int64), rates_click[arm]).astype(np.float64)
        cond = rates_skip[arm] / (1.0 - rates_click[arm])
        sk = rng.binomial((k - c).astype(np.int64), cond).astype(np.float64)
        y = sk if cfg.metric == "skip" else c
        n[arm] += k
        clicks[arm] += c
        sums.ys[arm] += y
        sums.inv[arm] += k / w
        sums.ys_p[arm] += y / w
        sums.ys_p2[arm] += y / (w * w)
        sums.inv2[arm] += k / (w * w)


def _first_breach(out: dict[str, FloatArray], name: str, hit: npt.NDArray[np.bool_], t: float,
                  nb: FloatArray) -> None:
    """Record, for the replications that breach ``name`` for the first time, when (``t``) and
    the treatment impressions served until then (``nb``)."""
    out[f"{name}_t"] = np.where(hit, t, out[f"{name}_t"])
    out[f"{name}_nb"] = np.where(hit, nb, out[f"{name}_nb"])
    out[f"{name}_breach"] = np.where(hit, 1.0, out[f"{name}_breach"])


def _ipw_look(cfg: GuardrailSimConfig, sums: _Sums, t: FloatArray, gate: npt.NDArray[np.bool_],
              pooled: FloatArray, nn: FloatArray) -> npt.NDArray[np.bool_]:
    """The platform's test at this look: which replications cross the boundary."""
    s, g, m = contrast(cfg.harm, cfg.margin, cfg.relative)
    ys, inv, ys_p, ys_p2, inv2 = sums.ys, sums.inv, sums.ys_p, sums.ys_p2, sums.inv2
    tt = np.asarray(t, dtype=np.float64)
    est, sigma2, _ = excess_kernel(tt, nn[0], ys[0], ys[0], inv[0], ys_p[0], ys_p2[0],
                                   inv2[0], nn[1], ys[1], ys[1], inv[1], ys_p[1],
                                   ys_p2[1], inv2[1], sign=s, scale=g, binary=True)
    tau2 = planned_tau2(pooled, cfg.horizon_impressions, n_arms=2, floor=cfg.floor,
                        alpha=cfg.alpha)
    var = sigma2 / t
    ok = gate & (var > 0) & (tau2 > 0)
    llr = np.where(ok, log_lambda_plus(est - m, np.where(ok, var, 1.0),
                                       np.where(ok, tau2, 1.0)), -np.inf)
    hit: npt.NDArray[np.bool_] = ok & (llr >= -math.log(cfg.alpha))
    return hit


def _plain_look(cfg: GuardrailSimConfig, sums: _Sums, gate: npt.NDArray[np.bool_],
                pooled: FloatArray, nn: FloatArray, plain_factor: float
                ) -> npt.NDArray[np.bool_]:
    """The one-sided mSPRT on the plain per-arm means at this look (tau² for a 50/50 split)."""
    s, g, m = contrast(cfg.harm, cfg.margin, cfg.relative)
    ys = sums.ys
    ma, mb = ys[0] / nn[0], ys[1] / nn[1]
    d = s * (mb - g * ma) - m
    v = g * g * ma * (1 - ma) / nn[0] + mb * (1 - mb) / nn[1]
    tau2p = pooled * plain_factor
    okp = gate & (v > 0) & (tau2p > 0)
    llrp = np.where(okp, log_lambda_plus(d, np.where(okp, v, 1.0),
                                         np.where(okp, tau2p, 1.0)), -np.inf)
    hit: npt.NDArray[np.bool_] = okp & (llrp >= -math.log(cfg.alpha))
    return hit


def simulate_guardrail(cfg: GuardrailSimConfig) -> dict[str, FloatArray]:
    """Run one cell; per-replication arrays (shape (reps,)), for each analysis x of
    ``cfg.analyses`` (``ipw``, ``plain``, and ``user`` for ``unit="user"``):

    ``x_breach`` (0/1), ``x_t`` (impressions, or users for ``unit="user"``, over both arms at
    the first breach, ``horizon`` when none), ``x_nb`` (treatment impressions served before
    that breach), ``nb_total`` (treatment impressions over the horizon without a guardrail),
    ``n_all`` (impressions over both arms).
    """
    rng = np.random.default_rng(cfg.seed)
    reps, batch = cfg.reps, cfg.look_every
    plain_v = planned_variance(1.0, cfg.horizon_impressions, 2, method="plain", floor=0.0)
    plain_factor = plain_v * tau2_factor(cfg.alpha)
    sums = _Sums.fresh(reps)
    users = UserSums.fresh(reps) if cfg.unit == "user" else None
    n, ys = sums.n, sums.ys
    out = {f"{a}_{k}": np.zeros(reps) for a in cfg.analyses for k in ("breach", "nb")}
    out.update({f"{a}_t": np.full(reps, float(cfg.horizon)) for a in cfg.analyses})
    for look in range(cfg.horizon // batch):
        if users is None:
            _serve_batch(cfg, rng, sums)
        else:
            serve_user_batch(cfg, rng, sums, users)
        t = float((look + 1) * batch)
        events = np.minimum(ys, n - ys)
        events_gate = np.minimum(events[0], events[1]) >= cfg.min_events
        gate = (np.minimum(n[0], n[1]) >= max(cfg.min_samples, 1)) & events_gate
        if not gate.any():
            continue
        pooled = pooled_variance(n[0] + n[1], ys[0] + ys[1], ys[0] + ys[1], binary=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            nn = np.maximum(n, 1.0)
            hits = {"ipw": _ipw_look(cfg, sums, nn[0] + nn[1], gate, pooled, nn),
                    "plain": _plain_look(cfg, sums, gate, pooled, nn, plain_factor)}
            if users is not None:
                hits["user"] = user_look(cfg, users, n, ys, events_gate)
        for name, hit in hits.items():
            _first_breach(out, name, hit & (out[f"{name}_breach"] == 0), t, n[1])
    out["nb_total"] = n[1].copy()
    out["n_all"] = n[0] + n[1]
    for name in cfg.analyses:
        out[f"{name}_nb"] = np.where(out[f"{name}_breach"] > 0, out[f"{name}_nb"],
                                     out["nb_total"])
    return out


def merge(parts: list[dict[str, FloatArray]]) -> dict[str, FloatArray]:
    """Concatenate the per-replication arrays of several chunks of one cell."""
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _rate(x: FloatArray) -> dict[str, float]:
    r = float(x.mean())
    return {"rate": r, "se": math.sqrt(max(r * (1.0 - r), 1e-12) / x.size)}


def summarise(cfg: GuardrailSimConfig, out: dict[str, FloatArray]) -> dict[str, object]:
    """Rates with Monte Carlo standard errors, time to rollback and the regret accounting.

    Regret (expected values at the simulated rates, so only the allocation is random):
    ``extra_harm`` = treatment impressions x s (mu_b - mu_a), the harmful events the treatment
    caused beyond what the control would have (e.g. extra skips); ``click_gain`` = treatment
    impressions x (click_b - click_a), the primary reward the treatment brought. With a
    rollback at the first breach the treatment serves only its impressions before it; the
    no-guardrail baseline serves it over the whole horizon.
    """
    reps = out["ipw_breach"].size
    s, _, _ = contrast(cfg.harm, cfg.margin, cfg.relative)
    mu_a, mu_b = cfg.guard_rates
    harm_per = s * (mu_b - mu_a)
    click_per = cfg.click_b - cfg.click_a
    res: dict[str, object] = {"reps": reps, "true_excess": cfg.true_excess}
    for name in cfg.analyses:
        br = out[f"{name}_breach"]
        times = out[f"{name}_t"][br > 0]
        res[name] = {
            "breach": _rate(br),
            "median_t": float(np.median(times)) if times.size else None,
            "mean_t": float(times.mean()) if times.size else None,
            "extra_harm": float((out[f"{name}_nb"] * harm_per).mean()),
            "click_gain": float((out[f"{name}_nb"] * click_per).mean()),
        }
    res["no_guardrail"] = {
        "treatment_share": float(out["nb_total"].mean() / (
            float(out["n_all"].mean()) if cfg.unit == "user" else cfg.horizon)),
        "extra_harm": float((out["nb_total"] * harm_per).mean()),
        "click_gain": float((out["nb_total"] * click_per).mean()),
    }
    return res
