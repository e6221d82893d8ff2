"""The ``armlab`` command. Each area registers its commands from its own module.

Modules are imported when the CLI starts; heavy imports (torch, FastAPI app, Kafka clients)
happen inside the command functions, so ``armlab --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys

import typer

from armlab.errors import ArmlabError

app = typer.Typer(
    name="armlab",
    help="armlab: bandit-based continuous experimentation for language-model recommenders.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Shared command groups that several areas add to.
bench_app = typer.Typer(help="Benchmarks: each prints JSON with its figure and baseline.",
                        no_args_is_help=True)
simulate_app = typer.Typer(help="Monte Carlo simulations (bandit regret, sequential tests).",
                           no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(simulate_app, name="simulate")

GROUPS = {"bench": bench_app, "simulate": simulate_app}

# Each module defines ``register(app, groups)``. Order fixes the order in --help.
COMMAND_MODULES = (
    "armlab.platform.cli_dev",      # dev up/down/status, db upgrade/downgrade
    "armlab.platform.cli_admin",    # experiments, start/stop/ship, serve
    "armlab.consumers.cli",         # consume, bench ingest
    "armlab.policies.cli",          # allocate, simulate bandit, bench policy/assign
    "armlab.stats.cli",             # stats msprt, simulate sequential
    "armlab.scoring.cli",           # score, catalog, scorer, bench scoring
    "armlab.sim.cli",               # demo, report, replay, ope
)


def _register_all() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # area not built yet
                continue
            raise
        module.register(app, GROUPS)


def fail(message: str, code: int = 1) -> None:
    """Print one readable error line and exit non-zero."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def main() -> None:
    _register_all()
    try:
        app()
    except ArmlabError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
