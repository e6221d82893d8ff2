"""``armlab simulate bandit|sequential``: Monte Carlo regret of a policy, and false-positive
rate / power of a sequential test under continuous monitoring.
"""

from __future__ import annotations

import json
import time
from typing import Any

import typer

from armlab.errors import PolicyError


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


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    del app

    @groups["simulate"].command("bandit")
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
        from armlab.core.policies.simulate import default_sim_params, parse_means, simulate_bandit

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

    @groups["simulate"].command("sequential")
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

        from armlab.core.stats.sim import SequentialSimConfig, simulate_sequential

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
