"""``armlab demo``: an adaptive experiment end to end on MovieLens-100k, with real rewards.

What happens (each step through the same code a production deployment runs):

1. MovieLens-100k (Harper & Konstan 2015, read from the recbole wheel) is the catalogue and
   the user population. Ratings are split in time: the first half only feeds item popularity
   (what the control knows); requests replay the second half in time order.
2. An experiment is registered and started through the HTTP API (FastAPI ``TestClient``
   against :func:`armlab.entrypoints.api.app.create_app`, in process): a popularity control and
   MiniLM bi-encoder variants whose user vector is the mean of the liked movies' vectors, one
   of them blended with a popularity prior (weight 0.2, the weight ``armlab quality`` picks on
   its validation users); ``full=True`` adds the arms too slow for 2 CPU cores (a text-tower
   bi-encoder and a SmolLM2 yes/no reranker). Thompson sampling with an exploration floor and
   an mSPRT (IPW, valid under the bandit's allocation) with ``auto_stop``.
3. Each request is a user at the moment of one of their ratings: ``POST
   /v1/experiments/{key}/recommend`` against the whole MovieLens catalogue (loaded as a
   versioned catalog), with the user's recent liked movies as history and every movie they
   have already rated excluded. The assigned arm's variant ranks the catalogue and returns its
   top k. Requests are issued ``concurrency`` at a time, so the batching scorer ranks them
   together. The reward is real: a click when the top-k list contains a movie the user
   actually rated >= 4 within ``window_s`` after the request time.
4. Impression and click events go through the producer SDK onto the bus (in-process memory
   bus, or Kafka with ``--stack local``) and the consumer runner ingests them exactly-once into
   the database. Every ``cadence`` requests the allocator runs one pass (new weights; the
   sequential test runs inside it and may stop the experiment).
5. When the test stops the experiment (or the request/time budget runs out) the winner is
   shipped through the API (the registry consults the sequential evidence and audits it), a
   summary table is printed, and the HTML report is written.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from armlab.adapters.data.movielens import load_movielens
from armlab.adapters.scoring.scorers import UserContext, rank_catalog_many
from armlab.adapters.scoring.tiny import make_tiny_model
from armlab.core.clock import utcnow
from armlab.core.status import ExperimentStatus
from armlab.entrypoints.demo.common import check as _check
from armlab.entrypoints.demo.experiment import (
    ATTRIBUTION_WINDOW_S,
    experiment_spec,
    history_level,
)
from armlab.entrypoints.demo.interleaved import StageOne
from armlab.entrypoints.demo.summary import choose_winner
from armlab.entrypoints.report import write_report
from armlab.errors import ArmlabError
from armlab.services.allocator import run_allocation
from armlab.services.catalog import store_catalog
from armlab.tools.movielens_replay import (
    CATALOG,
    ITEM_TEMPLATE_GENRES,
    DemoRequest,
    arm_specs,
    build_requests,
    catalog_payload,
    popularity_before,
    split_time,
)

__all__ = ["CATALOG", "ITEM_TEMPLATE_GENRES", "DemoConfig", "DemoRequest", "DemoResult",
           "arm_specs", "build_requests", "catalog_payload", "choose_winner",
           "popularity_before", "split_time"]

ACTOR = "demo"


@dataclass
class DemoConfig:
    stack: str = "embedded"
    max_requests: int = 30_000
    time_budget_s: float = 420.0
    cadence: int = 200
    concurrency: int = 8
    k: int = 10
    include_lm: bool = False  # the arms too slow for 2 CPU cores (``--full``)
    tiny: bool = False
    seed: int = 7
    report_dir: Path = Path("reports")
    key: str | None = None
    window_s: int = 3 * 3600  # a click = a movie rated >= 4 within 3 hours after the request
    every: int = 2  # one request at every 2nd rating of a user
    history_len: int = 5  # liked movies sent as the user's history
    min_history: int = 5
    prior_weight: float = 0.2  # the popularity prior's weight (armlab quality's choice)
    split_quantile: float = 0.5
    # stage 2's floor: the control keeps at least a fifth of the users (at 0.05 it could end
    # below min_samples users; 0.2 roughly doubles the power of 0.1, docs/statistics.md)
    exploration_floor: float = 0.2
    quiet: bool = False
    threads: int = 1  # torch CPU threads: one is much faster for batch-1 scoring on 2 cores
    stages: str = "both"  # both | interleave (stage 1 only) | ab (stage 2 only, every arm)
    stage1_share: float = 0.5  # the share of the replayed requests stage 1 may use
    stage1_budget_s: float = 200.0  # stage 1's share of time_budget_s
    # rankers merged per stage-1 list (the dueling bandit picks them); None or >= the arms:
    # every ranker in every list
    rankers_per_request: int | None = 2
    contextual: bool = False  # stage 2 allocates per history segment (segment_thompson)
    settings: Any = None  # tests pass ready Settings
    tiny_dir: Path | None = None


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
    stage_one: StageOne | None = None
    why: str = ""
    contextual: dict[str, Any] | None = None


# --- the experiment -------------------------------------------------------------------------


def _tiny_models(base: Path) -> dict[str, str]:
    out = {}
    for kind in ("encoder", "causal_lm"):
        p = base / kind
        if not (p / "config.json").is_file():
            make_tiny_model(p, kind)
        out[kind] = str(p)
    return out


def _console(quiet: bool) -> Console:
    console = Console(quiet=quiet)
    if not console.is_terminal:  # logs and CI: rich would wrap the summary table at 80 columns
        console = Console(quiet=quiet, width=130)
    return console


@dataclass
class _Replay:
    """What the replay loop tracks (the arms' tallies, the served weights, the latest
    sequential evaluation)."""

    tallies: dict[str, ArmTally]
    weights: dict[str, float]
    stop_reason: str
    status: str = ExperimentStatus.RUNNING
    seq: dict[str, Any] | None = None
    served: int = 0
    contextual: dict[str, Any] | None = None  # the results' block with --contextual


class _DemoRun:
    """One run of the demo, step by step (:func:`run_demo` calls them in order)."""

    def __init__(self, cfg: DemoConfig, console: Console, services: Any, settings: Any) -> None:
        self.cfg, self.console, self.services, self.settings = cfg, console, services, settings
        self.timings: dict[str, float] = {}
        self.memory = settings.transport == "memory"
        self.cuped = False  # stage 2 after stage 1: CUPED on the stage-1 pre-period

    def load_data(self) -> None:
        """MovieLens split in time, the catalogue stored, the requests built."""
        cfg, services = self.cfg, self.services
        ml = load_movielens()
        t0 = split_time(ml, cfg.split_quantile)
        items = ml.items()
        self.catalog = catalog_payload(items, popularity_before(ml, t0))
        store_catalog(services.uow, name=CATALOG, items=self.catalog)
        requests = build_requests(ml, t0=t0, every=cfg.every, window_s=cfg.window_s,
                                  history_len=cfg.history_len, min_history=cfg.min_history)
        self.n_planned = min(cfg.max_requests, len(requests))
        self.requests = requests[:self.n_planned]
        with_pos = sum(1 for r in self.requests if r.positives)
        self.console.print(
            f"[bold]MovieLens-100k[/]: {len(items):,} movies, {len(ml.users):,} users, "
            f"{ml.n_ratings:,} ratings. Popularity from ratings before "
            f"{datetime.fromtimestamp(t0, UTC):%Y-%m-%d}; replaying {self.n_planned:,} "
            f"requests after it ({with_pos / max(self.n_planned, 1):.0%} have a liked movie "
            f"within {cfg.window_s // 3600} h)."
        )

    def design(self) -> None:
        """The arms, the experiment key and its registration body."""
        cfg = self.cfg
        tiny = _tiny_models(cfg.tiny_dir or Path(self.settings.home) / "tiny-models") \
            if cfg.tiny else None
        self.arms = arm_specs(include_lm=cfg.include_lm, tiny_models=tiny,
                              prior_weight=cfg.prior_weight)
        self.key = cfg.key or self.services.experiments.unique_key(
            f"movielens-{utcnow():%Y%m%d-%H%M%S}")
        self.control = next(a["key"] for a in self.arms if a.get("control"))

    def split(self) -> list[DemoRequest]:
        """Stage 1's requests (the first ``stage1_share`` of the replay, in time order); the
        rest stay for stage 2. Without stage 2 stage 1 takes them all."""
        cfg = self.cfg
        if cfg.stages == "ab":
            return []
        n1 = len(self.requests) if cfg.stages == "interleave" else \
            int(round(len(self.requests) * cfg.stage1_share))
        first, self.requests = self.requests[:n1], self.requests[n1:]
        self.n_planned = len(self.requests)
        return first

    def narrow(self, preferred: str) -> None:
        """Stage 2 tests the preferred ranker against the control."""
        self.arms = [a for a in self.arms if a["key"] in (self.control, preferred)]

    def ab_spec(self) -> dict[str, Any]:
        users = len({r.user for r in self.requests})
        self.spec = experiment_spec(self.key, self.cfg, self.arms, max(users, 1),
                                    cuped=self.cuped)
        return self.spec

    def register(self, client: Any) -> None:
        """Register and start the experiment through the API; the first allocation."""
        key = self.key
        _check(client.post("/v1/experiments", json=self.ab_spec()),
               "registering the experiment")
        _check(client.post(f"/v1/experiments/{key}/start", json={"reason": "armlab demo"}),
               "starting the experiment")
        run_allocation(self.services.allocation_store)
        self.services.assigner.refresh()
        self.console.print(f"Registered and started [bold]{key}[/] with arms "
                           + ", ".join(a["key"] for a in self.arms)
                           + f" (control: {self.control}).")

    def warm_models(self) -> None:
        """Load every model and encode the catalogue before the clock starts."""
        t_load = time.perf_counter()
        with self.console.status("loading models and encoding the catalogue..."):
            pool = self.services.scorer_pool
            view = self.services.catalogs.get(CATALOG)
            warm_user = UserContext(history=[self.catalog[0]])
            for a in self.arms:
                # item vectors of the catalogue: computed once per catalog version
                rank_catalog_many(pool.get(a["variant"]), [warm_user], view, [1], [set()])
        self.timings["model_load_s"] = time.perf_counter() - t_load
        self.console.print(f"models ready in {self.timings['model_load_s']:.1f} s")

    def sync(self, client: Any, runner: Any, state: _Replay) -> None:
        """Events in, one allocator pass, the new weights and evaluation read back."""
        self.services.producer.flush()
        runner.drain() if self.memory else runner.run(exit_when_idle=1.0)
        run_allocation(self.services.allocation_store)
        self.services.assigner.refresh()
        res = _check(client.get(f"/v1/experiments/{self.key}/results"), "results")
        state.weights.update({a["key"]: float(a.get("weight", 0.0))
                              for a in res.get("arms", [])})
        state.status, state.seq = str(res.get("status")), res.get("sequential")

    def context(self, req: DemoRequest) -> dict[str, Any]:
        """The request's context: its MovieLens time and the user's history segment."""
        return {"movielens_time": req.t, "history": history_level(len(req.seen))}

    def serve(self, client: Any, req: DemoRequest, key: str | None = None
              ) -> tuple[dict[str, Any], float]:
        """One ``/recommend`` call for a replayed request; (answer, seconds)."""
        body = {
            "unit_id": f"user-{req.user}",
            "user": {"history": list(req.history)},
            "catalog": CATALOG,
            "k": self.cfg.k,
            "exclude_history": True,
            "exclude": sorted(req.seen),
            "context": self.context(req),
        }
        t_req = time.perf_counter()
        out = _check(client.post(f"/v1/experiments/{key or self.key}/recommend", json=body),
                     "recommend")
        return out, time.perf_counter() - t_req

    def emit(self, req: DemoRequest, out: dict[str, Any], state: _Replay, secs: float) -> None:
        """The impression and its feedback (a click, a low rating) through the producer."""
        producer, key = self.services.producer, self.key
        arm = out["arm"]
        rec = [x["item_id"] for x in out["items"]]
        served_at = datetime.fromisoformat(out["served_at"])
        producer.send_impression(
            experiment_key=key, arm_key=arm, unit_id=f"user-{req.user}",
            propensity=float(out["propensity"]), impression_id=out["impression_id"],
            served_at=served_at, items=rec, context={**self.context(req), "user": req.user},
        )
        click = not req.positives.isdisjoint(rec)
        low = [req.disliked[i] for i in rec if i in req.disliked]
        if low:
            producer.send_feedback(
                impression_id=out["impression_id"], experiment_key=key, kind="rating",
                value=float(min(low)), occurred_at=served_at + timedelta(milliseconds=50))
        if click:
            producer.send_feedback(
                impression_id=out["impression_id"], experiment_key=key, kind="click",
                value=1.0, occurred_at=served_at + timedelta(milliseconds=50))
        tal = state.tallies.setdefault(arm, ArmTally())
        tal.requests += 1
        tal.clicks += int(click)
        tal.seconds += secs

    def replay(self, client: Any, runner: Any) -> _Replay:
        """Serve the requests ``cadence`` at a time, with a sync after each chunk, until the
        budget runs out or the sequential test stops the experiment."""
        cfg, n_planned = self.cfg, self.n_planned
        state = _Replay(tallies={a["key"]: ArmTally() for a in self.arms},
                        weights={a["key"]: 1.0 / len(self.arms) for a in self.arms},
                        stop_reason=f"request budget reached ({n_planned:,})")
        t_loop = time.perf_counter()
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=self.console, transient=False) as bar, \
                ThreadPoolExecutor(max_workers=max(cfg.concurrency, 1)) as pool_ex:
            task = bar.add_task(_label(state), total=n_planned)
            for start in range(0, n_planned, cfg.cadence):
                if time.perf_counter() - t_loop > cfg.time_budget_s:
                    state.stop_reason = f"time budget reached ({cfg.time_budget_s:.0f} s)"
                    break
                chunk = self.requests[start:start + cfg.cadence]
                # concurrent requests: the batching scorer ranks them together
                answers = pool_ex.map(lambda r: self.serve(client, r), chunk)
                for req, (out, secs) in zip(chunk, answers, strict=True):
                    self.emit(req, out, state, secs)
                state.served += len(chunk)
                bar.update(task, completed=state.served)
                if state.served < n_planned:
                    self.sync(client, runner, state)
                    bar.update(task, description=_label(state))
                    if state.status != ExperimentStatus.RUNNING:
                        state.stop_reason = "the sequential test stopped the experiment"
                        break
            self.timings["replay_s"] = time.perf_counter() - t_loop
        # the last look sees every request: wait out the attribution window first (otherwise
        # the last second's users are still immature and the horizon is missed by a few)
        time.sleep(ATTRIBUTION_WINDOW_S + 0.2)
        self.sync(client, runner, state)
        self.timings["requests_per_s"] = state.served / max(self.timings["replay_s"], 1e-9)
        return state

    def ship(self, client: Any, state: _Replay) -> tuple[str | None, str]:
        """Ship the winner through the API (the registry's guard decides); (shipped, why)."""
        winner, why = choose_winner(state.seq, self.control)
        shipped: str | None = None
        resp = client.post(f"/v1/experiments/{self.key}/ship",
                           json={"arm": winner, "reason": f"armlab demo: {why}"})
        if resp.status_code < 400:
            shipped, state.status = winner, ExperimentStatus.SHIPPED
            run_allocation(self.services.allocation_store)  # the shipped snapshot, for the report
        else:
            why = f"not shipped: {resp.json().get('detail')}"
        final = _check(client.get(f"/v1/experiments/{self.key}/results"), "results")
        state.seq = final.get("sequential") or state.seq
        state.contextual = final.get("contextual")
        state.weights.update({a["key"]: float(a.get("weight", 0.0))
                              for a in final.get("arms", [])})
        return shipped, why

    def report(self, key: str | None = None) -> Path | None:
        try:
            return write_report(self.services.reports.collect(key or self.key),
                                self.cfg.report_dir)
        except ArmlabError as exc:
            self.console.print(f"[red]report failed:[/] {exc.message}")
            return None


def _label(state: _Replay) -> str:
    tallies = state.tallies
    best = max(tallies, key=lambda a: tallies[a].clicks / max(tallies[a].requests, 1))
    w = "  ".join(f"{a}={state.weights.get(a, 0):.2f}" for a in tallies)
    return f"weights {w} | best so far: [bold]{best}[/]"
