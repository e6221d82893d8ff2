"""Stage 1 of ``armlab demo``: multileave the rankers and find the one users prefer.

The way ranking teams work: a fast interleaved comparison first, then an A/B test of the
preferred ranker against the control (stage 2, :mod:`armlab.entrypoints.demo.adaptive`).

An interleaving experiment (``design: interleaving``, ``unit: user``) is registered and
started through the API. Each replayed request goes through ``/recommend``, which merges the
rankers' lists by team-draft multileaving (the dueling bandit picks three of them per request
with ``--full``) and returns the team of every shown item; the impression carries that log and
every shown movie the user went on to like is a click naming its item, so the consumer credits
it to the ranker that placed it. The allocator's look tests every pair of rankers on the
users' mean credit differences (always valid, Holm across pairs) and stops the experiment
when one ranker is shown better than every other (the Condorcet winner).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from rich.table import Table

from armlab.core.status import ExperimentStatus
from armlab.entrypoints.demo.common import check as _check
from armlab.services.allocator import run_allocation

STAGE1_MIN_UNITS = 30


@dataclass
class RankerTally:
    shown: int = 0  # items of this ranker's team shown
    clicks: int = 0  # clicks on them


@dataclass
class StageOne:
    """What stage 1 found: the experiment, the requests it used, the last results and the
    preferred ranker (the decided Condorcet winner, else the best-estimated one)."""

    key: str
    requests: int = 0
    users: int = 0
    stop_reason: str = ""
    status: str = ExperimentStatus.RUNNING
    results: dict[str, Any] = field(default_factory=dict)
    tallies: dict[str, RankerTally] = field(default_factory=dict)
    preferred: str | None = None
    decided: bool = False
    why: str = ""
    seconds: float = 0.0
    report_path: Path | None = None


def stage_one_spec(key: str, arms: list[dict[str, Any]], *, k: int, n_users: int,
                   rankers_per_request: int | None) -> dict[str, Any]:
    """The interleaving experiment's registration body."""
    inter: dict[str, Any] = {"planned_units": max(n_users, STAGE1_MIN_UNITS + 1),
                             "min_units": STAGE1_MIN_UNITS, "stop_on": "condorcet"}
    if rankers_per_request is not None and rankers_per_request < len(arms):
        inter["rankers_per_request"] = rankers_per_request
    return {
        "key": key,
        "name": "MovieLens-100k stage 1: which ranker do users prefer? (interleaving)",
        "description": (f"armlab demo, stage 1: the rankers' top-{k} lists merged by "
                        "team-draft multileaving; a click (a shown movie the user rated >= 4 "
                        "soon after) is credited to the ranker that placed it; per-user "
                        "preferences tested per pair of rankers."),
        "design": "interleaving",
        "unit": "user",
        "reward": {"kind": "binary", "metric": "click"},
        "attribution_window_s": 1,
        "sequential": {"alpha": 0.05, "auto_stop": True},
        "arms": arms,
        "interleaving": inter,
    }


def preferred_ranker(results: dict[str, Any]) -> tuple[str | None, bool, str]:
    """(ranker, decided, why) from the results' interleaving block."""
    block = results.get("interleaving") or {}
    winner = block.get("condorcet_winner")
    if winner:
        return str(winner), True, (f"{winner} is preferred to every other ranker (Holm-"
                                   "adjusted always-valid p <= alpha on every pair)")
    pairs = block.get("pairs") or []
    rankers = [str(r) for r in block.get("rankers") or []]
    if not pairs or not rankers:
        return None, False, "no interleaving evidence recorded"
    score = dict.fromkeys(rankers, 0.0)
    for p in pairs:
        est = float(p.get("estimate") or 0.0)
        score[str(p["a"])] += est
        score[str(p["b"])] -= est
    best = max(rankers, key=lambda r: score[r])
    return best, False, (f"no ranker was shown better than every other within the budget; "
                         f"{best} has the best mean preference (not decided)")


class InterleavingStage:
    """Stage 1 on a demo run's services, console, catalogue and requests (``run`` is the
    :class:`armlab.entrypoints.demo.adaptive._DemoRun`)."""

    def __init__(self, run: Any, requests: list[Any], *, key: str, budget_s: float,
                 rankers_per_request: int | None) -> None:
        self.run, self.requests, self.budget_s = run, requests, budget_s
        self.cfg, self.services, self.console = run.cfg, run.services, run.console
        self.rankers_per_request = rankers_per_request
        self.result = StageOne(key=key, tallies={a["key"]: RankerTally() for a in run.arms})

    def register(self, client: Any) -> None:
        users = len({r.user for r in self.requests})
        spec = stage_one_spec(self.result.key, self.run.arms, k=self.cfg.k, n_users=users,
                              rankers_per_request=self.rankers_per_request)
        _check(client.post("/v1/experiments", json=spec), "registering stage 1")
        _check(client.post(f"/v1/experiments/{self.result.key}/start",
                           json={"reason": "armlab demo, stage 1"}), "starting stage 1")
        run_allocation(self.services.allocation_store)
        self.services.assigner.refresh()
        self.console.print(f"[bold]Stage 1[/]: interleaving [bold]{self.result.key}[/] "
                           f"(unit: user) with rankers "
                           + ", ".join(a["key"] for a in self.run.arms))

    def emit(self, req: Any, out: dict[str, Any]) -> None:
        """The interleaved impression and one click per shown movie the user liked."""
        producer, key = self.services.producer, self.result.key
        items = [x["item_id"] for x in out["items"]]
        log = out.get("interleaving")
        served_at = datetime.fromisoformat(out["served_at"])
        producer.send_impression(
            experiment_key=key, arm_key=out["arm"], unit_id=f"user-{req.user}",
            propensity=float(out["propensity"]), impression_id=out["impression_id"],
            served_at=served_at, items=items, context={"movielens_time": req.t},
            interleaving=log)
        teams = (log or {}).get("teams") or [out["arm"]] * len(items)
        for item, team in zip(items, teams, strict=True):
            tal = self.result.tallies.setdefault(team, RankerTally())
            tal.shown += 1
            if item in req.positives:
                tal.clicks += 1
                producer.send_feedback(
                    impression_id=out["impression_id"], experiment_key=key, kind="click",
                    value=1.0, occurred_at=served_at + timedelta(milliseconds=50),
                    item_id=item)

    def sync(self, client: Any, runner: Any) -> None:
        self.services.producer.flush()
        runner.drain() if self.run.memory else runner.run(exit_when_idle=1.0)
        run_allocation(self.services.allocation_store)
        self.services.assigner.refresh()
        res = _check(client.get(f"/v1/experiments/{self.result.key}/results"), "results")
        self.result.results, self.result.status = res, str(res.get("status"))

    def replay(self, client: Any, runner: Any, pool_ex: Any, progress: Any) -> StageOne:
        """Serve the requests ``cadence`` at a time until the test stops the experiment or
        the stage's requests or time run out; then the preferred ranker."""
        cfg, res = self.cfg, self.result
        res.stop_reason = f"stage 1 request budget reached ({len(self.requests):,})"
        task = progress.add_task("stage 1: interleaving", total=len(self.requests))
        t0 = time.perf_counter()
        seen_users: set[str] = set()
        for start in range(0, len(self.requests), cfg.cadence):
            if time.perf_counter() - t0 > self.budget_s:
                res.stop_reason = f"stage 1 time budget reached ({self.budget_s:.0f} s)"
                break
            chunk = self.requests[start:start + cfg.cadence]
            answers = pool_ex.map(lambda r: self.run.serve(client, r, key=res.key), chunk)
            for req, (out, _secs) in zip(chunk, answers, strict=True):
                self.emit(req, out)
                seen_users.add(req.user)
            res.requests += len(chunk)
            self.sync(client, runner)
            progress.update(task, completed=res.requests, description=self._label())
            if res.status != ExperimentStatus.RUNNING:
                res.stop_reason = "the interleaving test found a preferred ranker"
                break
        res.users = len(seen_users)
        res.seconds = time.perf_counter() - t0
        res.preferred, res.decided, res.why = preferred_ranker(res.results)
        if res.status == ExperimentStatus.RUNNING:  # close stage 1: the evidence stays as recorded
            client.post(f"/v1/experiments/{res.key}/stop",
                        json={"reason": f"armlab demo: stage 1 over ({res.stop_reason})"})
        return res

    def _label(self) -> str:
        block = self.result.results.get("interleaving") or {}
        n = max((float(p.get("n_units") or 0) for p in block.get("pairs") or []), default=0)
        return f"stage 1: interleaving, {n:.0f} users analysed"


def print_stage_one(console: Any, s: StageOne) -> None:
    """Per pair: users, mean preference with its confidence sequence, p, decision; then
    per ranker its shown items and clicks; then the verdict."""
    block = s.results.get("interleaving") or {}
    t = Table(title=f"Stage 1 ({s.key}): {s.requests:,} requests from {s.users:,} users, "
                    f"stopped because {s.stop_reason}")
    for col in ("pair", "users", "preference per user [CS]", "win rate", "Holm p",
                "decision"):
        t.add_column(col, justify="left" if col in ("pair", "decision") else "right")
    for p in block.get("pairs") or []:
        lo, hi = p.get("ci_low"), p.get("ci_high")
        cs = (f"{p.get('estimate') or 0:+.3f} [{lo if lo is not None else float('-inf'):+.3f}, "
              f"{hi if hi is not None else float('inf'):+.3f}]")
        wins = int(p.get("a_wins") or 0) + int(p.get("b_wins") or 0)
        rate = f"{int(p.get('a_wins') or 0) / wins:.2f}" if wins else "—"
        t.add_row(f"{p['a']} vs {p['b']}", f"{float(p.get('n_units') or 0):,.0f}", cs, rate,
                  f"{float(p.get('p_adjusted') or 1.0):.3g}",
                  f"{p['winner']} better" if p.get("winner") else "undecided")
    console.print(t)
    shares = "  ".join(f"{r}: {tal.clicks:,} clicks on {tal.shown:,} shown"
                       for r, tal in s.tallies.items() if tal.shown)
    console.print(f"credited clicks per ranker: {shares}")
    colour = "green" if s.decided else "yellow"
    console.print(f"[bold {colour}]stage 1:[/] {s.why}")
