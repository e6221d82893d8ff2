"""``armlab bench ingest|consumers|fuzz|policy|contextual|guardrails|assign|scoring|interleaving``:
each prints JSON with its figure and a baseline measured in the same run. The benchmark code
lives in :mod:`armlab.tools.bench`.

Commands import their benchmark inside the function so ``armlab --help`` stays fast.
"""

from __future__ import annotations

import json

import typer

from armlab.entrypoints.cli.scoring import variant_arg


def bench_ingest(
    events: int = typer.Option(100_000, "--events", min=100, help="Events per run."),
    partitions: int = typer.Option(2, "--partitions", min=1,
                                   help="Partitions of the bench topics."),
    processes: int = typer.Option(2, "--processes", min=0,
                                  help="Consumer processes for the scaling figure "
                                       "(0 skips it)."),
    as_json: bool = typer.Option(False, "--json", help="Print only JSON."),
) -> None:
    """Bare kafka-python read rate vs armlab's full ingest into PostgreSQL, same run.

    Needs ARMLAB_DATABASE_URL (PostgreSQL) and ARMLAB_KAFKA_BOOTSTRAP (`armlab dev up`).
    """
    from armlab.settings import get_settings
    from armlab.tools.bench.ingest import run_bench

    result = run_bench(get_settings(), events=events, partitions=partitions,
                       processes=processes,
                       progress=None if as_json else lambda m: typer.echo(m, err=True))
    typer.echo(json.dumps(result, indent=None if as_json else 2))


def bench_consumers(
    events: int = typer.Option(100_000, "--events", min=100, help="Events per run."),
    partitions: int = typer.Option(4, "--partitions", min=1,
                                   help="Partitions of each run's topics."),
    processes: str = typer.Option("1,2,4", "--processes",
                                  help="Consumer process counts, one run each."),
    codec: str = typer.Option("none", "--codec",
                              help="Producer compression: none, gzip, snappy, lz4, zstd."),
    own_stack: bool = typer.Option(
        False, "--own-stack",
        help="Start a temporary PostgreSQL and Kafka for the run (armlab.tools.devstack) "
             "instead of using ARMLAB_DATABASE_URL / ARMLAB_KAFKA_BOOTSTRAP."),
    as_json: bool = typer.Option(False, "--json", help="Print only JSON."),
) -> None:
    """1, 2 and 4 `armlab consume` processes in one group on a pre-filled topic against
    bare kafka-python and confluent-kafka reads of it, same run; exits 1 when a run's
    accounting is not exact.

    Needs ARMLAB_DATABASE_URL (PostgreSQL) and ARMLAB_KAFKA_BOOTSTRAP (`armlab dev up`),
    or --own-stack.
    """
    from armlab.settings import get_settings
    from armlab.tools.bench.consumers import run

    counts = [int(p) for p in processes.split(",") if p.strip()]
    if not counts or min(counts) < 1:
        raise typer.BadParameter("--processes: comma-separated counts, each at least 1")
    result = run(events, settings=get_settings(), own=own_stack, partitions=partitions,
                 processes=counts, codec=codec,
                 progress=None if as_json else lambda m: typer.echo(m, err=True))
    typer.echo(json.dumps(result, indent=None if as_json else 2))
    if not result["accounting_exact"]:
        raise typer.Exit(1)


def bench_fuzz(
    records: int = typer.Option(100_000, "--records", min=100,
                                help="Hostile records (armlab.tools.fuzz)."),
    good: int = typer.Option(50_000, "--good", min=100, help="Good events mixed in."),
    seed: int = typer.Option(2026, "--seed"),
    partitions: int = typer.Option(2, "--partitions", min=1),
    as_json: bool = typer.Option(False, "--json", help="Print only JSON."),
) -> None:
    """The consumer fuzz test at full size: accounting, statistics, rate vs bare read.

    Needs ARMLAB_DATABASE_URL (PostgreSQL) and ARMLAB_KAFKA_BOOTSTRAP (`armlab dev up`).
    Exits 1 when the accounting or the statistics are not exact.
    """
    from armlab.settings import get_settings
    from armlab.tools.bench.fuzz import run_fuzz_bench

    result = run_fuzz_bench(get_settings(), records=records, good=good, seed=seed,
                            partitions=partitions,
                            progress=None if as_json else lambda m: typer.echo(m, err=True))
    typer.echo(json.dumps(result, indent=None if as_json else 2))
    if not (result["accounting_exact"] and result["stats_equal_reference"]):
        raise typer.Exit(1)


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
    from armlab.tools.bench.policy import run_policy_bench

    result = run_policy_bench(
        seeds=seeds,
        horizon=horizon,
        mab_seeds=mab_seeds,
        mab_configs=mab_configs,
        quick=quick,
    )
    typer.echo(json.dumps(result, indent=None if as_json else 2))


def bench_contextual(
    horizon: int = typer.Option(20_000, "--horizon", min=100, help="Rounds per run."),
    seeds: int = typer.Option(20, "--seeds", min=2, help="armlab seeds (vectorised)."),
    peer_seeds: int = typer.Option(
        4, "--peer-seeds", min=0,
        help="Seeds for Vowpal Wabbit and MABWiser (one at a time, slower); 0 skips them."),
    batch_every: int = typer.Option(100, "--batch-every", min=1,
                                    help="Rounds between weight updates (all policies)."),
    seed: int = typer.Option(2026, "--seed"),
    latency: bool = typer.Option(True, "--latency/--no-latency",
                                 help="Also time one decision per policy."),
    obd: bool = typer.Option(
        False, "--obd",
        help="Instead: every policy's offline (progressive IPW) click rate with its "
        "confidence sequence on the Open Bandit Dataset sample's uniform log and user "
        "features (ARMLAB_OBD_DIR), all campaigns, side by side."),
    obd_limit: int = typer.Option(0, "--obd-limit", min=0,
                                  help="--obd: rows per campaign (0: all 10,000)."),
    as_json: bool = typer.Option(False, "--json", help="Compact JSON."),
) -> None:
    """Contextual policies (segment and linear Thompson sampling) vs non-contextual Thompson
    sampling and Vowpal Wabbit / MABWiser (the `bench` extra) on a simulated recommender whose
    best variant differs by segment, and on one where it does not; decision latency. With
    --obd: the same policies on the Open Bandit Dataset sample, offline."""
    if obd:
        from armlab.settings import Settings
        from armlab.tools.bench.contextual_obd import run_obd_bench

        typer.echo(json.dumps(run_obd_bench(
            base=Settings().obd_dir, limit=obd_limit or None, batch_every=batch_every,
            seed=seed), indent=None if as_json else 2))
        return
    from armlab.tools.bench.contextual import run_contextual_bench

    result = run_contextual_bench(horizon=horizon, seeds=seeds, peer_seeds=peer_seeds,
                                  batch_every=batch_every, seed=seed, latency=latency)
    typer.echo(json.dumps(result, indent=None if as_json else 2))


def bench_guardrails(
    reps: int = typer.Option(4000, "--reps", min=2, help="Replications per cell."),
    seed: int = typer.Option(2026, "--seed"),
    workers: int = typer.Option(2, "--workers", min=1, help="Worker processes."),
    horizon: int = typer.Option(0, "--horizon", min=0,
                                help="Impressions (users for --unit user) per simulated "
                                "experiment; 0: 20,000 impressions or 2,000 users."),
    look_every: int = typer.Option(0, "--look-every", min=0,
                                   help="Impressions (users) between looks and weight "
                                   "updates; 0: 20 impressions or 50 users."),
    floor: float = typer.Option(0.1, "--floor", min=0.001, max=0.49,
                                help="Thompson exploration floor."),
    alpha: float = typer.Option(0.05, "--alpha", min=1e-6, max=0.5,
                                help="The guardrail's per-arm alpha."),
    quick: bool = typer.Option(False, "--quick", help="Tiny run for tests."),
    as_json: bool = typer.Option(False, "--json", help="Compact JSON."),
    unit: str = typer.Option(
        "request", "--unit", help="request: the per-impression grid; user: sticky users with "
        "correlated impressions, per-user analysis beside per-impression (horizon and looks "
        "in users)."),
) -> None:
    """Guardrail test under Thompson allocation and continuous looks: false rollbacks
    with no harm (vs plain mSPRT), detection and time to rollback of a harmful arm, and
    the harm saved vs no guardrail, all on the same simulated data."""
    import sys

    from armlab.tools.bench.guardrails import run_guardrail_bench

    result = run_guardrail_bench(
        reps=reps, seed=seed, workers=workers, quick=quick,
        horizon=horizon or (2000 if unit == "user" else 20_000),
        look_every=look_every or (50 if unit == "user" else 20), floor=floor, alpha=alpha,
        unit=unit,
        progress=None if quick else lambda m: print(m, file=sys.stderr, flush=True))
    typer.echo(json.dumps(result, indent=None if as_json else 2))


def bench_assign(
    as_json: bool = typer.Option(True, "--json/--no-json"),
    requests: int = typer.Option(20_000, "--requests", min=10),
    concurrency: int = typer.Option(8, "--concurrency", min=1),
    duration: float = typer.Option(30.0, "--max-seconds", min=1.0),
    unit: str = typer.Option("request", "--unit", help="request | user"),
    under_attack: bool = typer.Option(
        False, "--under-attack",
        help="Measure the throughput quiet and while a thread fires wrong tokens from "
        "127.0.0.2 at the same server (and at one with the auth throttle off)."),
    contextual: bool = typer.Option(
        False, "--contextual",
        help="A contextual /assign (segment_thompson, linear_thompson) beside the "
        "non-contextual fast path on the same server, in one run, with their ratios."),
) -> None:
    """Load-test POST /v1/experiments/{key}/assign from a separate process on loopback."""
    if contextual:
        from armlab.tools.bench.assign_contextual import run_contextual_assign_bench

        typer.echo(json.dumps(run_contextual_assign_bench(
            requests=requests, concurrency=concurrency, max_seconds=duration),
            indent=None if as_json else 2))
        return
    if under_attack:
        from armlab.tools.bench.assign_attack import run_assign_attack_bench

        typer.echo(json.dumps(run_assign_attack_bench(
            requests=requests, concurrency=concurrency, max_seconds=duration),
            indent=None if as_json else 2))
        return
    from armlab.tools.bench.assign import run_assign_bench

    result = run_assign_bench(
        requests=requests, concurrency=concurrency, max_seconds=duration, unit=unit
    )
    typer.echo(json.dumps(result, indent=None if as_json else 2))


def bench_dashboard(
    arms: int = typer.Option(10, "--arms", min=2, max=50),
    days: float = typer.Option(30.0, "--days", min=0.01, help="Days of traffic."),
    rate: float = typer.Option(1000.0, "--rate", min=1.0, help="Events per second."),
    snapshots: int = typer.Option(10_000, "--snapshots", min=1),
    raw_events: int = typer.Option(
        1_000_000, "--raw-events", min=0,
        help="Raw impressions for the baseline (0 skips their insert)."),
    requests: int = typer.Option(30, "--requests", min=1, help="Timed requests per source."),
    keep: bool = typer.Option(False, "--keep", help="Keep the benchmark experiment."),
    as_json: bool = typer.Option(False, "--json", help="Print only JSON."),
) -> None:
    """Server time (p95) of the dashboard's experiment page and chart data from the
    rollups, against the same page computed from raw impressions.

    Needs ARMLAB_DATABASE_URL (PostgreSQL; `armlab dev up`). The data is generated in
    the database for one experiment that is deleted afterwards.
    """
    from armlab.entrypoints.api.app import create_app
    from armlab.settings import get_settings
    from armlab.tools.bench.dashboard import run_bench

    result = run_bench(get_settings(), create_app, arms=arms, days=days, rate=rate,
                       snapshots=snapshots, raw_events=raw_events, requests=requests,
                       keep=keep,
                       progress=None if as_json else lambda m: typer.echo(m, err=True))
    typer.echo(json.dumps(result, indent=None if as_json else 2))


def bench_contextual_scan(
    impressions: int = typer.Option(1_000_000, "--impressions", min=100),
    arms: int = typer.Option(3, "--arms", min=2, max=50),
    repeats: int = typer.Option(3, "--repeats", min=1, help="Runs per path (best counts)."),
    as_json: bool = typer.Option(False, "--json", help="Print only JSON."),
) -> None:
    """The allocator's read of a contextual experiment's matured impressions, grouped by the
    declared features in PostgreSQL, against the per-impression stream it replaced (same
    data, same run; both must give the same tallies).

    Needs ARMLAB_DATABASE_URL (PostgreSQL; `armlab dev up`). The data is generated in the
    database for one experiment that is deleted afterwards.
    """
    from armlab.settings import get_settings
    from armlab.tools.bench.contextual_scan import run_scan_bench

    result = run_scan_bench(get_settings(), impressions=impressions, arms=arms,
                            repeats=repeats,
                            progress=None if as_json else lambda m: typer.echo(m, err=True))
    typer.echo(json.dumps(result, indent=None if as_json else 2))


def bench_recommend(
    as_json: bool = typer.Option(True, "--json/--no-json"),
    requests: int = typer.Option(2000, "--requests", min=10),
    concurrency: int = typer.Option(16, "--concurrency", min=1, max=256),
    duration: float = typer.Option(60.0, "--max-seconds", min=1.0),
    threads: int = typer.Option(0, help="torch CPU threads in the API (0 = default)."),
) -> None:
    """POST /recommend on MovieLens with the demo's arms: concurrent requests (batched
    scoring) against single-request serving, same run."""
    import sys

    from armlab.tools.bench.recommend import run_recommend_bench

    result = run_recommend_bench(
        requests=requests, concurrency=concurrency, max_seconds=duration, threads=threads,
        progress=lambda m: print(m, file=sys.stderr, flush=True))
    typer.echo(json.dumps(result, indent=None if as_json else 2))


def bench_scoring(
    variant: str = typer.Option("bi_encoder", help="Variant JSON, @file or kind name."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    quick: bool = typer.Option(False, help="Small sizes for a short CPU run."),
    items: int = typer.Option(0, help="Items per encode measurement (0 = by device)."),
    catalog_sizes: str = typer.Option("100000,1000000", help="Cached catalog sizes."),
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile the model."),
    threads: int = typer.Option(0, help="torch CPU threads (0 = torch default)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Throughput/latency of a variant vs a naive float32, batch-1, pad-to-max baseline."""
    from armlab.adapters.scoring.checkpoints import set_cpu_threads
    from armlab.tools.bench.scoring import run_bench

    set_cpu_threads(threads)
    sizes = [int(s) for s in catalog_sizes.split(",") if s.strip()]
    out = run_bench(variant_arg(variant), device=device, quick=quick, n_items=items,
                    catalog_sizes=sizes, compile_model=compile_model)
    typer.echo(json.dumps(out, indent=None if as_json else 2))


def bench_interleaving(
    orders: int = typer.Option(50, "--orders", min=2, help="Random orders of the users."),
    seed: int = typer.Option(2026, "--seed"),
    alpha: float = typer.Option(0.05, "--alpha", min=1e-6, max=0.5),
    min_users: int = typer.Option(20, "--min-users", min=2,
                                  help="Users before a look carries evidence (every "
                                       "design; for A/B, per arm)."),
    floor: float = typer.Option(0.1, "--floor", min=0.01, max=0.49,
                                help="The Thompson A/B design's exploration floor."),
    cadence: int = typer.Option(10, "--cadence", min=1,
                                help="Users between Thompson re-weightings."),
    max_requests: int = typer.Option(0, "--max-requests", min=0,
                                     help="Only the first N replayed requests (0 = all)."),
    threads: int = typer.Option(1, help="torch CPU threads for the one-off scoring."),
    as_json: bool = typer.Option(False, "--json", help="Compact JSON."),
) -> None:
    """Interleaving vs A/B on the MovieLens replay: the blended MiniLM arm against
    popularity, per user, over random user orders; share of orders decided and median
    users to a decision for team-draft interleaving and, on the same orders, the A/B
    design (user unit; fixed 50/50 and Thompson with the IPW test). Each request is
    scored once per ranker (cached under <home>/bench-interleaving/)."""
    import sys

    from armlab.adapters.scoring.checkpoints import set_cpu_threads
    from armlab.settings import get_settings
    from armlab.tools.bench.interleaving import run_interleaving_bench

    set_cpu_threads(threads)
    result = run_interleaving_bench(
        get_settings().home, orders=orders, seed=seed, alpha=alpha, min_users=min_users,
        floor=floor, cadence=cadence, max_requests=max_requests or None,
        progress=lambda m: print(m, file=sys.stderr, flush=True))
    typer.echo(json.dumps(result, indent=None if as_json else 2))


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    del app
    groups["bench"].command("ingest")(bench_ingest)
    groups["bench"].command("consumers")(bench_consumers)
    groups["bench"].command("fuzz")(bench_fuzz)
    groups["bench"].command("policy")(bench_policy)
    groups["bench"].command("contextual")(bench_contextual)
    groups["bench"].command("contextual-scan")(bench_contextual_scan)
    groups["bench"].command("guardrails")(bench_guardrails)
    groups["bench"].command("assign")(bench_assign)
    groups["bench"].command("dashboard")(bench_dashboard)
    groups["bench"].command("recommend")(bench_recommend)
    groups["bench"].command("scoring")(bench_scoring)
    groups["bench"].command("interleaving")(bench_interleaving)
