"""``armlab simulate bandit|sequential|validity|interleaving``: Monte Carlo regret of a policy,
false-positive rate / power of a sequential test under continuous monitoring, the validity grid
of the platform's test (low base rates, user units, delayed feedback, frequent looks), and the
A/A grid of interleaved comparisons (team draft, multileaving, the dueling bandit).
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer

from armlab.entrypoints.cli.cells import run_cells
from armlab.errors import PolicyError, StatsError


def _floats(name: str, text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise StatsError(f"{name} must be comma-separated numbers, got {text!r}") from exc
    if not values:
        raise StatsError(f"{name} must name at least one value")
    return values


def _choices(name: str, text: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    values = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise StatsError(f"{name} must be a comma-separated subset of {','.join(allowed)}, "
                         f"got {text!r}")
    return values


def _parse_params(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PolicyError(f"--params must be a JSON object, got {text!r}: {exc.msg}") from exc
    if not isinstance(value, dict):
        raise PolicyError(f"--params must be a JSON object, got {text!r}")
    return value


def simulate_bandit_cmd(
    policy: str = typer.Option(
        "thompson", "--policy", help="thompson | top_two_thompson | epsilon_greedy | uniform"
    ),
    means: str = typer.Option(
        "0.05,0.04,0.04", "--means", help="Bernoulli means, comma-separated."
    ),
    horizon: int = typer.Option(10_000, "--horizon", min=1),
    seeds: int = typer.Option(20, "--seeds", min=2),
    batch_every: int = typer.Option(
        1, "--batch-every", min=1, help="Recompute weights every B rounds (1 = fully online)."
    ),
    floor: float = typer.Option(0.0, "--floor", help="Exploration floor per arm."),
    burn_in: int = typer.Option(0, "--burn-in", min=0),
    params: str = typer.Option(
        None, "--params", help="Policy parameters as JSON, e.g. '{\"epsilon\": 0.05}'."
    ),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Mean cumulative pseudo-regret of a policy on a Bernoulli bandit, across seeds."""
    from armlab.core.policies.regret_simulation import (
        default_sim_params,
        parse_means,
        simulate_bandit,
    )

    p = _parse_params(params)
    if not p:
        p = default_sim_params(policy, batch_every)
    result = simulate_bandit(
        parse_means(means),
        policy=policy,
        horizon=horizon,
        seeds=seeds,
        batch_every=batch_every,
        floor=floor,
        burn_in=burn_in,
        params=p,
        seed=seed,
    )
    if as_json:
        typer.echo(json.dumps(result))
    else:
        typer.echo(
            f"{policy}: regret {result['regret_mean']:.1f} ± {result['regret_se']:.1f} "
            f"(best-arm fraction {result['best_arm_fraction']:.3f}, "
            f"{result['elapsed_s']:.1f}s)"
        )


def simulate_sequential_cmd(
    allocation: str = typer.Option("fixed", help="fixed | thompson"),
    method: str = typer.Option("armlab", help="naive-z | msprt | armlab"),
    p_control: float = typer.Option(0.05, "--p-control"),
    p_treatment: float = typer.Option(0.05, "--p-treatment"),
    max_n: int = typer.Option(10_000, "--max-n", help="Cap, observations per arm."),
    peek_every: int = typer.Option(100, "--peek-every", help="Look every N per arm."),
    reps: int = typer.Option(2_000, help="Monte Carlo replications."),
    seed: int = typer.Option(0),
    alpha: float = typer.Option(0.05),
    tau2: float | None = typer.Option(None, help="Default: Howard et al. rule at max-n."),
    floor: float = typer.Option(0.1, help="Thompson exploration floor per arm."),
    min_samples: int = typer.Option(100, "--min-samples"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """False-positive rate / power of a sequential test under continuous monitoring."""

    from armlab.core.stats.sequential_simulation import SequentialSimConfig, simulate_sequential

    cfg = SequentialSimConfig(
        allocation=allocation, method=method,  # type: ignore[arg-type]
        p_control=p_control, p_treatment=p_treatment, max_n=max_n,
        peek_every=peek_every, reps=reps, seed=seed, alpha=alpha, tau2=tau2,
        floor=floor, min_samples=min_samples,
    )
    t0 = time.perf_counter()
    res: dict[str, Any] = dict(simulate_sequential(cfg))
    res["seconds"] = round(time.perf_counter() - t0, 3)
    if as_json:
        typer.echo(json.dumps(res))
    else:
        for k, v in res.items():
            typer.echo(f"{k}: {v}")


def _validity_table(results: list[dict[str, Any]]) -> None:
    """One line per cell and analysis: A/A with its MC SE, SRM false alarms, coverage, power
    (two-sided, one-sided), n at decision, the fixed split's A/A of the same run and the mean
    1/p(a) + 1/p(b) the allocation left (4 on a 50/50 split)."""
    typer.echo(f"{'cell':<52} {'analysis':<21} {'A/A fpr':>13} {'srm':>6} {'cover':>6} "
               f"{'power':>6} {'power>':>6} {'n':>7} {'fixed A/A':>9} {'sum 1/p':>7}")
    for r in results:
        c = r["cell"]
        name = (f"p={c['base_rate']} f={c['floor']} look={c['look_every']} "
                f"{c['unit']} delay={'yes' if c['delay'] else 'no'}")
        for k, a in r["analyses"].items():
            srm = a.get("srm_false_alarm")
            typer.echo(f"{name:<52} {k:<21} {a['fpr']:>6.3f}±{a['fpr_se']:.3f} "
                       f"{'' if srm is None else f'{srm:.3f}':>6} {a['coverage']:>6.3f} "
                       f"{a['power']:>6.3f} {a['power_greater']:>6.3f} "
                       f"{a['mean_n_at_decision']:>7.0f} {a['fpr_fixed']:>9.3f} "
                       f"{a.get('inverse_sum', 4.0):>7.2f}")


# The contextual cells' options of ``armlab simulate validity --contextual``.
_Contextual = Annotated[bool, typer.Option(
    "--contextual", help="The contextual cells instead: A/A under segment_thompson "
    "/ linear_thompson allocation (average effect, per-segment tests, SRM per segment, "
    "personalisation value); uses --floors, --reps, --seed, --workers.")]
_Policies = Annotated[str, typer.Option(
    "--policies", help="--contextual: the allocating policies.")]
_Segments = Annotated[str, typer.Option(
    "--segments", help="--contextual: segment click rates differ | same (A/A) | crossed "
    "(each segment its own best arm: power).")]
_ContextualHorizon = Annotated[int, typer.Option(
    "--contextual-horizon", min=100, help="--contextual: impressions per run.")]
_ContextualLook = Annotated[int, typer.Option(
    "--contextual-look", min=1, help="--contextual: look (and reallocate) every N.")]
_ContextualLift = Annotated[float, typer.Option(
    "--contextual-lift", help="--contextual: arm 1's rate x this in every segment "
    "(1.0 = A/A; else the rates are power).")]
_ContextualUsers = Annotated[int, typer.Option(
    "--contextual-users", min=0,
    help="--contextual: the unit-user cells instead, with this many sticky users per run "
    "(users per look: --contextual-look / --contextual-impressions), analysed per user "
    "and, for contrast, per impression; 0 = the request cells.")]
_ContextualImpressions = Annotated[int, typer.Option(
    "--contextual-impressions", min=1, help="--contextual-users: impressions per user.")]
_ContextualIcc = Annotated[float, typer.Option(
    "--contextual-icc", min=0.0, max=0.99,
    help="--contextual-users: intra-user correlation of the clicks.")]


def simulate_validity_cmd(
    base_rates: str = typer.Option("0.005,0.01,0.02,0.05,0.10", "--base-rates"),
    floors: str = typer.Option("0.05,0.1,0.2", "--floors"),
    looks: str = typer.Option("10,100", "--looks", help="Look every N impressions."),
    units: str = typer.Option("request,user", "--units"),
    delays: str = typer.Option("no,yes", "--delays", help="Feedback delayed: no,yes."),
    reps: int = typer.Option(1000, "--reps", min=1, help="A/A replications per cell."),
    reps_alt: int = typer.Option(
        0, "--reps-alt", min=0, help="A/B replications per cell (0 = same as --reps)."),
    max_n: int = typer.Option(10_000, "--max-n", min=100, help="Horizon per arm."),
    lift: float = typer.Option(1.2, "--lift", help="Treatment rate = lift x base rate."),
    min_events: int = typer.Option(30, "--min-events", min=0),
    horizon_share: float = typer.Option(
        0.8, "--horizon-share", min=0.01, max=0.99,
        help="Share of alpha on the flat part of armlab_horizon (the platform's is 0.8)."),
    plan_at: str = typer.Option(
        "events", "--plan-at", help="When armlab freezes tau² and the horizon plan: events "
        "(the look gate, the platform's rule) | samples (min_samples alone, the old rule)."),
    pre_impressions: int = typer.Option(
        0, "--pre-impressions", min=0, help="Unit user: a pre-period of this many impressions "
        "per user gives the covariate X of the CUPED analyses (armlab_cuped, "
        "armlab_cuped_horizon); 0 = none."),
    workers: int = typer.Option(2, "--workers", min=1, help="Processes (cores)."),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json"),
    contextual: _Contextual = False,
    policies: _Policies = "segment_thompson,linear_thompson",
    segments: _Segments = "differ,same",
    contextual_horizon: _ContextualHorizon = 20_000,
    contextual_look: _ContextualLook = 500,
    contextual_lift: _ContextualLift = 1.0,
    contextual_users: _ContextualUsers = 0,
    contextual_impressions: _ContextualImpressions = 10,
    contextual_icc: _ContextualIcc = 0.2,
) -> None:
    """A/A false-positive rate (with Monte Carlo SE), SRM false alarms, confidence-sequence
    coverage, power and sample size at decision over a grid of cells, for armlab's test
    (``armlab``; ``armlab_horizon`` with ``sequential.boundary: horizon``) and same-run
    baselines (plain mSPRT under Thompson and under a fixed 50/50 split). With
    ``--contextual``: the contextual A/A cells (docs/contextual.md, "Inference")."""
    if contextual:
        _contextual_validity(policies, segments, floors, reps=reps, workers=workers, seed=seed,
                             as_json=as_json, horizon=contextual_horizon, look=contextual_look,
                             lift=contextual_lift, users=contextual_users,
                             impressions=contextual_impressions, icc=contextual_icc)
        return
    from armlab.core.stats.validity_grid import grid

    cells = grid(
        _floats("--base-rates", base_rates), _floats("--floors", floors),
        tuple(int(x) for x in _floats("--looks", looks)),
        _choices("--units", units, ("request", "user")),  # type: ignore[arg-type]
        tuple(d == "yes" for d in _choices("--delays", delays, ("no", "yes"))),
        reps=reps, reps_alt=reps_alt or None, max_n=max_n, lift=lift,
        min_events=min_events, seed=seed, horizon_share=horizon_share,
        plan_at=_choices("--plan-at", plan_at, ("events", "samples"))[0],
        pre_impressions=pre_impressions,
    )
    _run_validity_cells(cells, workers=workers, as_json=as_json)


def _contextual_validity(policies: str, segments: str, floors: str, *, reps: int, workers: int,
                         seed: int, as_json: bool, horizon: int, look: int, lift: float,
                         users: int, impressions: int, icc: float) -> None:
    """``--contextual``: the request cells, or with ``--contextual-users`` the unit-user
    cells (docs/contextual.md, "Inference")."""
    from armlab.entrypoints.cli.simulate_contextual import (
        run_contextual_user_validity,
        run_contextual_validity,
    )

    chosen = _choices("--policies", policies, ("segment_thompson", "linear_thompson"))
    if users:
        run_contextual_user_validity(
            chosen, _choices("--segments", segments, ("differ", "same")),
            _floats("--floors", floors), reps=reps, users=users,
            look_every=max(look // impressions, 1), impressions=impressions, icc=icc,
            workers=workers, seed=seed, as_json=as_json)
        return
    run_contextual_validity(
        chosen, _choices("--segments", segments, ("differ", "same", "crossed")),
        _floats("--floors", floors), reps=reps, horizon=horizon, look_every=look, lift=lift,
        workers=workers, seed=seed, as_json=as_json)


def _run_validity_cells(cells: list[Any], *, workers: int, as_json: bool) -> None:
    """Run the grid's cells (on ``workers`` processes) and print the table or the JSON."""
    from armlab.core.stats.validity_grid import run_cell, summarise

    results, seconds = run_cells(run_cell, cells, workers)
    out = {"cells": results, "summary": summarise(results), "seconds": seconds,
           "workers": workers, "n_cells": len(cells)}
    if as_json:
        typer.echo(json.dumps(out))
        return
    _validity_table(results)
    typer.echo(f"{len(cells)} cells in {seconds} s on {workers} worker(s)")


def simulate_interleaving_cmd(
    reps: int = typer.Option(1000, "--reps", min=1, help="A/A replications per cell."),
    power_reps: int = typer.Option(
        0, "--power-reps", min=0, help="Replications of the power cells (0 = --reps)."),
    cells: str = typer.Option(
        "", "--cells", help="Only the cells whose label contains one of these "
                            "comma-separated strings (e.g. 'user,2 of 4')."),
    quick: bool = typer.Option(False, "--quick", help="The reduced grid of the unit test."),
    workers: int = typer.Option(2, "--workers", min=1, help="Processes (cores)."),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """A/A false-positive rate (with its Monte Carlo SE; PASS iff <= alpha + 2 SE) of the
    interleaving test under continuous monitoring: a ranker against itself, rankers with
    identical (short) output, random and cascade clicks, request and user units (40
    correlated requests per user), 2 and 3 rankers multileaved and the dueling bandit
    choosing 2 of 4; plus power cells (a truly better ranker: share decided, median
    units to the decision). Progress on stderr."""
    from armlab.core.interleaving.grid import default_grid, quick_grid, summarise

    grid = quick_grid(reps, seed) if quick else default_grid(
        reps, seed, power_reps=power_reps or None)
    wanted = [w.strip() for w in cells.split(",") if w.strip()]
    if wanted:
        grid = [c for c in grid if any(w in c.label for w in wanted)]
    if not grid:
        raise StatsError(f"no cell matches --cells {cells!r}")

    t0 = time.perf_counter()
    results = _run_interleaving_cells(grid, workers)
    seconds = round(time.perf_counter() - t0, 1)
    summary = summarise(results)
    out = {"cells": results, "summary": summary, "seconds": seconds,
           "workers": workers, "n_cells": len(grid)}
    if as_json:
        typer.echo(json.dumps(out))
        return
    _print_interleaving_table(results)
    typer.echo(f"{summary['pass']}/{summary['cells']} cells pass; {len(grid)} cells in "
               f"{seconds} s on {workers} worker(s)")


def _cell_line(i: int, total: int, label: str, result: dict[str, Any]) -> str:
    a = result["analysis"]
    return (f"[{i}/{total}] {label}: fpr {a['fpr']:.3f} ± {a['fpr_se']:.3f} "
            f"{'PASS' if a['pass'] else 'FAIL'} ({result['seconds']} s)")


def _run_interleaving_cells(grid: list[Any], workers: int) -> list[dict[str, Any]]:
    """Each cell of the grid, in processes when there are several; progress on stderr."""
    import sys
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from armlab.core.interleaving.simulate import run_cell

    results: list[dict[str, Any]] = [{} for _ in grid]
    if workers > 1 and len(grid) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(run_cell, c): i for i, c in enumerate(grid)}
            for done, fut in enumerate(as_completed(futures), 1):
                i = futures[fut]
                results[i] = fut.result()
                print(_cell_line(done, len(grid), grid[i].label, results[i]),
                      file=sys.stderr, flush=True)
    else:
        for i, c in enumerate(grid):
            results[i] = run_cell(c)
            print(_cell_line(i + 1, len(grid), c.label, results[i]), file=sys.stderr,
                  flush=True)
    return results


def _print_interleaving_table(results: list[dict[str, Any]]) -> None:
    typer.echo(f"{'cell':<36} {'reps':>5} {'A/A fpr':>13} {'limit':>6} {'':>4} "
               f"{'power':>6} {'median units':>12} {'per-request baseline fpr':>25}")
    for r in results:
        a, c = r["analysis"], r["cell"]
        base = r.get("per_request_baseline")
        med = a.get("median_units_to_decision")
        power = "" if "power" not in a else f"{a['power']:.3f}"
        median = "" if med is None else f"{med:.0f}"
        baseline = "" if base is None else f"{base['fpr']:.3f}"
        verdict = "PASS" if a["pass"] else "FAIL"
        typer.echo(f"{c['label']:<36} {c['reps']:>5} {a['fpr']:>6.3f}±{a['fpr_se']:.3f} "
                   f"{a['limit']:>6.3f} {verdict:>4} {power:>6} {median:>12} "
                   f"{baseline:>25}")


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    del app
    groups["simulate"].command("bandit")(simulate_bandit_cmd)
    groups["simulate"].command("sequential")(simulate_sequential_cmd)
    groups["simulate"].command("validity")(simulate_validity_cmd)
    groups["simulate"].command("interleaving")(simulate_interleaving_cmd)
