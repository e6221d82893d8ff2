"""``armlab bench assign --contextual``: a contextual ``/assign`` beside today's non-contextual
fast path, on one API server, in one run.

One database gets three running experiments with three arms each: ``thompson`` (today's
non-contextual path), ``segment_thompson`` on two categorical features (device x country, 24
segments) and ``linear_thompson`` on those one-hot features and one numeric feature (``age``).
Each contextual experiment gets a snapshot the platform's own code computed
(:func:`~armlab.core.policies.make_contextual_policy` on synthetic statistics, stored with
:func:`~armlab.core.policies.contextual_snapshot.allocation_to_dict`, exactly the allocator's
block). One API process (uvicorn, one worker, auth on, the ASGI fast path) serves them all; one
load process per measurement drives ``/assign`` in turn:

* ``baseline``: the non-contextual experiment, requests without a context (today's figure);
* ``baseline_with_context``: the same experiment, with the contextual requests' bodies (what
  the context costs to parse and validate, without a policy reading it);
* ``segment``: segment_thompson, contexts cycling over the 24 segments;
* ``linear``: linear_thompson, a distinct numeric age in every request (each one a cache miss:
  the quadrature runs per request; the worst case of the linear policy);
* ``linear_repeated``: linear_thompson with the segment run's contexts (a fixed age: 24 distinct
  design vectors, served from the per-snapshot cache after their first request).

After a warm-up of each, the five run in ``rounds`` interleaved rounds (a drift of the machine
hits them all alike); each figure is the median over the rounds. ``ratio_p50`` / ``ratio_p99``
/ ``ratio_throughput``: over the baseline (the target is a latency ratio <= 2).
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from armlab.adapters.db import migrate
from armlab.adapters.db.models import AllocationSnapshot
from armlab.adapters.db.uow import UnitOfWork
from armlab.bootstrap import bootstrap
from armlab.core.policies import make_contextual_policy
from armlab.core.policies.contextual import SegmentStats, SegmentThompson
from armlab.core.policies.contextual_snapshot import allocation_to_dict
from armlab.core.policies.linear_thompson import LinearStats, LinearThompson
from armlab.core.specs import ExperimentSpec
from armlab.services import registry
from armlab.settings import Settings
from armlab.tools.bench.assign import api_server, run_load

ARMS = ("control", "a", "b")
DEVICES = ("mobile", "desktop", "tablet")
COUNTRIES = ("us", "de", "fr", "jp", "br")
CATEGORICAL = [
    {"name": "device", "kind": "categorical", "levels": list(DEVICES)},
    {"name": "country", "kind": "categorical", "levels": list(COUNTRIES)},
]
AGE = {"name": "age", "kind": "numeric", "center": 40, "scale": 12}
POLICIES: dict[str, tuple[str, dict[str, Any]]] = {
    "plain": ("thompson", {}),
    "segment": ("segment_thompson", {"features": CATEGORICAL, "min_segment_n": 100}),
    "linear": ("linear_thompson", {"features": [*CATEGORICAL, AGE]}),
}


def _synthetic_block(name: str, params: dict[str, Any], rng: np.random.Generator
                     ) -> dict[str, Any]:
    """The contextual block of a snapshot learned on 20,000 synthetic observations."""
    policy = make_contextual_policy(name, params, floor=0.02)
    n_obs = 20_000
    contexts = [{"device": DEVICES[int(rng.integers(3))],
                 "country": COUNTRIES[int(rng.integers(5))],
                 "age": float(rng.uniform(18, 70))} for _ in range(n_obs)]
    arms = rng.integers(len(ARMS), size=n_obs)
    rewards = (rng.random(n_obs) < 0.05 + 0.03 * arms).astype(float)
    if isinstance(policy, SegmentThompson):
        stats = policy.update(SegmentStats.empty(policy.spec.n_segments, len(ARMS)), contexts,
                             arms, rewards)
        return allocation_to_dict(policy.allocate(stats, rng), ARMS)
    assert isinstance(policy, LinearThompson)
    lin = policy.update(LinearStats.empty(len(ARMS), policy.spec.dim), contexts, arms, rewards)
    return allocation_to_dict(policy.allocate(lin), ARMS)


def _prepare(url: str) -> dict[str, str]:
    """The three experiments with their snapshots; their keys by role."""
    migrate.upgrade(url)
    svc = bootstrap(Settings(database_url=url))
    rng = np.random.default_rng(23)
    keys: dict[str, str] = {}
    try:
        for role, (name, params) in POLICIES.items():
            key = f"bench-ctx-{role}-{secrets.token_hex(3)}"
            spec = ExperimentSpec.model_validate({
                "key": key, "exploration_floor": 0.02,
                "policy": {"name": name, "params": params},
                "arms": [{"key": a, "control": a == "control", "variant": {"kind": "popularity"}}
                         for a in ARMS]})
            stats = ({} if role == "plain"
                     else {"contextual": _synthetic_block(name, params, rng)})
            with UnitOfWork(svc.session_factory) as uow:
                exp = registry.create_experiment(uow, spec=spec, actor="bench")
                registry.start_experiment(uow, key=key, actor="bench")
                uow.flush()
                uow.session.add(AllocationSnapshot(
                    experiment_id=exp.id, policy_name=name, policy_version="1",
                    weights={"control": 0.2, "a": 0.5, "b": 0.3}, stats=stats))
                uow.commit()
            keys[role] = key
    finally:
        svc.close()
    return keys


def _contexts(path: Path, n: int, rng: np.random.Generator, distinct_age: bool) -> str:
    """A contexts file for the load process: every segment in turn; with ``distinct_age`` a
    different age in each of the ``n`` requests."""
    rows = [{"device": DEVICES[i % 3], "country": COUNTRIES[(i // 3) % 5],
             "age": round(float(rng.uniform(18, 70)), 6) if distinct_age else 35}
            for i in range(n if distinct_age else 30)]
    path.write_text(json.dumps(rows))
    return str(path)


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per figure, the median over the rounds (and the rounds' values)."""
    out: dict[str, Any] = {}
    for f in ("requests_per_s", "p50_ms", "p90_ms", "p99_ms"):
        vals = [float(r[f]) for r in runs if r.get(f) is not None]
        out[f] = round(float(np.median(vals)), 3) if vals else None
        out[f"{f}_rounds"] = vals
    out["requests"] = sum(int(r.get("requests", 0)) for r in runs)
    out["errors"] = sum(int(r.get("errors", 0)) for r in runs)
    return out


def _ratios(contextual: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float | None]:
    def ratio(a: Any, b: Any) -> float | None:
        return round(float(a) / float(b), 2) if a and b else None

    return {"ratio_p50": ratio(contextual.get("p50_ms"), baseline.get("p50_ms")),
            "ratio_p99": ratio(contextual.get("p99_ms"), baseline.get("p99_ms")),
            "ratio_throughput": ratio(contextual.get("requests_per_s"),
                                      baseline.get("requests_per_s"))}


def run_contextual_assign_bench(*, requests: int = 20_000, concurrency: int = 8,
                                max_seconds: float = 30.0, rounds: int = 3) -> dict[str, Any]:
    env_url = os.environ.get("ARMLAB_DATABASE_URL", "")
    tmp = Path(tempfile.mkdtemp(prefix="armlab-bench-assign-ctx-"))
    url = env_url if env_url.startswith("postgresql") else f"sqlite:///{tmp / 'bench.db'}"
    keys = _prepare(url)
    token = secrets.token_hex(16)
    rng = np.random.default_rng(5)
    cats = _contexts(tmp / "segments.json", requests, rng, distinct_age=False)
    ages = _contexts(tmp / "ages.json", requests + 8 * concurrency, rng, distinct_age=True)
    plan: dict[str, tuple[str, str | None]] = {
        "baseline": (keys["plain"], None), "baseline_with_context": (keys["plain"], cats),
        "segment": (keys["segment"], cats), "linear": (keys["linear"], ages),
        "linear_repeated": (keys["linear"], cats)}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in plan}
    with api_server(url, keys["plain"], token) as base:
        for key, contexts in plan.values():  # warm-up: every experiment cached, code paths hot
            run_load(base, key, token, min(requests, 2000), concurrency, max_seconds,
                     "request", contexts=contexts)
        for _ in range(rounds):  # interleaved rounds: a drift of the machine hits them all
            for name, (key, contexts) in plan.items():
                runs[name].append(run_load(base, key, token, requests, concurrency,
                                           max_seconds, "request", contexts=contexts))
    out: dict[str, Any] = {name: _median(r) for name, r in runs.items()}
    for name in ("segment", "linear", "linear_repeated", "baseline_with_context"):
        out[name].update(_ratios(out[name], out["baseline"]))
    out.update({
        "benchmark": "assign --contextual",
        "database": "postgresql" if url.startswith("postgresql") else "sqlite",
        "server": "uvicorn 1 worker (uvloop, httptools), auth on, ASGI fast path, separate "
                  "process; all measurements on the same server, interleaved rounds, medians",
        "client": f"minimal HTTP/1.1 keep-alive client, {concurrency} connections, separate "
                  "process",
        "rounds": rounds, "requests_per_round": requests,
        "arms": len(ARMS), "segments": (len(DEVICES) + 1) * (len(COUNTRIES) + 1),
        "target": "contextual latency (p50, p99) <= 2 x baseline",
    })
    return out


__all__ = ["run_contextual_assign_bench"]
