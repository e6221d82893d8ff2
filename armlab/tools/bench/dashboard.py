"""``armlab bench dashboard``: server time of the dashboard's experiment page and chart data,
from the rollups (what the pages read) against the same page computed from raw impressions.

Data (generated inside PostgreSQL with ``generate_series``, for one experiment that the run
registers and deletes again): ``arms`` arms, ``days`` days of traffic at ``rate`` events/s
aggregated into the consumer's rollups (one-minute and one-hour buckets) and ``arm_stats``,
``snapshots`` allocator snapshots with one decision row per treatment arm each, and, for the
baseline, ``raw_events`` raw impressions (the raw scan cannot hold 30 days of traffic at that
rate: 2.6 billion rows; the JSON says how much traffic the raw rows cover, and a linear
extrapolation of the baseline to the full traffic is labelled as such).

Server time: each request goes through the whole FastAPI application in process (routing,
session check, queries, template rendering, JSON), timed around the call: no network.
"""

from __future__ import annotations

import gc
import os
import re
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import text

from armlab.adapters.db import migrate
from armlab.adapters.db.engine import make_engine
from armlab.bootstrap import bootstrap
from armlab.core.clock import utcnow
from armlab.core.specs import ExperimentSpec
from armlab.errors import ConfigurationError, ServiceUnavailable
from armlab.services import registry
from armlab.settings import Settings

TARGET_P95_MS = 300.0
_TOKEN = "bench-dashboard-" + uuid.uuid4().hex


def _check_db(settings: Settings) -> None:
    if not settings.database_url.startswith("postgresql"):
        raise ConfigurationError(
            "bench dashboard needs PostgreSQL: set ARMLAB_DATABASE_URL=postgresql+psycopg://... "
            f"(got {settings.database_url.split('://')[0]}://...); `armlab dev up` starts one")
    try:
        with make_engine(settings.database_url).connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        raise ServiceUnavailable(
            f"cannot reach PostgreSQL at ARMLAB_DATABASE_URL ({type(exc).__name__})") from exc


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _summary(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(ms), 2), "p95_ms": round(_pct(ms, 0.95), 2),
            "max_ms": round(max(ms), 2), "n": len(ms)}


_ARM_STATS_SQL = (
    "INSERT INTO arm_stats (experiment_id, arm_key, partition, n, reward_sum, "
    "reward_sumsq, ipw_n, ipw_sum, ipw_sumsq, ipw_n_sq, feedback_n, updated_at) "
    "SELECT :eid, 'arm' || a, 0, (:per_s * :secs)::bigint, x.r, x.r, :per_s * :secs / :p, "
    "x.r / :p, x.r / (:p * :p), :per_s * :secs / (:p * :p), x.r::bigint, now() "
    "FROM generate_series(0, :arms - 1) a, "
    "LATERAL (SELECT :per_s * :secs * (0.05 + 0.002 * a) AS r) x")
_ROLLUPS_SQL = (
    "INSERT INTO arm_rollups (experiment_id, width_s, bucket_start, arm_key, "
    "partition, n, reward_sum, reward_sumsq, ipw_n, ipw_sum, ipw_sumsq, ipw_n_sq, "
    "feedback_n) "
    "SELECT :eid, :w, :t0 + make_interval(secs => g * :w), 'arm' || a, 0, "
    "(:per_s * :w)::bigint, r, r, :per_s * :w / :p, r / :p, r / (:p * :p), "
    ":per_s * :w / (:p * :p), r::bigint "
    "FROM generate_series(0, :b - 1) g, generate_series(0, :arms - 1) a, "
    "LATERAL (SELECT :per_s * :w * (0.05 + 0.002 * a) * (0.8 + 0.4 * random()) "
    "         AS r) x")
_SNAPSHOTS_SQL = (
    "INSERT INTO allocation_snapshots (experiment_id, created_at, policy_name, "
    "policy_version, weights, stats) "
    "SELECT :eid, :t0 + make_interval(secs => (g + 1) * :step), 'thompson', '1', "
    "(SELECT json_object_agg('arm' || a, 1.0 / :arms) "
    " FROM generate_series(0, :arms - 1) a), "
    "json_build_object('status', 'running', 'seed', g, "
    "  'prob_best', (SELECT json_agg(1.0 / :arms) FROM generate_series(0, :arms - 1) a), "
    "  'arms', (SELECT json_object_agg('arm' || a, json_build_object("
    "     'n', :per_s * (g + 1) * :step, "
    "     'matured_n', :per_s * (g + 1) * :step - :per_s * 3600, "
    "     'reward_sum', :per_s * (g + 1) * :step * 0.05)) "
    "   FROM generate_series(0, :arms - 1) a)) "
    "FROM generate_series(0, :n - 1) g")
_DECISIONS_SQL = (
    "INSERT INTO decisions (experiment_id, at, arm_key, decision, estimate, p_value, "
    "ci_low, ci_high, n_control, n_treatment, evidence) "
    "SELECT :eid, :t0 + make_interval(secs => (g + 1) * :step), 'arm' || a, 'continue', "
    "0.002 * a, 0.5, 0.002 * a - 1.0 / sqrt(g + 1), 0.002 * a + 1.0 / sqrt(g + 1), "
    ":per_s * (g + 1) * :step, :per_s * (g + 1) * :step, '{}'::json "
    "FROM generate_series(0, :n - 1) g, generate_series(1, :arms - 1) a")
_RAW_SQL = (
    "INSERT INTO impressions (impression_id, event_id, experiment_id, arm_key, "
    "unit_id, propensity, served_at, partition, reward, feedback_count, items, "
    "context) "
    "SELECT :prefix || g, :prefix || 'e' || g, :eid, 'arm' || (g % :arms), 'u' || g, "
    ":p, :now - make_interval(secs => (:n - g) / :rate), 0, "
    "CASE WHEN random() < 0.05 + 0.002 * (g % :arms) THEN 1 ELSE 0 END, 0, "
    "'[]'::json, '{}'::json FROM generate_series(1, :n) g")


def _register(services: Any, *, key: str, arms: int, days: float, start: datetime) -> int:
    """Create and start the experiment (``arms`` popularity arms), backdated to ``start``."""
    keys = [f"arm{i}" for i in range(arms)]
    spec = ExperimentSpec.model_validate({
        "key": key, "name": f"dashboard benchmark ({arms} arms, {days:g} days)",
        "policy": {"name": "thompson"}, "exploration_floor": 0.01,
        "arms": [{"key": k, "control": i == 0, "variant": {"kind": "popularity"}}
                 for i, k in enumerate(keys)],
    })
    with services.uow() as uow:
        exp = registry.create_experiment(uow, spec=spec, actor="bench")
        registry.start_experiment(uow, key=key, actor="bench", reason="benchmark data")
        exp.started_at = start
        uow.commit()
        return int(exp.id)


def _insert_rollups(conn: Any, params: dict[str, Any], total_s: float, arms: int) -> int:
    """The one-minute and one-hour buckets over the whole period; returns the rows written."""
    rollup_rows = 0
    for width in (60, 3600):
        buckets = int(total_s // width)
        conn.execute(text(_ROLLUPS_SQL), {**params, "w": width, "b": buckets})
        rollup_rows += buckets * arms
    return rollup_rows


def seed(engine: Any, settings: Settings, *, key: str, arms: int, days: float, rate: float,
         snapshots: int, raw_events: int) -> dict[str, Any]:
    """Register the experiment and fill its tables; returns what was written."""
    services = bootstrap(settings, engine=engine)
    now = utcnow().replace(microsecond=0)
    start = now - timedelta(days=days)
    eid = _register(services, key=key, arms=arms, days=days, start=start)
    total_s = days * 86400
    params = {"eid": eid, "t0": start, "arms": arms, "per_s": rate / arms, "p": 1.0 / arms}
    step = total_s / snapshots
    # Click rate of arm a: 0.05 + 0.002 a (a small, steady difference).
    with engine.begin() as conn:
        conn.execute(text(_ARM_STATS_SQL), {**params, "secs": total_s})
        rollup_rows = _insert_rollups(conn, params, total_s, arms)
        conn.execute(text(_SNAPSHOTS_SQL), {**params, "step": step, "n": snapshots})
        conn.execute(text(_DECISIONS_SQL), {**params, "step": step, "n": snapshots})
        if raw_events:
            conn.execute(text(_RAW_SQL), {**params, "prefix": f"{key}-", "now": now,
                                          "n": raw_events, "rate": rate})
        conn.execute(text("ANALYZE arm_rollups; ANALYZE allocation_snapshots; ANALYZE decisions;"
                          " ANALYZE impressions; ANALYZE arm_stats"))
    services.close()
    return {"experiment_id": eid, "arms": arms, "days": days, "rate_events_per_s": rate,
            "events_aggregated": int(rate * total_s), "rollup_rows": rollup_rows,
            "snapshots": snapshots, "decision_rows": snapshots * (arms - 1),
            "raw_impressions": raw_events,
            "raw_covers_fraction_of_traffic": raw_events / (rate * total_s)}


class _GcTimer:
    """Counts and times the garbage collector's full (generation 2) collections."""

    def __init__(self) -> None:
        self.full = 0
        self.full_ms = 0.0
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        elif info.get("generation") == 2:
            self.full += 1
            self.full_ms += (time.perf_counter() - self._t0) * 1e3


def _time_page(client: TestClient, key: str, source: str, requests: int, warmup: int
               ) -> dict[str, Any]:
    q = "" if source == "rollups" else "?source=raw"
    page_ms: list[float] = []
    chart_ms: list[float] = []
    timer = _GcTimer()
    gc.callbacks.append(timer)
    try:
        for i in range(warmup + requests):
            if i == warmup:
                timer.full, timer.full_ms = 0, 0.0
            t0 = time.perf_counter()
            r1 = client.get(f"/ui/experiments/{key}{q}")
            t1 = time.perf_counter()
            r2 = client.get(f"/ui/experiments/{key}/charts.json{q}")
            t2 = time.perf_counter()
            if r1.status_code != 200 or r2.status_code != 200:
                raise RuntimeError(f"{source}: HTTP {r1.status_code}/{r2.status_code}: "
                                   f"{(r1.text if r1.status_code != 200 else r2.text)[:300]}")
            if i >= warmup:
                page_ms.append((t1 - t0) * 1e3)
                chart_ms.append((t2 - t1) * 1e3)
    finally:
        gc.callbacks.remove(timer)
    both = [a + b for a, b in zip(page_ms, chart_ms, strict=True)]
    return {"page": _summary(page_ms), "charts": _summary(chart_ms),
            "page_plus_charts": _summary(both),
            "full_gc": {"collections": timer.full, "ms": round(timer.full_ms, 1)}}


def _sign_in(client: TestClient) -> None:
    """Sign in to the dashboard with the bench's admin token (CSRF token from the form)."""
    login = client.get("/ui/login")
    m = re.search(r'name="csrf" value="([^"]+)"', login.text)
    if m is None:
        raise RuntimeError("the sign-in page has no CSRF token")
    client.post("/ui/login", data={"token": _TOKEN, "csrf": m.group(1)})


def _result(data: dict[str, Any], rollups: dict[str, Any], raw: dict[str, Any],
            load_before: list[float], load_after: list[float], raw_events: int
            ) -> dict[str, Any]:
    """The JSON: both sources' timings, the target and the baseline ratios."""
    p95 = rollups["page_plus_charts"]["p95_ms"]
    raw_p95 = raw["page_plus_charts"]["p95_ms"]
    return {
        "bench": "dashboard",
        "data": data,
        "rollups": rollups,
        "raw_baseline": raw,
        "p95_ms": p95,
        "target_p95_ms": TARGET_P95_MS,
        "load_average_1_5_15": {"before_timing": load_before, "after": load_after},
        "meets_target": p95 <= TARGET_P95_MS,
        "baseline_over_rollups_p95": round(raw_p95 / p95, 2) if p95 else None,
        "raw_p95_extrapolated_to_full_traffic_ms": round(
            raw_p95 / data["raw_covers_fraction_of_traffic"]) if raw_events else None,
        "note": ("server time in process (FastAPI app, no network); page_plus_charts = the "
                 "experiment page and its charts.json; the raw baseline scans only "
                 "raw_impressions rows, a fraction of the aggregated traffic, so its ratio is a "
                 "lower bound; the extrapolation assumes a linear scan; full_gc = the garbage "
                 "collector's full collections during the timed requests (the API freezes its "
                 "start-up heap, ARMLAB_GC_FREEZE); the machine's load average is reported "
                 "because the timings are only as quiet as the machine"),
    }


def run_bench(
    settings: Settings, app_factory: Callable[[Settings], FastAPI], *, arms: int = 10,
    days: float = 30.0, rate: float = 1000.0, snapshots: int = 10_000,
    raw_events: int = 1_000_000, requests: int = 30, warmup: int = 3, keep: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Seed, time both sources, delete the experiment (unless ``keep``); returns the JSON."""
    _check_db(settings)
    say = progress or (lambda _m: None)
    migrate.upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    key = f"bench-dash-{uuid.uuid4().hex[:8]}"
    settings = settings.model_copy(update={
        "transport": "memory", "auth_disabled": False,
        "auth_tokens": SecretStr(f"bench:admin:{_TOKEN}"),
    })
    t0 = time.perf_counter()
    say(f"seeding {key}: {arms} arms, {days:g} days at {rate:g} events/s, {snapshots} "
        f"snapshots, {raw_events} raw impressions")
    try:
        data = seed(engine, settings, key=key, arms=arms, days=days, rate=rate,
                    snapshots=snapshots, raw_events=raw_events)
        data["seed_s"] = round(time.perf_counter() - t0, 1)
        load_before = [round(x, 2) for x in os.getloadavg()]
        with TestClient(app_factory(settings)) as client:
            _sign_in(client)
            say("timing the page from rollups")
            rollups = _time_page(client, key, "rollups", requests, warmup)
            say("timing the page from raw impressions (baseline)")
            raw = _time_page(client, key, "raw", requests, warmup)
    finally:
        if not keep:
            with engine.begin() as conn:
                conn.execute(text("DELETE FROM experiments WHERE key = :k"), {"k": key})
        engine.dispose()
    load_after = [round(x, 2) for x in os.getloadavg()]
    return _result(data, rollups, raw, load_before, load_after, raw_events)
