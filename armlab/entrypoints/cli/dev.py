"""``armlab dev up|down|status|env`` (the local stack) and ``armlab db
upgrade|downgrade|current|maintain``.

``armlab dev up`` prints only ``export ...`` lines on stdout (progress goes to stderr), so
``eval "$(armlab dev up)"`` configures the current shell.
"""

from __future__ import annotations

import json
import shutil

import typer


def _progress(message: str) -> None:
    typer.echo(f"[armlab dev] {message}", err=True)


def _stack():
    from armlab.settings import get_settings
    from armlab.tools.devstack import DevStack

    return DevStack(get_settings().home)


def _exports(env: dict[str, str]) -> str:
    return "".join(f"export {k}={v}\n" for k, v in env.items())


def dev_up(
    migrate: bool = typer.Option(True, help="Run `alembic upgrade head` on the database."),
) -> None:
    """Start PostgreSQL and Kafka (idempotent) and print `export` lines for `eval`."""
    env = _stack().up(progress=_progress, migrate=migrate)
    typer.echo(_exports(env), nl=False)


def dev_down(
    purge: bool = typer.Option(False, help="Also delete the data directories."),
) -> None:
    """Stop both services (their data is kept unless --purge)."""
    stack = _stack()
    stack.down(progress=_progress)
    if purge and stack.root.exists():
        shutil.rmtree(stack.root)
        _progress(f"removed {stack.root}")


def dev_status(as_json: bool = typer.Option(False, "--json", help="Machine-readable.")
               ) -> None:
    """Show both services with their ports, pids and data directories."""
    rows = _stack().status()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        state = "running" if r["running"] else "stopped"
        where = r.get("bootstrap") or f"127.0.0.1:{r['port']}"
        typer.echo(f"{r['service']:<11} {state:<8} {where:<22} pid={r['pid'] or '-':<8} "
                   f"data={r['data_dir']}")


def dev_env() -> None:
    """Print the `export` lines for the stack (without starting anything)."""
    typer.echo(_exports(_stack().env()), nl=False)


def _db_url() -> str:
    from armlab.settings import get_settings

    return get_settings().database_url


def _run(fn, *args: str) -> None:
    from sqlalchemy.exc import OperationalError

    from armlab.errors import ServiceUnavailable

    try:
        fn(*args)
    except OperationalError as exc:
        raise ServiceUnavailable(
            f"cannot reach the database {_redact(_db_url())}: "
            + " ".join(str(exc.orig).split())) from exc


def db_upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Migrate the database up to REVISION (default head)."""
    from armlab.bootstrap import database

    url = _db_url()
    out: list[str | None] = []
    _run(lambda u: out.append(database.upgrade(u, revision)), url)
    typer.echo(f"upgraded {_redact(url)} to {out[0]}")


def db_downgrade(revision: str = typer.Argument(..., help="Target revision, e.g. base.")
                 ) -> None:
    """Migrate the database down to REVISION (`base` drops every table)."""
    from armlab.bootstrap import database

    url = _db_url()
    out: list[str | None] = []
    _run(lambda u: out.append(database.downgrade(u, revision)), url)
    typer.echo(f"downgraded {_redact(url)} to {out[0] or 'base'}")


def db_maintain(
    dry_run: bool = typer.Option(False, "--dry-run",
                                 help="Print what would change; change nothing."),
    retention_days: float | None = typer.Option(
        None, min=0, help="Override ARMLAB_RETENTION_DAYS (0: keep forever)."),
) -> None:
    """Create the coming weeks' partitions of impressions and feedback and drop the weeks
    older than the retention (PostgreSQL; the consumer also does this every hour)."""
    from armlab.bootstrap import database
    from armlab.settings import get_settings

    url = _db_url()
    days = get_settings().retention_days if retention_days is None else retention_days
    out: list[database.MaintenanceReport] = []
    _run(lambda u: out.append(database.maintain(u, retention_days=days, dry_run=dry_run)),
         url)
    prefix = "would have: " if dry_run else ""
    for line in out[0].lines():
        typer.echo(prefix + line)


def db_current() -> None:
    """Print the database's current revision (`base` when unmigrated)."""
    from armlab.bootstrap import database

    url = _db_url()
    out: list[str | None] = []
    _run(lambda u: out.append(database.current(u)), url)
    typer.echo(out[0] or "base")


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    dev = typer.Typer(help="Local stack: a real PostgreSQL and Kafka on 127.0.0.1.",
                      no_args_is_help=True)
    db = typer.Typer(help="Database schema migrations (Alembic) on ARMLAB_DATABASE_URL.",
                     no_args_is_help=True)
    app.add_typer(dev, name="dev")
    app.add_typer(db, name="db")
    dev.command("up")(dev_up)
    dev.command("down")(dev_down)
    dev.command("status")(dev_status)
    dev.command("env")(dev_env)
    db.command("upgrade")(db_upgrade)
    db.command("downgrade")(db_downgrade)
    db.command("maintain")(db_maintain)
    db.command("current")(db_current)


def _redact(url: str) -> str:
    """Hide a password in a URL before printing it."""
    from sqlalchemy.engine import make_url

    from armlab.errors import redact

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return redact(url)
