"""``armlab simulate validity --contextual``: the contextual cells of the validity grid (A/A
under ``segment_thompson`` / ``linear_thompson`` allocation; :mod:`armlab.core.
contextual_validity`)."""

from __future__ import annotations

import json
from typing import Any

import typer

from armlab.entrypoints.cli.cells import run_cells

ANALYSES = ("average", "segments", "segments_unadjusted", "srm_segments", "personalisation")


def run_contextual_validity(policies: tuple[str, ...], segments: tuple[str, ...],
                            floors: tuple[float, ...], *, reps: int, horizon: int,
                            look_every: int, lift: float, workers: int, seed: int,
                            as_json: bool) -> None:
    """Run the cells (in processes when ``workers`` > 1) and print the table or JSON."""
    from armlab.core.contextual_validity import contextual_grid, run_contextual_cell

    cells = contextual_grid(policies, segments, floors,  # type: ignore[arg-type]
                            reps=reps, horizon=horizon, look_every=look_every, lift=lift,
                            seed=seed)
    results, seconds = run_cells(run_contextual_cell, cells, workers)
    ok = all(a["fpr_ok"] for r in results if r["null"] for k, a in r["analyses"].items()
             if k != "segments_unadjusted")
    out: dict[str, Any] = {"cells": results, "seconds": seconds, "workers": workers,
                           "n_cells": len(cells), "all_within_2se": ok}
    if as_json:
        typer.echo(json.dumps(out))
        return
    typer.echo(f"{'cell':<44} " + " ".join(f"{a:>20}" for a in ANALYSES))
    for r in results:
        c = r["cell"]
        name = f"{c['policy']} segments={c['segments']} f={c['floor']} lift={c['lift']}"
        cols = []
        for a in ANALYSES:
            x = r["analyses"][a]
            mark = "" if x["fpr_ok"] or a == "segments_unadjusted" or not r["null"] else " !"
            cols.append(f"{x['fpr']:.3f}±{x['fpr_se']:.3f}{mark}".rjust(20))
        typer.echo(f"{name:<44} " + " ".join(cols))
    typer.echo(f"{len(cells)} cells in {seconds} s on {workers} worker(s); every A/A cell "
               f"within its level + 2 MC s.e. (segments_unadjusted aside): "
               f"{'yes' if ok else 'NO'} (crossed or lift != 1: power)")


USER_ANALYSES = ("average_per_user", "average_per_impression", "segments_per_user",
                 "segments_per_impression", "srm_segments_per_user",
                 "srm_segments_per_impression", "personalisation_per_user",
                 "personalisation_per_impression")


def run_contextual_user_validity(policies: tuple[str, ...], segments: tuple[str, ...],
                                 floors: tuple[float, ...], *, reps: int, users: int,
                                 look_every: int, impressions: int, icc: float, workers: int,
                                 seed: int, as_json: bool) -> None:
    """The unit-user cells (:mod:`armlab.core.contextual_validity_users`): the table or JSON.
    ``all_within_2se`` judges the per-user analyses (the per-impression ones are the
    contrast)."""
    from armlab.core.contextual_validity_users import (
        ContextualUserCell,
        run_contextual_user_cell,
    )

    cells = [ContextualUserCell(policy=p, segments=sg, floor=f,  # type: ignore[arg-type]
                                reps=reps, users=users, look_every=look_every,
                                impressions=impressions, icc=icc,
                                seed=seed * 1_000_003 + i * 7919)
             for i, (p, sg, f) in enumerate((p, sg, f) for p in policies for sg in segments
                                            for f in floors)]
    results, seconds = run_cells(run_contextual_user_cell, cells, workers)
    ok = all(a["fpr_ok"] for r in results for k, a in r["analyses"].items()
             if k.endswith("_per_user"))
    out: dict[str, Any] = {"cells": results, "seconds": seconds, "workers": workers,
                           "n_cells": len(cells), "all_within_2se": ok}
    if as_json:
        typer.echo(json.dumps(out))
        return
    width = [max(len(a), 14) for a in USER_ANALYSES]
    typer.echo(f"{'cell':<44} " + " ".join(a.rjust(n) for a, n in zip(USER_ANALYSES, width,
                                                                          strict=True)))
    for r in results:
        c = r["cell"]
        name = f"{c['policy']} segments={c['segments']} f={c['floor']}"
        cols = [(f"{r['analyses'][a]['fpr']:.3f}±{r['analyses'][a]['fpr_se']:.3f}"
                 + ("" if r["analyses"][a]["fpr_ok"] else " !")).rjust(n)
                for a, n in zip(USER_ANALYSES, width, strict=True)]
        typer.echo(f"{name:<44} " + " ".join(cols))
    typer.echo(f"{len(cells)} unit-user cells in {seconds} s; every per-user analysis within "
               f"alpha + 2 MC s.e.: {'yes' if ok else 'NO'} (per impression: the contrast)")
