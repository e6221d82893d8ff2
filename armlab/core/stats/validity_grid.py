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
  by the floor), frozen per replication from its own pooled variance at the look gate
  (``plan_at``: ``events``, the platform's rule, or ``samples``), on matured data; for
  ``unit: user`` one term per user (the per-user reward
  total with its sticky propensity: a cluster-level analysis, so the variance is
  cluster-robust). Also reported one-sided ("treatment better", the half-normal mixture of
  :func:`armlab.core.stats.msprt.log_lambda_greater`) for power.
* ``armlab_horizon``: the same analysis with ``sequential.boundary: horizon`` (the flat
  boundary of :class:`armlab.core.stats.msprt.HorizonBoundary` up to the planned information,
  80% of alpha, beside the mixture with the rest), two-sided and one-sided.
* ``msprt_thompson``: plain mSPRT (JKPW 2022) on the arm means under the same Thompson
  allocation, no information gate: what armlab replaced.
* ``msprt_fixed``: plain mSPRT on a fixed 50/50 split: the reference power.
* ``armlab_cuped`` / ``armlab_cuped_horizon`` (unit user with ``pre_impressions`` > 0): the same
  two analyses on Y - theta X, X the user's clicks in a pre-period of that many impressions
  (:mod:`armlab.core.stats.cuped`; the platform's ``sequential.cuped``). In those cells a user
  has one latent rate q (q in arm a, q x lift in arm b) and X ~ Binomial(pre_impressions, q).
* for ``unit: user`` also ``ipw_per_impression``: the IPW test with every impression as an
  independent term (the analysis armlab used before it analysed users).

Unit ``user``: each user brings ``impressions_per_user`` impressions at once, all in the arm
drawn at first exposure with that moment's weight; the user's click probability is
Beta(p kappa, (1 - p) kappa) with kappa = 1/icc - 1, so two impressions of one user have
correlation icc (beta-binomial). Delay: every impression's reward becomes known
``delay_impressions`` impressions after it was served (its attribution window); the test and
the policy see only impressions older than that (matured), like the allocator.

Monte Carlo standard errors are sqrt(rate (1 - rate) / reps).

Layout: the cell and the Thompson weight live in :mod:`armlab.core.stats.validity_cell`, the
analyses' running state in :mod:`armlab.core.stats.validity_trackers`, one simulated
experiment in :mod:`armlab.core.stats.validity_sim`; this module runs the cells and summarises
the grid (and re-exports the cell's names).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict
from typing import Any

import numpy as np
import numpy.typing as npt

from armlab.core.stats.validity_cell import (
    SRM_ALPHA,
    SRM_TAU2,
    CellConfig,
    FloatArray,
    Unit,
    thompson_weight,
)
from armlab.core.stats.validity_sim import _simulate

__all__ = [
    "GRID_BASE_RATES", "GRID_DELAYS", "GRID_FLOORS", "GRID_LOOKS", "GRID_UNITS", "SRM_ALPHA",
    "SRM_TAU2", "CellConfig", "FloatArray", "Unit", "grid", "run_cell", "summarise",
    "thompson_weight",
]


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
            if allocation == "thompson":
                row["inverse_sum"] = float(np.mean(ab[name]["inverse_sum"]))
            rows[name] = row
    _beside_fixed(rows, cfg.alpha)
    return {"cell": asdict(cfg), "p_treatment": p_b, "analyses": rows}


def _beside_fixed(rows: dict[str, dict[str, Any]], alpha: float) -> None:
    """Every analysis's A/A rate and power beside the fixed-split plain mSPRT's of the same
    run (same cell, same seeds): ``alpha_unspent`` = alpha - fpr shows what a test leaves
    unspent, ``fpr_fixed`` what the mixture itself leaves on a fixed split."""
    ref = rows["msprt_fixed"]
    for row in rows.values():
        row.update(alpha_unspent=alpha - row["fpr"], fpr_fixed=ref["fpr"],
                   fpr_greater_fixed=ref["fpr_greater"], power_fixed=ref["power"],
                   power_greater_fixed=ref["power_greater"])


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
                        kw = {k: v for k, v in common.items()
                              if u == "user" or k != "pre_impressions"}  # a user covariate
                        cells.append(CellConfig(base_rate=p, floor=f, look_every=le, unit=u,
                                                delay=d, seed=cell_seed, **kw))
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
            "max_fpr_cell_fixed_fpr": worst[1].get("fpr_fixed"),
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
