"""``armlab bench contextual-scan``: the allocator's read of a contextual experiment's matured
impressions, grouped by the declared features inside PostgreSQL, against the per-impression
stream it replaced (every row's JSON context decoded in Python and tallied), same data, same
run.

Data (generated inside PostgreSQL with ``generate_series`` for one experiment that the run
registers and deletes again): ``impressions`` impressions over ``arms`` arms, each context an
object with the two declared categorical features (``device``: 3 levels, ``history``: 3
levels) and two undeclared fields (a user id and a page), as clients send them. Each path
runs ``repeats`` times; the best time counts (the first run also warms the cache for the
second path). Both paths must give the same tallies, or the run fails.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import text

from armlab.adapters.db import migrate
from armlab.adapters.db.contextual_queries import matured_context_sums
from armlab.adapters.db.engine import make_engine, make_session_factory
from armlab.bootstrap import bootstrap
from armlab.core.clock import utcnow
from armlab.core.policies.context_features import ContextParams, ContextSpec
from armlab.errors import ServiceUnavailable
from armlab.services.contextual_allocation import tally
from armlab.settings import Settings
from armlab.tools.bench.dashboard import _check_db, _register

FEATURES: list[dict[str, Any]] = [
    {"name": "device", "kind": "categorical", "levels": ["mobile", "desktop", "tablet"]},
    {"name": "history", "kind": "categorical", "levels": ["new", "light", "heavy"]}]
_RAW_SQL = (
    "INSERT INTO impressions (impression_id, event_id, experiment_id, arm_key, unit_id, "
    "propensity, served_at, partition, reward, feedback_count, items, context) "
    "SELECT :prefix || g, :prefix || 'e' || g, :eid, 'arm' || (g % :arms), 'u' || (g / 20), "
    "0.5, :t0 + make_interval(secs => g / 100.0), 0, "
    "CASE WHEN random() < 0.05 THEN 1 ELSE 0 END, 0, '[]'::json, "
    "json_build_object('device', (ARRAY['mobile', 'desktop', 'tablet'])[1 + (g / 3) % 3], "
    "'history', (ARRAY['new', 'light', 'heavy'])[1 + (g / 7) % 3], 'user', 'u' || (g / 20), "
    "'page', 'home') FROM generate_series(1, :n) g")


def _best(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def run_scan_bench(settings: Settings, *, impressions: int = 1_000_000, arms: int = 3,
                   repeats: int = 3, progress: Callable[[str], None] | None = None
                   ) -> dict[str, Any]:
    """Seed, time both reads, delete the experiment; returns the JSON."""
    _check_db(settings)
    say = progress or (lambda _m: None)
    migrate.upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    sf = make_session_factory(engine)
    key = f"bench-ctx-scan-{uuid.uuid4().hex[:8]}"
    start = utcnow().replace(microsecond=0) - timedelta(days=30)
    spec = ContextSpec(ContextParams(features=FEATURES).features)
    names = [str(f["name"]) for f in FEATURES]
    keys = [f"arm{i}" for i in range(arms)]
    try:
        services = bootstrap(settings.model_copy(update={"transport": "memory"}), engine=engine)
        eid = _register(services, key=key, arms=arms, days=30.0, start=start)
        services.close()
        say(f"seeding {key}: {impressions} impressions over {arms} arms")
        t0 = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(text(_RAW_SQL), {"prefix": f"{key}-", "eid": eid, "arms": arms,
                                          "t0": start, "n": impressions})
            conn.execute(text("ANALYZE impressions"))
        seed_s = time.perf_counter() - t0
        cutoff = utcnow()

        def read(in_database: bool) -> Any:
            with sf() as session:
                return tally(matured_context_sums(session, eid, cutoff, keys, names,
                                                  in_database=in_database), keys, spec)

        say("timing the per-impression stream (baseline)")
        streamed_s, streamed = _best(lambda: read(False), repeats)
        say("timing the grouped read")
        grouped_s, grouped = _best(lambda: read(True), repeats)
    finally:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM experiments WHERE key = :k"), {"k": key})
        engine.dispose()
    if grouped != streamed:
        raise ServiceUnavailable("the grouped read and the stream disagree: not timed")
    rows = sum(int(c[0]) for c in grouped[0].values())
    return {
        "bench": "contextual_scan", "impressions": impressions, "arms": arms,
        "features": names, "repeats": repeats, "seed_s": round(seed_s, 1),
        "tallied_impressions": rows, "groups": len(grouped[0]),
        "grouped_s": round(grouped_s, 4), "streamed_baseline_s": round(streamed_s, 4),
        "speedup": round(streamed_s / grouped_s, 1) if grouped_s > 0 else None,
        "same_tallies": True,
    }


__all__ = ["run_scan_bench"]
