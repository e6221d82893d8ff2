"""``armlab demo``, ``armlab report``, ``armlab replay obd``, ``armlab ope``.

Heavy imports (torch via the scorer, matplotlib, FastAPI) happen inside the commands.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

STACK_HELP = ("embedded: SQLite under .armlab/ + in-process bus (default); local: the "
              "PostgreSQL/Kafka of `armlab dev up` via ARMLAB_DATABASE_URL/ARMLAB_KAFKA_BOOTSTRAP")


def demo_cmd(
    stack: str = typer.Option("embedded", help=STACK_HELP),
    max_requests: int = typer.Option(30_000, min=10, help="Stop after this many requests."),
    time_budget_s: float = typer.Option(
        420.0, min=10, help="Both stages' replay stops after this many seconds (model "
        "loading excluded); keeps `make demo` under 10 minutes on 2 CPU cores."),
    cadence: int = typer.Option(200, min=5, help="Requests between allocator passes."),
    concurrency: int = typer.Option(8, min=1, max=64,
                                    help="Requests in flight at once (batched scoring)."),
    k: int = typer.Option(10, min=1, max=100, help="Items per recommendation list."),
    full: bool = typer.Option(False, "--full", help="Add the arms too slow for 2 CPU cores: "
                              "a text-tower bi-encoder and the SmolLM2 yes/no reranker."),
    tiny: bool = typer.Option(False, help="Tiny random models (tests, smoke runs)."),
    seed: int = typer.Option(7, help="Seed for the user replay and the policy."),
    threads: int = typer.Option(1, min=0, help="torch CPU threads (0 = torch default)."),
    report_dir: Path = typer.Option(Path("reports"), help="Where the HTML report goes."),
    key: str = typer.Option("", help="Experiment key (default movielens-<timestamp>)."),
    serve: bool = typer.Option(
        False, "--serve", help="After the run, keep the API up (with the dashboard) on the "
        "demo's database and print the dashboard URL; Ctrl-C stops it."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface for --serve."),
    port: int = typer.Option(8000, "--port", help="TCP port for --serve."),
    stages: str = typer.Option(
        "both", help="both: stage 1 interleaves the rankers, stage 2 A/B-tests the preferred "
        "one against popularity (per user); interleave: stage 1 alone; ab: the A/B test of "
        "every arm alone."),
    stage1_share: float = typer.Option(
        0.5, min=0.05, max=0.95, help="Share of the replayed requests stage 1 may use."),
    stage1_budget_s: float = typer.Option(
        200.0, min=5, help="Stage 1's share of --time-budget-s (seconds)."),
    contextual: bool = typer.Option(
        False, "--contextual", help="Stage 2 allocates per segment of the user's history "
        "length (segment_thompson) and says whether serving by segment pays, with its "
        "interval."),
    rankers_per_request: int = typer.Option(
        2, min=0, help="Stage 1: rankers merged into each list, chosen per request by the "
        "dueling bandit (0 = every ranker in every list)."),
) -> None:
    """MovieLens-100k end to end, in two stages: interleave the language-model rankers, then
    A/B-test the preferred one against popularity with the user as the unit."""
    from armlab.entrypoints.demo.adaptive import DemoConfig
    from armlab.entrypoints.demo.two_stage import run_demo

    if stages not in ("both", "interleave", "ab"):
        raise typer.BadParameter("must be both, interleave or ab", param_hint="--stages")
    cfg = DemoConfig(stack=stack, max_requests=max_requests, time_budget_s=time_budget_s,
                     cadence=cadence, k=k, concurrency=concurrency, include_lm=full,
                     tiny=tiny, seed=seed, threads=threads,
                     report_dir=report_dir, key=key or None, stages=stages,
                     stage1_share=stage1_share, stage1_budget_s=stage1_budget_s,
                     rankers_per_request=rankers_per_request or None, contextual=contextual)
    result = run_demo(cfg)
    if serve:
        serve_demo(stack, result.key, host=host, port=port)


def report_cmd(
    key: str = typer.Argument(..., help="Experiment key."),
    out: Path = typer.Option(Path("reports"), "--out", help="Output directory."),
    stack: str = typer.Option("embedded", help=STACK_HELP),
) -> None:
    """Write a self-contained HTML report (<out>/<key>.html) of one experiment."""
    from armlab.bootstrap import make_settings, open_services
    from armlab.entrypoints.report import write_report

    services = open_services(make_settings(stack))
    try:
        path = write_report(services.reports.collect(key), out)
    finally:
        services.close()
    typer.echo(str(path))


def replay_obd_cmd(
    campaign: str = typer.Option("all", help="all | men | women"),
    stack: str = typer.Option("embedded", help=STACK_HELP),
    limit: int = typer.Option(0, min=0, help="Only the first N rows of each log (0: all)."),
    policy_estimate: str = typer.Option(
        "propensity", help="How the BTS policy's action distribution is estimated from "
        "its own log: propensity (harmonic mean of logged propensities) | empirical"),
    alpha: float = typer.Option(0.05, min=1e-6, max=0.5),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """Stream the Open Bandit Dataset sample through armlab and evaluate ZOZOTOWN's
    Bernoulli-TS policy off-policy from the uniform-random log."""
    from armlab.entrypoints.demo.obd_replay import print_replay, replay_obd

    result = replay_obd(campaign=campaign, stack=stack, limit=limit or None,
                        policy_estimate=policy_estimate, alpha=alpha,
                        progress=not as_json)
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
    else:
        print_replay(result)


def ope_cmd(
    experiment: str = typer.Option(..., "--experiment", "-e", help="Experiment key."),
    target_weights: str = typer.Option(
        ..., "--target-weights", "-t",
        help='Candidate allocation as JSON {"arm": weight, ...} (normalised), or one arm key.'),
    alpha: float = typer.Option(0.05, min=1e-6, max=0.5),
    include_immature: bool = typer.Option(
        False, help="Also use impressions younger than the attribution window."),
    stack: str = typer.Option("embedded", help=STACK_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """Off-policy evaluation of a candidate allocation on an experiment's logged traffic."""
    from armlab.bootstrap import make_settings, open_services
    from armlab.services.ope import evaluate_experiment

    services = open_services(make_settings(stack))
    try:
        with services.uow() as uow:
            result = evaluate_experiment(uow, experiment, target_weights, alpha=alpha,
                                         matured_only=not include_immature)
    finally:
        services.close()
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    print_ope(result)


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    del groups
    replay_app = typer.Typer(help="Replay real logged bandit data through armlab.",
                             no_args_is_help=True)
    app.add_typer(replay_app, name="replay")
    app.command("demo")(demo_cmd)
    app.command("report")(report_cmd)
    replay_app.command("obd")(replay_obd_cmd)
    app.command("ope")(ope_cmd)


def serve_demo(stack: str, key: str, *, host: str, port: int) -> None:
    """Serve the API and its dashboard on the demo's database until interrupted.

    The demo's settings: authentication is off (every visitor acts as admin), so it binds to
    the loopback interface unless told otherwise.
    """
    import uvicorn

    from armlab.bootstrap import make_settings
    from armlab.entrypoints.api.app import create_app
    from armlab.errors import ArmlabError

    settings = make_settings(stack, auth_disabled=True)
    url = f"http://{host}:{port}/ui/experiments/{key}"
    typer.echo(f"dashboard: {url}")
    typer.echo("  sign in with any token (authentication is off for the demo: every visitor "
               "acts as admin); Ctrl-C stops the server")
    try:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")
    except OSError as exc:
        raise ArmlabError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from exc


def print_ope(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    a = result["alpha"]
    t = Table(title=f"Off-policy value of {json.dumps(result['target'])} on "
                    f"{result['experiment']}")
    for col in ("estimator", "value", f"{int((1 - a) * 100)}% CI", "always-valid CS",
                "events", "weighted", "ESS"):
        t.add_column(col, justify="right" if col != "estimator" else "left")
    for name, e in result["estimates"].items():
        t.add_row(name.upper(), f"{e['value']:.4f}", f"[{e['ci_low']:.4f}, {e['ci_high']:.4f}]",
                  f"[{e['cs_low']:.4f}, {e['cs_high']:.4f}]", str(e["n_events"]),
                  str(e["n_weighted"]), f"{e['ess']:.0f}")
    lg = result["logged"]
    t.add_row("logged (as run)", f"{lg['value']:.4f}", f"[{lg['ci_low']:.4f}, {lg['ci_high']:.4f}]",
              "", str(lg["n_events"]), "", "")
    con.print(t)
    if result["n_immature"]:
        con.print(f"{result['n_immature']} impressions younger than the attribution window "
                  "were left out (--include-immature to use them).")
