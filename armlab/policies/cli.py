"""Commands of the allocation area: ``allocate``, ``simulate bandit``, ``bench policy|assign``.

Heavy imports (SQLAlchemy services, MABWiser, uvicorn) happen inside the command functions.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import typer


def _parse_params(text: str | None) -> dict[str, Any]:
    from armlab.errors import PolicyError

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
    @app.command("allocate")
    def allocate(
        once: bool = typer.Option(False, "--once", help="Run one allocation pass and exit."),
        interval: float = typer.Option(
            None, "--interval", help="Seconds between passes (default ARMLAB_ALLOCATOR_INTERVAL_S)."
        ),
    ) -> None:
        """Recompute allocation weights for every experiment on a cadence and store snapshots."""
        from armlab.platform.allocator import allocation_loop
        from armlab.platform.bootstrap import bootstrap
        from armlab.settings import get_settings

        settings = get_settings()
        logging.basicConfig(
            level=settings.log_level.upper(), format="%(asctime)s %(name)s %(message)s"
        )
        if interval is not None and interval <= 0:
            raise typer.BadParameter("--interval must be > 0")
        services = bootstrap(settings)
        try:
            allocation_loop(
                services, once=once, interval_s=interval or settings.allocator_interval_s
            )
        finally:
            services.close()

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
        from armlab.policies.simulate import default_sim_params, parse_means, simulate_bandit

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

    @groups["bench"].command("policy")
    def bench_policy(
        as_json: bool = typer.Option(True, "--json/--no-json"),
        seeds: int = typer.Option(50, "--seeds", min=2),
        horizon: int = typer.Option(50_000, "--horizon", min=100),
        mab_seeds: int = typer.Option(
            4,
            "--mab-seeds",
            min=0,
            help="Seeds for the (slow, ~0.4 ms/round) MABWiser baselines; use 50 for the full run.",
        ),
        mab_configs: str = typer.Option(
            "k3_hard,k3_easy",
            "--mab-configs",
            help="Comma-separated configs MABWiser runs on, or 'all'.",
        ),
        quick: bool = typer.Option(False, "--quick", help="Tiny run for tests."),
    ) -> None:
        """Regret vs MABWiser/uniform on Bernoulli bandits, and decision speed."""
        from armlab.policies.bench import run_policy_bench

        result = run_policy_bench(
            seeds=seeds,
            horizon=horizon,
            mab_seeds=mab_seeds,
            mab_configs=mab_configs,
            quick=quick,
        )
        typer.echo(json.dumps(result, indent=None if as_json else 2))

    @groups["bench"].command("assign")
    def bench_assign(
        as_json: bool = typer.Option(True, "--json/--no-json"),
        requests: int = typer.Option(20_000, "--requests", min=10),
        concurrency: int = typer.Option(8, "--concurrency", min=1),
        duration: float = typer.Option(30.0, "--max-seconds", min=1.0),
        unit: str = typer.Option("request", "--unit", help="request | user"),
    ) -> None:
        """Load-test POST /v1/experiments/{key}/assign from a separate process on loopback."""
        from armlab.policies.bench_assign import run_assign_bench

        result = run_assign_bench(
            requests=requests, concurrency=concurrency, max_seconds=duration, unit=unit
        )
        typer.echo(json.dumps(result, indent=None if as_json else 2))
