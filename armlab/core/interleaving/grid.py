"""The grids of ``armlab simulate interleaving``: the full A/A and power grid
(:func:`default_grid`), the reduced grid of the unit test (:func:`quick_grid`) and the
pass/fail summary. Each cell runs with :func:`armlab.core.interleaving.simulate.run_cell`."""

from __future__ import annotations

from typing import Any

from armlab.core.interleaving.simulate import CellConfig, Clicks, Scenario, Unit


def _cell(scenario: Scenario, rankers: int, clicks: Clicks, unit: Unit, *, reps: int,
          seed: int, select: int | None = None, quick: bool = False,
          sigma_good: float = 0.1) -> CellConfig:
    if unit == "user":
        units, look, gate = (60, 5, 20) if quick else (100, 5, 20)
    else:
        units, look, gate = (1500, 100, 100) if quick else (3000, 100, 100)
    return CellConfig(scenario=scenario, rankers=rankers, select=select, clicks=clicks,
                      unit=unit, reps=reps, units=units, look_every=look, min_units=gate,
                      sigma_good=sigma_good, seed=seed)


def default_grid(reps: int = 1000, seed: int = 0, *, power_reps: int | None = None
                 ) -> list[CellConfig]:
    """The full A/A grid and the power cells of ``armlab simulate interleaving``."""
    pr = power_reps or reps
    cells: list[CellConfig] = []
    units: tuple[Unit, ...] = ("request", "user")
    click_models: tuple[Clicks, ...] = ("random", "cascade")
    for u in units:
        for ck in click_models:
            cells.append(_cell("self", 2, ck, u, reps=reps, seed=seed))
        cells.append(_cell("identical", 2, "cascade", u, reps=reps, seed=seed))
        cells.append(_cell("random_clicks", 2, "random", u, reps=reps, seed=seed))
        cells.append(_cell("self", 3, "cascade", u, reps=reps, seed=seed))
        cells.append(_cell("random_clicks", 3, "random", u, reps=reps, seed=seed))
        cells.append(_cell("self", 4, "cascade", u, reps=reps, seed=seed, select=2))
        cells.append(_cell("random_clicks", 4, "random", u, reps=reps, seed=seed, select=2))
    cells.append(_cell("split", 2, "cascade", "user", reps=reps, seed=seed))
    cells.append(_cell("better", 2, "cascade", "user", reps=pr, seed=seed, sigma_good=0.3))
    cells.append(_cell("better", 3, "cascade", "request", reps=pr, seed=seed, sigma_good=0.2))
    cells.append(_cell("better", 4, "cascade", "request", reps=pr, seed=seed, select=2))
    cells.append(_cell("better", 4, "cascade", "request", reps=pr, seed=seed))
    return cells


def quick_grid(reps: int = 200, seed: int = 0) -> list[CellConfig]:
    """The reduced grid of the unit test: few cells, short horizons (seconds)."""
    return [
        _cell("self", 2, "cascade", "request", reps=reps, seed=seed, quick=True),
        _cell("identical", 2, "cascade", "user", reps=reps, seed=seed, quick=True),
        _cell("random_clicks", 3, "random", "request", reps=reps, seed=seed, quick=True),
        _cell("self", 4, "cascade", "request", reps=reps, seed=seed, select=2, quick=True),
        _cell("split", 2, "cascade", "user", reps=reps, seed=seed, quick=True),
    ]


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Cells passing / failing (primary analyses only)."""
    failing = [r["cell"]["label"] for r in results if not r["analysis"]["pass"]]
    return {"cells": len(results), "pass": len(results) - len(failing), "failing": failing}
