"""``armlab demo``: an adaptive experiment end to end on MovieLens-100k, with real rewards.

What happens (each step through the same code a production deployment runs):

1. MovieLens-100k (Harper & Konstan 2015, read from the recbole wheel) is the catalogue and
   the user population. Ratings are split in time: the first half only feeds item popularity
   (what the control knows); requests replay the second half in time order.
2. An experiment is registered and started through the HTTP API (FastAPI ``TestClient``
   against :func:`armlab.entrypoints.api.app.create_app`, in process): a popularity control and
   language-model variants (MiniLM bi-encoders with two templates, a SmolLM2 yes/no reranker
   over a bi-encoder's top 20), Thompson sampling with an exploration floor, and an mSPRT
   (IPW, valid under the bandit's allocation) with ``auto_stop``.
3. Each request is a user at the moment of one of their ratings: ``POST
   /v1/experiments/{key}/recommend`` with the user's recent liked movies as history and, as
   candidates, the 100 most popular movies they have not rated yet (a first retrieval stage
   shared by all arms). The assigned arm's variant ranks them and returns its top k. The
   reward is real: a click when the top-k list contains a movie the user actually rated >= 4
   within ``window_s`` after the request time.
4. Impression and click events go through the producer SDK onto the bus (in-process memory
   bus, or Kafka with ``--stack local``) and the consumer runner ingests them exactly-once into
   the database. Every ``cadence`` requests the allocator runs one pass (new weights; the
   sequential test runs inside it and may stop the experiment).
5. When the test stops the experiment (or the request/time budget runs out) the winner is
   shipped through the API (the registry consults the sequential evidence and audits it), a
   summary table is printed, and the HTML report is written.
"""

from __future__ import annotations

import bisect
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from armlab.adapters.data.movielens import load_movielens
from armlab.adapters.scoring.models import set_cpu_threads
from armlab.adapters.scoring.tiny import make_tiny_model
from armlab.bootstrap import make_settings, open_services
from armlab.core.clock import utcnow
from armlab.entrypoints.api.app import create_app
from armlab.entrypoints.report import write_report
from armlab.errors import ArmlabError, ConfigurationError
from armlab.services.allocator import run_allocation
from armlab.services.registry import unique_key

ACTOR = "demo"


@dataclass
class DemoConfig:
    stack: str = "embedded"
    max_requests: int = 1200
    time_budget_s: float = 540.0
    cadence: int = 50
    k: int = 10
    include_lm: bool = True
    tiny: bool = False
    seed: int = 7
    report_dir: Path = Path("reports")
    key: str | None = None
    window_s: int = 3 * 3600  # a click = a movie rated >= 4 within 3 hours after the request
    every: int = 10  # one request at every 10th rating of a user
    history_len: int = 5  # liked movies sent as the user's history
    min_history: int = 5
    candidates: int = 100  # the most popular unseen movies every arm ranks
    split_quantile: float = 0.5
    exploration_floor: float = 0.05
    quiet: bool = False
    threads: int = 1  # torch CPU threads: one is much faster for batch-1 scoring on 2 cores
    settings: Any = None  # tests pass ready Settings
    tiny_dir: Path | None = None


@dataclass(frozen=True)
class DemoRequest:
    """One replayed request: user ``user`` at MovieLens time ``t``."""

    t: int
    user: str
    history: tuple[str, ...]  # recent liked movies, oldest first (most recent last)
    seen: frozenset[str]
    positives: frozenset[str]


@dataclass
class ArmTally:
    requests: int = 0
    clicks: int = 0
    seconds: float = 0.0


@dataclass
class DemoResult:
    key: str
    requests: int
    stop_reason: str
    shipped: str | None
    status: str
    tallies: dict[str, ArmTally]
    weights: dict[str, float]
    sequential: dict[str, Any] | None
    report_path: Path | None
    seconds: dict[str, float] = field(default_factory=dict)


# --- data -----------------------------------------------------------------------------------


def split_time(ml: Any, quantile: float) -> int:
    """The MovieLens timestamp splitting warm-up ratings from replayed ones."""
    return int(np.quantile(ml.rating_time, quantile))


def popularity_before(ml: Any, t0: int) -> dict[str, float]:
    """Rating counts per movie before ``t0``: what a popularity ranker knew at the start."""
    mask = ml.rating_time < t0
    ids, counts = np.unique(ml.rating_item[mask], return_counts=True)
    return {str(i): float(c) for i, c in zip(ids, counts, strict=True)}


def build_requests(
    ml: Any, *, t0: int, every: int, window_s: int, history_len: int, min_history: int
) -> list[DemoRequest]:
    """Request points at every ``every``-th rating of each user after ``t0``, in time order.

    History: the user's most recent ``history_len`` movies rated >= 4 strictly before the
    request time (all rated movies if none was liked). Positives: movies the user rated >= 4 at
    or after the request time and within ``window_s``. Requests with an empty positive set
    stay in the stream: they are real requests whose click rate is simply 0 for every arm.
    """
    out: list[DemoRequest] = []
    for u in ml.users:
        hist = ml.user_history(u)
        times = [h[2] for h in hist]
        for j in range(every, len(hist), every):
            t = hist[j][2]
            if t < t0:
                continue
            before = hist[: bisect.bisect_left(times, t)]  # strictly earlier ratings
            if len(before) < min_history:
                continue
            liked = [h[0] for h in before if h[1] >= 4] or [h[0] for h in before]
            end = bisect.bisect_right(times, t + window_s)
            pos = frozenset(h[0] for h in hist[len(before):end] if h[1] >= 4)
            out.append(DemoRequest(t=t, user=u, history=tuple(liked[-history_len:]),
                                   seen=frozenset(h[0] for h in before), positives=pos))
    out.sort(key=lambda r: (r.t, int(r.user)))
    return out


def catalog_payload(items: list[dict[str, Any]], pop: dict[str, float]) -> list[dict[str, Any]]:
    """Every movie as the candidate dict the recommend route takes, most popular first."""
    out = [{"id": it["id"], "title": it["title"], "year": it["year"], "genres": it["genres"],
            "popularity": pop.get(it["id"], 0.0)} for it in items]
    out.sort(key=lambda it: (-it["popularity"], int(it["id"])))
    return out


def candidate_payload(catalog: list[dict[str, Any]], req: DemoRequest, n: int
                      ) -> list[dict[str, Any]]:
    """Candidate generation + the history items.

    ``catalog`` is sorted by popularity (before the split). The candidates are the ``n`` most
    popular movies this user has not rated yet (a standard first retrieval stage: every arm
    ranks the same candidates), plus the user's history items, which the route looks up
    among the candidates and excludes from the ranking (``exclude_history``).
    """
    keep = set(req.history)
    out = [it for it in catalog if it["id"] in keep]
    for it in catalog:
        if it["id"] not in req.seen:
            out.append(it)
            if len(out) >= n + len(keep):
                break
    return out


# --- the experiment -------------------------------------------------------------------------


ITEM_TEMPLATE_GENRES = "{title} ({year}). Genres: {genres}"


def arm_specs(*, include_lm: bool, tiny_models: dict[str, str] | None = None
              ) -> list[dict[str, Any]]:
    """The arms: popularity control + language-model variants (real or tiny models)."""
    enc = (tiny_models or {}).get("encoder")
    lm = (tiny_models or {}).get("causal_lm")
    # Sequence lengths are budgeted for 2 CPU cores: 5 history titles fit in 64 tokens.
    titles: dict[str, Any] = {"kind": "bi_encoder", "item_template": "{title}",
                              "user_template": "{history}", "max_length": 64}
    genres: dict[str, Any] = {"kind": "bi_encoder", "item_template": ITEM_TEMPLATE_GENRES,
                              "user_template": "Recently liked: {history_items}",
                              "max_length": 128}
    if enc:
        titles["model"] = genres["model"] = enc
    arms: list[dict[str, Any]] = [
        {"key": "popularity", "control": True, "variant": {"kind": "popularity"}},
        {"key": "minilm-titles", "variant": titles},
        {"key": "minilm-genres", "variant": genres},
    ]
    if include_lm:
        rerank: dict[str, Any] = {
            "kind": "lm_yes_no", "candidates_from": titles, "rerank_top": 10,
            "item_template": "{title}", "user_template": "{history}",
            "max_length": 128, "batch_size": 10,
        }
        if lm:
            rerank["model"] = lm
        arms.append({"key": "smollm2-rerank", "variant": rerank})
    return arms


def experiment_spec(key: str, cfg: DemoConfig, arms: list[dict[str, Any]],
                    n_requests: int) -> dict[str, Any]:
    return {
        "key": key,
        "name": "MovieLens-100k: language-model recommenders vs popularity",
        "description": (
            "armlab demo: users replayed in time order; a click is a top-"
            f"{cfg.k} list containing a movie the user rated >= 4 within "
            f"{cfg.window_s // 3600} h after the request."
        ),
        "unit": "request",
        "reward": {"kind": "binary", "metric": "click"},
        "policy": {"name": "thompson", "params": {}},
        "exploration_floor": cfg.exploration_floor,
        "burn_in": max(20, cfg.cadence // 2),
        # Rewards are known at request time here, so feedback lands within milliseconds;
        # a 1 s window keeps the allocator's "matured" view almost current.
        "attribution_window_s": 1,
        "sequential": {"alpha": 0.05, "auto_stop": True, "min_samples": 50,
                       "max_n": n_requests, "correction": "holm"},
        "arms": arms,
    }


def _check(resp: Any, what: str) -> dict[str, Any]:
    if resp.status_code >= 400:
        try:
            detail = resp.json().get("detail")
        except Exception:  # noqa: BLE001
            detail = resp.text[:300]
        raise ConfigurationError(f"{what} failed ({resp.status_code}): {detail}")
    return dict(resp.json())


def choose_winner(seq: dict[str, Any] | None, control: str) -> tuple[str, str]:
    """(arm, why) from the sequential evaluation.

    The best-estimated arm among those the always-valid test found better than the control;
    otherwise the control: without evidence of an improvement the status quo ships (the
    registry's ship guard would refuse a treatment the test has not declared better).
    """
    arms = (seq or {}).get("arms", [])
    better = [a for a in arms if a.get("decision") == "treatment_better"]
    if better:
        best = max(better, key=lambda a: (a.get("estimate") or 0.0))
        return best["arm"], (f"mSPRT: better than {control} (estimate "
                             f"{best.get('estimate', 0):+.3f}, adjusted always-valid p "
                             f"{best.get('p_adjusted', float('nan')):.3g})")
    decided = [a for a in arms if a.get("decision") in ("treatment_worse", "futile")]
    if arms and len(decided) == len(arms):
        return control, "mSPRT: no treatment beat the control (all worse or futile)"
    return control, ("no treatment was shown better than the control by the always-valid "
                     "test within the budget; keeping the control")


def _tiny_models(base: Path) -> dict[str, str]:
    out = {}
    for kind in ("encoder", "causal_lm"):
        p = base / kind
        if not (p / "config.json").is_file():
            make_tiny_model(p, kind)
        out[kind] = str(p)
    return out


def run_demo(cfg: DemoConfig) -> DemoResult:  # noqa: C901 - one linear story
    """Run the whole demo; returns what it printed (for tests)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    set_cpu_threads(cfg.threads)
    console = Console(quiet=cfg.quiet)
    if not console.is_terminal:  # logs and CI: rich would wrap the summary table at 80 columns
        console = Console(quiet=cfg.quiet, width=130)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    settings = cfg.settings or make_settings(cfg.stack, auth_disabled=True)
    if not settings.auth_disabled:
        settings = settings.model_copy(update={"auth_disabled": True})
    services = open_services(settings, assigner_seed=cfg.seed)
    try:
        memory = settings.transport == "memory"
        ml = load_movielens()
        t0 = split_time(ml, cfg.split_quantile)
        pop = popularity_before(ml, t0)
        items = ml.items()
        catalog = catalog_payload(items, pop)
        requests = build_requests(ml, t0=t0, every=cfg.every, window_s=cfg.window_s,
                                  history_len=cfg.history_len, min_history=cfg.min_history)
        n_planned = min(cfg.max_requests, len(requests))
        requests = requests[:n_planned]
        with_pos = sum(1 for r in requests if r.positives)
        console.print(
            f"[bold]MovieLens-100k[/]: {len(items):,} movies, {len(ml.users):,} users, "
            f"{ml.n_ratings:,} ratings. Popularity from ratings before "
            f"{datetime.fromtimestamp(t0, UTC):%Y-%m-%d}; replaying {n_planned:,} requests "
            f"after it ({with_pos / max(n_planned, 1):.0%} have a liked movie within "
            f"{cfg.window_s // 3600} h)."
        )
        tiny = _tiny_models(cfg.tiny_dir or Path(settings.home) / "tiny-models") \
            if cfg.tiny else None
        arms = arm_specs(include_lm=cfg.include_lm, tiny_models=tiny)
        with services.uow() as uow:
            key = cfg.key or unique_key(uow, f"movielens-{utcnow():%Y%m%d-%H%M%S}")
        spec = experiment_spec(key, cfg, arms, n_planned)
        control = next(a["key"] for a in arms if a.get("control"))

        assigner = services.assigner
        app = create_app(settings, services)
        producer = services.producer
        runner = services.ingest_runner()
        with TestClient(app) as client:
            _check(client.post("/v1/experiments", json=spec), "registering the experiment")
            _check(client.post(f"/v1/experiments/{key}/start",
                               json={"reason": "armlab demo"}), "starting the experiment")
            run_allocation(services.session_factory)
            assigner.refresh()
            console.print(f"Registered and started [bold]{key}[/] with arms "
                          + ", ".join(a["key"] for a in arms) + f" (control: {control}).")

            # Warm every model before the clock starts: loading is not serving time.
            t_load = time.perf_counter()
            with console.status("loading models (MiniLM, SmolLM2 GGUF -> transformers)..."):
                pool = services.scorer_pool
                for a in arms:
                    pool.get(a["variant"])
            timings["model_load_s"] = time.perf_counter() - t_load
            console.print(f"models ready in {timings['model_load_s']:.1f} s")

            tallies = {a["key"]: ArmTally() for a in arms}
            weights: dict[str, float] = {a["key"]: 1.0 / len(arms) for a in arms}
            stop_reason = f"request budget reached ({n_planned:,})"
            status = "running"
            seq: dict[str, Any] | None = None
            served = 0
            t_loop = time.perf_counter()

            def sync() -> tuple[str, dict[str, Any] | None]:
                producer.flush()
                runner.drain() if memory else runner.run(exit_when_idle=1.0)
                run_allocation(services.session_factory)
                assigner.refresh()
                res = _check(client.get(f"/v1/experiments/{key}/results"), "results")
                snap = res.get("arms", [])
                weights.update({a["key"]: float(a.get("weight", 0.0)) for a in snap})
                return str(res.get("status")), res.get("sequential")

            def label() -> str:
                best = max(tallies, key=lambda a: tallies[a].clicks / max(tallies[a].requests, 1))
                w = "  ".join(f"{a}={weights.get(a, 0):.2f}" for a in tallies)
                return f"weights {w} | best so far: [bold]{best}[/]"

            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), console=console, transient=False) as bar:
                task = bar.add_task(label(), total=n_planned)
                for req in requests:
                    if time.perf_counter() - t_loop > cfg.time_budget_s:
                        stop_reason = f"time budget reached ({cfg.time_budget_s:.0f} s)"
                        break
                    body = {
                        "unit_id": f"user-{req.user}",
                        "user": {"history": list(req.history)},
                        "candidates": candidate_payload(catalog, req, cfg.candidates),
                        "k": cfg.k,
                        "exclude_history": True,
                        "context": {"movielens_time": req.t},
                    }
                    t_req = time.perf_counter()
                    out = _check(client.post(f"/v1/experiments/{key}/recommend", json=body),
                                 "recommend")
                    arm = out["arm"]
                    rec = [x["item_id"] for x in out["items"]]
                    served_at = datetime.fromisoformat(out["served_at"])
                    producer.send_impression(
                        experiment_key=key, arm_key=arm, unit_id=f"user-{req.user}",
                        propensity=float(out["propensity"]), impression_id=out["impression_id"],
                        served_at=served_at, items=rec,
                        context={"movielens_time": req.t, "user": req.user},
                    )
                    click = not req.positives.isdisjoint(rec)
                    if click:
                        producer.send_feedback(
                            impression_id=out["impression_id"], experiment_key=key,
                            kind="click", value=1.0,
                            occurred_at=served_at + timedelta(milliseconds=50),
                        )
                    tal = tallies.setdefault(arm, ArmTally())
                    tal.requests += 1
                    tal.clicks += int(click)
                    tal.seconds += time.perf_counter() - t_req
                    served += 1
                    if served % cfg.cadence == 0:
                        status, seq = sync()
                        bar.update(task, description=label())
                        if status != "running":
                            stop_reason = "the sequential test stopped the experiment"
                            bar.update(task, completed=served)
                            break
                    bar.update(task, advance=1)
                timings["replay_s"] = time.perf_counter() - t_loop
            status, seq = sync()
            timings["requests_per_s"] = served / max(timings["replay_s"], 1e-9)

            winner, why = choose_winner(seq, control)
            shipped: str | None = None
            ship = client.post(f"/v1/experiments/{key}/ship",
                               json={"arm": winner, "reason": f"armlab demo: {why}"})
            if ship.status_code < 400:
                shipped = winner
                status = "shipped"
            else:
                why = f"not shipped: {ship.json().get('detail')}"
            if status == "shipped":
                # the shipped snapshot (weight 1) for the report
                run_allocation(services.session_factory)
            final = _check(client.get(f"/v1/experiments/{key}/results"), "results")
            seq = final.get("sequential") or seq
            weights.update({a["key"]: float(a.get("weight", 0.0))
                            for a in final.get("arms", [])})
        runner.close()

        report_path: Path | None = None
        try:
            with services.uow() as uow:
                report_path = write_report(uow, key, cfg.report_dir)
        except ArmlabError as exc:
            console.print(f"[red]report failed:[/] {exc.message}")
        timings["total_s"] = time.perf_counter() - t_all
        result = DemoResult(key=key, requests=served, stop_reason=stop_reason, shipped=shipped,
                            status=status, tallies=tallies, weights=weights, sequential=seq,
                            report_path=report_path, seconds=timings)
        print_summary(console, result, control=control, why=why)
        return result
    finally:
        services.close()


def print_summary(console: Any, r: DemoResult, *, control: str, why: str) -> None:
    by_arm = {a["arm"]: a for a in (r.sequential or {}).get("arms", [])}
    t = Table(title=f"{r.key}: {r.requests:,} requests, stopped because {r.stop_reason}")
    for col in ("arm", "requests", "clicks", "click rate", "final weight", "vs control",
                "decision", "always-valid p"):
        t.add_column(col, justify="left" if col in ("arm", "decision", "vs control") else "right")
    for arm, tal in r.tallies.items():
        d = by_arm.get(arm, {})
        est, lo, hi = d.get("estimate"), d.get("ci_low"), d.get("ci_high")
        vs = "control" if arm == control else (
            f"{est:+.3f} [{lo if lo is not None else float('-inf'):+.3f}, "
            f"{hi if hi is not None else float('inf'):+.3f}]" if est is not None else "—")
        name = f"[bold green]{arm} ★[/]" if arm == r.shipped else arm
        t.add_row(name, f"{tal.requests:,}", f"{tal.clicks:,}",
                  f"{tal.clicks / tal.requests:.3f}" if tal.requests else "—",
                  f"{r.weights.get(arm, 0.0):.3f}", vs,
                  d.get("decision", "control" if arm == control else "—"),
                  f"{d['p_adjusted']:.3g}" if d.get("p_adjusted") is not None else "—")
    console.print(t)
    if r.shipped:
        console.print(f"[bold green]shipped[/] {r.shipped}: {why}")
    else:
        console.print(f"[bold yellow]{why}[/]")
    s = r.seconds
    console.print(
        f"model loading {s.get('model_load_s', 0):.0f} s, replay {s.get('replay_s', 0):.0f} s "
        f"({s.get('requests_per_s', 0):.1f} requests/s), total {s.get('total_s', 0):.0f} s"
    )
    if r.report_path:
        console.print(f"report: [bold]{r.report_path}[/]  (or GET /v1/experiments/{r.key}/report)")
