"""``armlab demo`` in two stages, the way ranking teams decide (see ``armlab demo --help``).

Stage 1 (:mod:`armlab.entrypoints.demo.interleaved`) multileaves the rankers over the first
part of the MovieLens replay and finds the ranker users prefer, analysed per user; stage 2
(:mod:`armlab.entrypoints.demo.adaptive`) runs the bandit A/B test of that ranker against the
popularity control over the rest of the replay, ``unit: user`` with the guardrail, and reports
the click rate per user with its always-valid interval, or says plainly that the data cannot
show a difference. ``stages="interleave"`` runs stage 1 alone; ``stages="ab"`` the A/B test of
every arm alone.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from fastapi.testclient import TestClient
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from armlab.adapters.scoring.checkpoints import set_cpu_threads
from armlab.bootstrap import make_settings, open_services
from armlab.entrypoints.api.app import create_app
from armlab.entrypoints.demo.adaptive import (
    DemoConfig,
    DemoRequest,
    DemoResult,
    _console,
    _DemoRun,
)
from armlab.entrypoints.demo.interleaved import InterleavingStage, StageOne, print_stage_one
from armlab.entrypoints.demo.summary import print_summary

__all__ = ["run_demo"]


def run_demo(cfg: DemoConfig) -> DemoResult:
    """Run the whole demo, both stages; returns what it printed (for tests)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    set_cpu_threads(cfg.threads)
    console = _console(cfg.quiet)
    t_all = time.perf_counter()
    settings = cfg.settings or make_settings(cfg.stack, auth_disabled=True)
    if not settings.auth_disabled:
        settings = settings.model_copy(update={"auth_disabled": True})
    services = open_services(settings, assigner_seed=cfg.seed)
    try:
        run = _DemoRun(cfg, console, services, settings)
        run.load_data()
        run.design()
        first = run.split()
        runner = services.ingest_runner()
        with TestClient(create_app(settings, services)) as client:
            run.warm_models()
            stage1 = _stage_one(run, client, runner, first) if first else None
            result = _stage_two(run, client, runner, stage1)
        runner.close()
        if result.status != "skipped":
            result.report_path = run.report()
        run.timings["total_s"] = time.perf_counter() - t_all
        result.seconds = run.timings
        print_summary(console, result, control=run.control, why=result.why)
        return result
    finally:
        services.close()


def _stage_one(run: _DemoRun, client: Any, runner: Any, requests: list[DemoRequest]
               ) -> StageOne:
    """Interleave every ranker over ``requests``; print and return what it found."""
    cfg = run.cfg
    key = run.key[:57] + "-stage1"
    stage = InterleavingStage(run, requests, key=key, budget_s=cfg.stage1_budget_s,
                              rankers_per_request=cfg.rankers_per_request)
    stage.register(client)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=run.console, transient=False) as bar, \
            ThreadPoolExecutor(max_workers=max(cfg.concurrency, 1)) as pool_ex:
        found = stage.replay(client, runner, pool_ex, bar)
    run.timings["stage1_s"] = found.seconds
    print_stage_one(run.console, found)
    found.report_path = run.report(found.key)
    if found.report_path:
        run.console.print(f"stage 1 report: [bold]{found.report_path}[/]")
    # stage 2 continues where stage 1 stopped: the requests stage 1 did not serve are its too
    run.requests = requests[found.requests:] + run.requests
    run.n_planned = len(run.requests)
    return found


def _stage_two(run: _DemoRun, client: Any, runner: Any, stage1: StageOne | None
               ) -> DemoResult:
    """The A/B test (unit: user) of stage 1's preferred ranker against the control (every
    arm without stage 1); skipped when the control is preferred or no requests are left."""
    skip = None
    if stage1 is not None:
        if stage1.preferred is None or stage1.preferred == run.control:
            skip = (f"stage 1 prefers the control ({run.control}): nothing to A/B test"
                    if stage1.preferred == run.control else "stage 1 found no ranker to test")
        else:
            run.narrow(stage1.preferred)
    if not run.requests and skip is None:
        skip = "no requests left for stage 2"
    if skip is not None:
        return DemoResult(key=run.key, requests=0, stop_reason=skip, shipped=None,
                          status="skipped", tallies={}, weights={}, sequential=None,
                          report_path=None, stage_one=stage1, why=skip)
    if stage1 is not None:  # both stages share the time budget
        left = max(run.cfg.time_budget_s - stage1.seconds, 30.0)
        run.cfg = replace(run.cfg, time_budget_s=left)
        run.cuped = True  # stage 1's users are stage 2's pre-period
    run.console.print("[bold]Stage 2[/]: A/B test, unit user, of "
                      + " vs ".join(a["key"] for a in run.arms))
    run.register(client)
    state = run.replay(client, runner)
    shipped, why = run.ship(client, state)
    return DemoResult(key=run.key, requests=state.served, stop_reason=state.stop_reason,
                      shipped=shipped, status=state.status, tallies=state.tallies,
                      weights=state.weights, sequential=state.seq, report_path=None,
                      stage_one=stage1, why=why, contextual=state.contextual)



