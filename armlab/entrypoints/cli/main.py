"""The ``armlab`` command. Each command group lives in its own module of this package.

The command modules are imported when the CLI starts; what a command needs (the services,
FastAPI, Kafka clients, torch) is imported inside the command function, so ``armlab --help``
and every command's start-up pay only for what they use.
"""

from __future__ import annotations

import sys

import typer

from armlab.entrypoints.cli import (
    admin,
    allocate,
    bench,
    demo,
    dev,
    ingest,
    scoring,
    simulate,
    stats,
)
from armlab.errors import ArmlabError, redact

app = typer.Typer(
    name="armlab",
    help="armlab: bandit-based continuous experimentation for language-model recommenders.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Command groups that several modules add to.
bench_app = typer.Typer(help="Benchmarks: each prints JSON with its figure and baseline.",
                        no_args_is_help=True)
simulate_app = typer.Typer(help="Monte Carlo simulations (bandit regret, sequential tests).",
                           no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(simulate_app, name="simulate")

GROUPS = {"bench": bench_app, "simulate": simulate_app}

# Each module defines ``register(app, groups)``; this order is the order in --help.
COMMAND_MODULES = (dev, admin, ingest, allocate, stats, simulate, scoring, demo, bench)


def _register_all() -> None:
    if getattr(app, "_armlab_registered", False):
        return
    for module in COMMAND_MODULES:
        module.register(app, GROUPS)
    app._armlab_registered = True  # type: ignore[attr-defined]


def main() -> None:
    _register_all()
    try:
        app()
    except ArmlabError as exc:
        typer.echo(f"error: {redact(exc.message)}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        line = database_error_line(exc)
        if line is None:
            raise
        typer.echo(f"error: {redact(line)}", err=True)
        sys.exit(1)


def database_error_line(exc: BaseException) -> str | None:
    """One readable line for a database error that reached the top of a command (an
    unreachable server, an unmigrated database, a URL SQLAlchemy cannot use); None for any
    other error. Passwords are redacted by the caller."""
    from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

    if isinstance(exc, NoSuchModuleError | ArgumentError):
        return f"ARMLAB_DATABASE_URL cannot be used: {exc}"
    if not isinstance(exc, DBAPIError):
        return None
    orig = exc.orig
    first = " ".join((str(orig).splitlines() or [""])[0].split())
    if getattr(orig, "sqlstate", None) == "42P01":  # undefined_table
        return (f"the database has no armlab tables ({first}); run `armlab db upgrade` "
                "(ARMLAB_DATABASE_URL)")
    return f"database error ({type(orig).__name__}): {first}"
