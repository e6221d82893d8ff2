"""``armlab bench guardrails``: false rollbacks, detection and regret saved by the guardrail
test under Thompson allocation with continuous looks, each against a same-run baseline.

Every cell is :func:`armlab.core.stats.guardrail_simulation.simulate_guardrail` (two arms, Thompson
on the click rate with an exploration floor, a look every ``look_every`` impressions up to
``horizon``), split into chunks that run on ``workers`` processes with independent seeds
(``numpy.random.SeedSequence``); the split does not depend on ``workers``, so the figures
depend on the seed only. On the same simulated data:

* ``ipw``: armlab's guardrail test (:mod:`armlab.core.stats.noninferiority`);
* ``plain_msprt``: the one-sided mSPRT on plain per-arm means (the baseline that ignores the
  allocation);
* ``no_guardrail``: the same run without any rollback (the regret baseline).

Cells: no harm (skip rate equal in both arms, margin 0, so the null boundary E = 0) at guardrail
base rates 1-20% while the treatment's clicks are better (5% -> 6%: Thompson moves traffic to
it); the relative-margin boundary (skip 10% -> 10.5% with a 5% relative margin, again E = 0);
a guardrail on the click itself (A/A, harm "decrease"), the allocation's own signal; and harm
(skip 10% -> 12% with an absolute 0.005 or a relative 5% margin, and 10% -> 15%) while
clicks improve.

``unit="user"`` (``python -m armlab.tools.bench.guardrails --unit user``): sticky users with
10-40 impressions each and a user-level skip rate with intra-class correlation ICC
(``horizon`` and ``look_every`` count users); cells without harm at ICC 0-0.3 (the
treatment's clicks better, equal, or worse: then Thompson holds it at the floor and it serves
few users, the MovieLens demo's case) and harmful cells, each with three analyses on the same
data: ``per_user`` (the platform's test for ``unit: user``,
:mod:`armlab.core.stats.noninferiority_units`) and the per-impression tests (``ipw``,
``plain_msprt``) that treat correlated impressions as independent.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from typing import Any

import numpy as np

from armlab.core.stats.guardrail_simulation import (
    GuardrailSimConfig,
    merge,
    simulate_guardrail,
    summarise,
)
from armlab.errors import StatsError

BASE_RATES = (0.01, 0.02, 0.05, 0.10, 0.20)


def cells(*, horizon: int, look_every: int, floor: float, alpha: float
          ) -> dict[str, tuple[str, GuardrailSimConfig]]:
    """name -> (kind, config); kind is ``no_harm`` or ``harm``."""
    base = GuardrailSimConfig(horizon=horizon, look_every=look_every, floor=floor, alpha=alpha)
    out: dict[str, tuple[str, GuardrailSimConfig]] = {}
    for p in BASE_RATES:
        out[f"skip_{p:g}"] = ("no_harm", replace(base, skip_a=p, skip_b=p))
    out["relative_boundary_skip_0.1_to_0.105_rel5pct"] = (
        "no_harm", replace(base, skip_a=0.10, skip_b=0.105, margin=0.05, relative=True))
    out["click_as_guardrail_aa_0.05_decrease"] = (
        "no_harm", replace(base, click_b=0.05, metric="click", harm="decrease"))
    out["skip_0.1_to_0.12_abs0.005"] = ("harm", replace(base, skip_b=0.12, margin=0.005))
    out["skip_0.1_to_0.12_rel5pct"] = ("harm", replace(base, skip_b=0.12, margin=0.05,
                                                        relative=True))
    out["skip_0.1_to_0.15_abs0.005"] = ("harm", replace(base, skip_b=0.15, margin=0.005))
    return out


USER_ICCS = (0.0, 0.05, 0.1, 0.3)


def user_cells(*, horizon: int, look_every: int, floor: float, alpha: float
               ) -> dict[str, tuple[str, GuardrailSimConfig]]:
    """The ``unit="user"`` grid: name -> (kind, config); horizon and look_every in users."""
    base = GuardrailSimConfig(unit="user", horizon=horizon, look_every=look_every,
                              floor=floor, alpha=alpha, min_per_user=10, max_per_user=40,
                              min_samples=100)
    out: dict[str, tuple[str, GuardrailSimConfig]] = {}
    for icc in USER_ICCS:
        out[f"user_skip_0.1_icc{icc:g}"] = ("no_harm", replace(base, icc=icc))
    out["user_skip_0.02_icc0.1"] = ("no_harm", replace(base, icc=0.1, skip_a=0.02, skip_b=0.02))
    out["user_skip_0.1_icc0.1_aa_clicks"] = ("no_harm", replace(base, icc=0.1, click_b=0.05))
    out["user_skip_0.1_icc0.3_treatment_at_floor"] = (  # worse clicks: few treatment users
        "no_harm", replace(base, icc=0.3, click_b=0.04))
    out["user_skip_0.1_to_0.13_abs0.01_icc0.1"] = (
        "harm", replace(base, icc=0.1, skip_b=0.13, margin=0.01))
    out["user_skip_0.1_to_0.16_abs0.02_icc0.1"] = (
        "harm", replace(base, icc=0.1, skip_b=0.16, margin=0.02))
    out["user_skip_0.1_to_0.16_abs0.02_icc0.3"] = (
        "harm", replace(base, icc=0.3, skip_b=0.16, margin=0.02))
    return out


def _run(cfg: GuardrailSimConfig) -> dict[str, np.ndarray]:
    return simulate_guardrail(cfg)


def _round(x: Any) -> Any:
    if isinstance(x, float):
        return None if not math.isfinite(x) else round(x, 6)
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    return x


def _tasks(grid: dict[str, tuple[str, GuardrailSimConfig]], *, reps: int, seed: int,
           quick: bool) -> list[tuple[str, GuardrailSimConfig]]:
    """Every cell split into chunks with independent seeds (``numpy.random.SeedSequence``).

    A fixed split into chunks (not one per worker), so the figures depend on the seed only:
    ``--workers`` changes the wall time, never the numbers."""
    chunks = max(1, min(2 if quick else 8, reps // 2))
    sizes = [reps // chunks + (1 if i < reps % chunks else 0) for i in range(chunks)]
    seeds = np.random.SeedSequence(seed).spawn(len(grid) * chunks)
    tasks: list[tuple[str, GuardrailSimConfig]] = []
    for ci, (name, (_, cfg)) in enumerate(grid.items()):
        for j, size in enumerate(sizes):
            child = int(seeds[ci * chunks + j].generate_state(1)[0])
            tasks.append((name, replace(cfg, reps=size, seed=child)))
    return tasks


def _run_tasks(tasks: list[tuple[str, GuardrailSimConfig]], names: list[str], *, workers: int,
               t0: float, progress: Callable[[str], None] | None
               ) -> dict[str, list[dict[str, np.ndarray]]]:
    """Each cell's chunk results, in task order (in process, or on ``workers`` processes)."""
    parts: dict[str, list[dict[str, np.ndarray]]] = {name: [] for name in names}
    if workers == 1:
        for i, (name, cfg) in enumerate(tasks):
            parts[name].append(_run(cfg))
            if progress:
                progress(f"guardrails: {i + 1}/{len(tasks)} chunks ({name})")
        return parts
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = pool.map(_run, [cfg for _, cfg in tasks])
        for i, ((name, _), res) in enumerate(zip(tasks, results, strict=True)):
            parts[name].append(res)
            if progress:
                progress(f"guardrails: {i + 1}/{len(tasks)} chunks ({name}, "
                         f"{time.perf_counter() - t0:.0f} s)")
    return parts


def _describe(cfg: GuardrailSimConfig) -> dict[str, Any]:
    """The cell as the JSON states it: metric, harm, rates, margin, clicks, true excess."""
    unit = ({"unit": "user", "icc": cfg.icc,
             "impressions_per_user": [cfg.min_per_user, cfg.max_per_user]}
            if cfg.unit == "user" else {})
    return {**unit, "metric": cfg.metric, "harm": cfg.harm, "control": cfg.guard_rates[0],
            "treatment": cfg.guard_rates[1],
            "margin": {"kind": "relative" if cfg.relative else "absolute",
                       "value": cfg.margin},
            "clicks": [cfg.click_a, cfg.click_b], "true_excess": cfg.true_excess}


def _no_harm_row(desc: dict[str, Any], summ: dict[str, Any], alpha: float) -> dict[str, Any]:
    """False rollbacks of both tests in a cell without harm."""
    ipw, plain, ng = summ["ipw"], summ["plain"], summ["no_guardrail"]
    rate, se = ipw["breach"]["rate"], ipw["breach"]["se"]
    per_user = {}
    if "user" in summ:
        r, e = summ["user"]["breach"]["rate"], summ["user"]["breach"]["se"]
        per_user = {"per_user": {"false_rollback_rate": r, "se": e,
                                 "within_alpha_plus_2se": r <= alpha + 2 * e}}
    return {
        **desc, "alpha": alpha, "reps": summ["reps"], **per_user,
        "ipw": {"false_rollback_rate": rate, "se": se,
                "within_alpha_plus_2se": rate <= alpha + 2 * se},
        "plain_msprt": {"false_rollback_rate": plain["breach"]["rate"],
                        "se": plain["breach"]["se"]},
        "ratio_plain_over_ipw": (plain["breach"]["rate"] / rate if rate > 0
                                 else None),
        "treatment_share_no_guardrail": ng["treatment_share"],
    }


def _detection_row(desc: dict[str, Any], summ: dict[str, Any], alpha: float
                   ) -> dict[str, Any]:
    """Detection rate and time to rollback of both tests in a harmful cell."""
    ipw, plain = summ["ipw"], summ["plain"]
    to = "users" if desc.get("unit") == "user" else "impressions"
    per_user = {}
    if "user" in summ:
        u = summ["user"]
        per_user = {"per_user": {"detection_rate": u["breach"]["rate"], "se": u["breach"]["se"],
                                 f"median_{to}_to_rollback": u["median_t"],
                                 f"mean_{to}_to_rollback": u["mean_t"]}}
    return {
        **desc, "alpha": alpha, "reps": summ["reps"], **per_user,
        "ipw": {"detection_rate": ipw["breach"]["rate"], "se": ipw["breach"]["se"],
                f"median_{to}_to_rollback": ipw["median_t"],
                f"mean_{to}_to_rollback": ipw["mean_t"]},
        "plain_msprt": {"detection_rate": plain["breach"]["rate"],
                        "se": plain["breach"]["se"],
                        f"median_{to}_to_rollback": plain["median_t"],
                        f"mean_{to}_to_rollback": plain["mean_t"]},
    }


def _regret_row(summ: dict[str, Any]) -> dict[str, Any]:
    """Harm saved and clicks lost by the rollback against the no-guardrail run (the rollback
    of the platform's test: per user where the cell has users)."""
    ipw, ng = summ["user" if "user" in summ else "ipw"], summ["no_guardrail"]
    saved = ng["extra_harm"] - ipw["extra_harm"]
    lost = ng["click_gain"] - ipw["click_gain"]
    return {
        "definition": ("expected events over the horizon at the simulated rates: "
                       "extra_harm = treatment impressions x (harm rate b - a) (harmful "
                       "events beyond serving the control), click_gain = treatment "
                       "impressions x (click b - a); with rollback the treatment serves "
                       "only its impressions before the first breach"),
        "no_guardrail": {"extra_harm": ng["extra_harm"], "click_gain": ng["click_gain"],
                         "treatment_share": ng["treatment_share"]},
        "ipw_rollback": {"extra_harm": ipw["extra_harm"], "click_gain": ipw["click_gain"]},
        "harm_saved": saved,
        "harm_saved_share": saved / ng["extra_harm"] if ng["extra_harm"] > 0 else None,
        "clicks_lost_by_rollback": lost,
        "harm_saved_per_click_lost": saved / lost if lost > 0 else None,
    }


def _summaries(grid: dict[str, tuple[str, GuardrailSimConfig]],
               parts: dict[str, list[dict[str, np.ndarray]]], alpha: float
               ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(false rollbacks without harm, detection, regret): one row per cell of its kind."""
    no_harm: dict[str, Any] = {}
    detection: dict[str, Any] = {}
    regret: dict[str, Any] = {}
    for name, (kind, cfg) in grid.items():
        summ = summarise(cfg, merge(parts[name]))
        assert isinstance(summ["ipw"], dict) and isinstance(summ["plain"], dict)
        assert isinstance(summ["no_guardrail"], dict)
        if kind == "no_harm":
            no_harm[name] = _no_harm_row(_describe(cfg), summ, alpha)
            continue
        detection[name] = _detection_row(_describe(cfg), summ, alpha)
        regret[name] = _regret_row(summ)
    return no_harm, detection, regret


def run_guardrail_bench(
    *,
    reps: int = 4000,
    seed: int = 2026,
    workers: int = 2,
    quick: bool = False,
    horizon: int = 20_000,
    look_every: int = 20,
    floor: float = 0.1,
    alpha: float = 0.05,
    progress: Callable[[str], None] | None = None,
    unit: str = "request",
) -> dict[str, Any]:
    """Run every cell (see the module doc) and return the JSON-ready figures. ``unit="user"``:
    the user grid, ``horizon`` and ``look_every`` in users."""
    if quick:
        reps, horizon, look_every = min(reps, 60), min(horizon, 3000), max(look_every, 50)
    if reps < 2 or workers < 1 or unit not in ("request", "user"):
        raise StatsError("reps must be >= 2, workers >= 1 and unit request or user")
    t0 = time.perf_counter()
    grid = (user_cells if unit == "user" else cells)(
        horizon=horizon, look_every=look_every, floor=floor, alpha=alpha)
    tasks = _tasks(grid, reps=reps, seed=seed, quick=quick)
    parts = _run_tasks(tasks, list(grid), workers=workers, t0=t0, progress=progress)
    no_harm, detection, regret = _summaries(grid, parts, alpha)
    return _round({
        "bench": "guardrails",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "config": {"reps_per_cell": reps, "seed": seed, "workers": workers, "quick": quick,
                   "unit": unit, f"horizon_{_units(unit)}": horizon,
                   f"look_every_{_units(unit)}": look_every,
                   "floor": floor, "alpha": alpha, "allocation": "thompson (click rate)",
                   "cell_defaults": {k: v for k, v in asdict(next(iter(grid.values()))[1]).items()
                                     if k in ("min_samples", "min_events")}},
        "false_rollback_no_harm": no_harm,
        "detection": detection,
        "regret": regret,
        "elapsed_s": time.perf_counter() - t0,
    })


def _units(unit: str) -> str:
    return "users" if unit == "user" else "impressions"


def main(argv: list[str] | None = None) -> None:
    """``python -m armlab.tools.bench.guardrails [--unit user] [--reps N] ...``: the figures
    as JSON on stdout (``armlab bench guardrails`` runs the request grid)."""
    ap = argparse.ArgumentParser(prog="python -m armlab.tools.bench.guardrails")
    ap.add_argument("--unit", choices=("request", "user"), default="request")
    ap.add_argument("--reps", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--horizon", type=int, default=None,
                    help="impressions (request) or users (user); default 20000 / 2000")
    ap.add_argument("--look-every", type=int, default=None,
                    help="impressions (request) or users (user); default 20 / 50")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    user = a.unit == "user"
    result = run_guardrail_bench(
        reps=a.reps, seed=a.seed, workers=a.workers, quick=a.quick, unit=a.unit,
        horizon=a.horizon or (2000 if user else 20_000),
        look_every=a.look_every or (50 if user else 20),
        progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
