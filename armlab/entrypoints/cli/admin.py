"""Admin commands over the HTTP API: experiments create/list/show, start, stop, ship, serve.

The CLI never opens the database itself; it talks to ``ARMLAB_API_URL`` with ``ARMLAB_TOKEN``
(or ``--api-url`` / ``--token``). Output is a rich table by default and JSON with ``--json``.
Every error (an HTTP error, an unreachable API, an unreadable spec file) ends the command
with one ``error: ...`` line and exit status 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from armlab.entrypoints.cli.render import (
    console,
    render_audit,
    render_experiment,
    render_experiment_list,
    render_results,
)
from armlab.errors import ArmlabError, ValidationFailed

if TYPE_CHECKING:
    from armlab.adapters.http_client import ArmlabClient

ApiUrlOpt = typer.Option(None, "--api-url", help="API base URL (default: ARMLAB_API_URL).")
TokenOpt = typer.Option(None, "--token", help="Bearer token (default: ARMLAB_TOKEN).")
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of tables.")


def _client(api_url: str | None, token: str | None) -> ArmlabClient:
    # Imported per command (httpx and the settings cost ~0.3 s): `armlab --help` stays fast.
    from armlab.adapters.http_client import ArmlabClient
    from armlab.settings import get_settings

    settings = get_settings()
    url = api_url or settings.api_url
    tok = token if token is not None else settings.token.get_secret_value()
    return ArmlabClient(url, tok)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def load_spec(path: Path) -> dict[str, Any]:
    """Read a registration spec from JSON or YAML (chosen by extension, JSON tried first)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValidationFailed(f"cannot read spec file {str(path)!r}: {exc.strerror}") from exc
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError
        first = " ".join(str(exc).split())[:300]
        raise ValidationFailed(f"spec file {str(path)!r} is not valid JSON/YAML: {first}") from exc
    if not isinstance(data, dict):
        raise ValidationFailed(
            f"spec file {str(path)!r} must hold one mapping (the registration body), "
            f"got {type(data).__name__}"
        )
    return data


def _print_transition(exp: dict[str, Any], as_json: bool, verb: str) -> None:
    if as_json:
        _print_json(exp)
        return
    extra = f" (arm {exp['shipped_arm']})" if exp.get("shipped_arm") else ""
    typer.echo(f"{exp['key']}: {verb}; status {exp['status']}{extra}, version {exp['version']}")


# --- commands -----------------------------------------------------------------------------------


def create(
    file: Path = typer.Option(..., "-f", "--file", help="Spec file (.json, .yaml, .yml)."),
    as_json: bool = JsonOpt,
    api_url: str | None = ApiUrlOpt,
    token: str | None = TokenOpt,
) -> None:
    """Register an experiment from a JSON or YAML spec (status draft)."""
    spec = load_spec(file)
    with _client(api_url, token) as client:
        exp = client.create_experiment(spec)
    if as_json:
        _print_json(exp)
    else:
        typer.echo(
            f"{exp['key']}: registered ({exp['status']}), arms "
            f"{', '.join(a['key'] for a in exp['arms'])}, control {exp['control_arm_key']}"
        )


def list_(
    status: str | None = typer.Option(None, "--status", help="draft|running|stopped|shipped"),
    as_json: bool = JsonOpt,
    api_url: str | None = ApiUrlOpt,
    token: str | None = TokenOpt,
) -> None:
    """List experiments, newest first."""
    with _client(api_url, token) as client:
        exps = client.list_experiments(status)
    if as_json:
        _print_json(exps)
    else:
        render_experiment_list(console(), exps)


def show(
    key: str = typer.Argument(..., help="Experiment key."),
    as_json: bool = JsonOpt,
    api_url: str | None = ApiUrlOpt,
    token: str | None = TokenOpt,
) -> None:
    """Show settings, arms and current results of one experiment."""
    with _client(api_url, token) as client:
        exp = client.get_experiment(key)
        results = client.results(key)
    if as_json:
        _print_json({"experiment": exp, "results": results})
        return
    out = console()
    render_experiment(out, exp)
    render_results(out, results)


def audit(
    key: str = typer.Argument(..., help="Experiment key."),
    as_json: bool = JsonOpt,
    api_url: str | None = ApiUrlOpt,
    token: str | None = TokenOpt,
) -> None:
    """Show the audit trail of one experiment."""
    with _client(api_url, token) as client:
        rows = client.audit(key)
    if as_json:
        _print_json(rows)
        return
    render_audit(console(), key, rows)


def start(
    key: str = typer.Argument(..., help="Experiment key."),
    reason: str = typer.Option("", "--reason", help="Why (kept in the audit log)."),
    as_json: bool = JsonOpt,
    api_url: str | None = ApiUrlOpt,
    token: str | None = TokenOpt,
) -> None:
    """Start a draft experiment (draft -> running)."""
    with _client(api_url, token) as client:
        _print_transition(client.start(key, reason), as_json, "started")


def stop(
    key: str = typer.Argument(..., help="Experiment key."),
    reason: str = typer.Option(..., "--reason", help="Why it stops (audit log)."),
    as_json: bool = JsonOpt,
    api_url: str | None = ApiUrlOpt,
    token: str | None = TokenOpt,
) -> None:
    """Stop a running experiment: allocation ends, the control serves."""
    with _client(api_url, token) as client:
        _print_transition(client.stop(key, reason), as_json, "stopped")


def ship(
    key: str = typer.Argument(..., help="Experiment key."),
    arm: str = typer.Option(..., "--arm", help="Arm that gets all traffic."),
    reason: str = typer.Option(..., "--reason", help="Why (audit log)."),
    force: bool = typer.Option(False, "--force", help="Ship against the evidence."),
    as_json: bool = JsonOpt,
    api_url: str | None = ApiUrlOpt,
    token: str | None = TokenOpt,
) -> None:
    """Ship one arm of a running or stopped experiment (100% traffic, propensity 1)."""
    with _client(api_url, token) as client:
        _print_transition(client.ship(key, arm, reason, force), as_json, "shipped")


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    log_level: str | None = typer.Option(None, "--log-level", help="uvicorn log level."),
) -> None:
    """Run the HTTP API (uvicorn). Configure it with ARMLAB_* variables."""
    import uvicorn

    from armlab.entrypoints.api.app import create_app
    from armlab.settings import get_settings

    settings = get_settings()
    if not settings.auth_disabled and not settings.auth_tokens.get_secret_value():
        typer.echo(
            "warning: ARMLAB_AUTH_TOKENS is empty, every authenticated route answers 401",
            err=True,
        )
    try:
        uvicorn.run(
            create_app(settings),
            host=host,
            port=port,
            log_level=(log_level or settings.log_level).lower(),
        )
    except OSError as exc:  # e.g. the port is taken
        raise ArmlabError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from exc


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    experiments = typer.Typer(help="Register, list and show experiments.", no_args_is_help=True)
    app.add_typer(experiments, name="experiments")
    experiments.command("create")(create)
    experiments.command("list")(list_)
    experiments.command("show")(show)
    experiments.command("audit")(audit)
    app.command("start")(start)
    app.command("stop")(stop)
    app.command("ship")(ship)
    app.command("serve")(serve)
