"""Synthetic impression/feedback streams for benchmarks and reliability tests.

Propensities are powers of two and rewards are small multiples of 0.5, so every sum the
consumers compute is exact in binary floating point whatever the order of additions: tests
can compare statistics with ``==``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson

PROPENSITIES = (1.0, 0.5, 0.25, 0.125)


@dataclass(frozen=True, slots=True)
class SynthEvent:
    kind: str  # "impression" | "feedback"
    key: bytes
    value: bytes
    fields: dict[str, object]


def synthetic_events(
    n: int,
    *,
    experiment_key: str,
    arms: Sequence[str],
    seed: int = 0,
    feedback_ratio: float = 0.5,
    t0: datetime | None = None,
    id_prefix: str = "",
    kinds: Sequence[str] = ("click",),
    late_fraction: float = 0.0,
    window_s: float = 3600.0,
) -> Iterator[SynthEvent]:
    """About ``n`` events: impressions, each followed (with prob. ``feedback_ratio``) by one
    feedback of a random kind, some ``late_fraction`` outside the attribution window. The
    first impression is served at ``t0``, by default midnight UTC two days ago: recent, so a
    consumer with a retention setting (``ARMLAB_RETENTION_DAYS``) keeps the stream, and the
    same on every call made on one day."""
    rng = random.Random(seed)
    if t0 is None:
        now = datetime.now(UTC)
        t0 = datetime(now.year, now.month, now.day, tzinfo=UTC) - timedelta(days=2)
    produced = 0
    i = 0
    while produced < n:
        imp_id = f"{id_prefix}i{i}"
        served = t0 + timedelta(seconds=i)
        fields: dict[str, object] = {
            "schema": "impression.v1",
            "event_id": f"{id_prefix}ie{i}",
            "impression_id": imp_id,
            "experiment_key": experiment_key,
            "arm_key": rng.choice(arms),
            "unit_id": f"u{rng.randrange(10_000)}",
            "propensity": rng.choice(PROPENSITIES),
            "served_at": served.isoformat(),
            "items": [f"m{rng.randrange(1682)}" for _ in range(3)],
            "context": {"page": "home"},
        }
        yield SynthEvent("impression", imp_id.encode(), orjson.dumps(fields), fields)
        produced += 1
        if produced < n and rng.random() < feedback_ratio:
            late = rng.random() < late_fraction
            delay = window_s + 10 if late else rng.randrange(1, int(window_s))
            fb: dict[str, object] = {
                "schema": "feedback.v1",
                "event_id": f"{id_prefix}fe{i}",
                "impression_id": imp_id,
                "experiment_key": experiment_key,
                "kind": rng.choice(kinds),
                "value": rng.choice((0.0, 0.5, 1.0, 1.5, 2.0)),
                "occurred_at": (served + timedelta(seconds=delay)).isoformat(),
            }
            yield SynthEvent("feedback", imp_id.encode(), orjson.dumps(fb), fb)
            produced += 1
        i += 1


def expected_stats(
    events: Sequence[dict[str, object]],
    *,
    reward_kind: str = "binary",
    metric: str = "click",
    window_s: float = 3600.0,
) -> dict[str, dict[str, float]]:
    """Per-arm statistics computed directly from produced event dicts (a reference that
    shares no code with the consumers): dedupe by event_id, join, window, reward rule."""
    imps: dict[str, dict[str, object]] = {}
    seen: set[str] = set()
    fbs: list[dict[str, object]] = []
    for ev in events:
        if str(ev["event_id"]) in seen:
            continue
        seen.add(str(ev["event_id"]))
        if ev["schema"] == "impression.v1":
            imps.setdefault(str(ev["impression_id"]), ev)
        else:
            fbs.append(ev)
    reward: dict[str, float] = dict.fromkeys(imps, 0.0)
    fb_n: dict[str, int] = {}
    for fb in fbs:
        imp = imps.get(str(fb["impression_id"]))
        if imp is None or fb["kind"] != metric:
            continue
        dt = (datetime.fromisoformat(str(fb["occurred_at"]))
              - datetime.fromisoformat(str(imp["served_at"]))).total_seconds()
        if not 0 <= dt <= window_s:
            continue
        iid = str(fb["impression_id"])
        v = float(fb["value"])  # type: ignore[arg-type]
        if reward_kind == "binary":
            reward[iid] = 1.0 if (v > 0 or reward[iid] >= 1) else reward[iid]
        else:
            reward[iid] += v
        arm = str(imp["arm_key"])
        fb_n[arm] = fb_n.get(arm, 0) + 1
    out: dict[str, dict[str, float]] = {}
    for iid, imp in imps.items():
        arm = str(imp["arm_key"])
        p = float(imp["propensity"])  # type: ignore[arg-type]
        r = reward[iid]
        acc = out.setdefault(arm, dict.fromkeys(
            ("n", "reward_sum", "reward_sumsq", "ipw_n", "ipw_sum", "ipw_sumsq", "ipw_n_sq",
             "feedback_n"), 0.0))
        acc["n"] += 1
        acc["reward_sum"] += r
        acc["reward_sumsq"] += r * r
        acc["ipw_n"] += 1 / p
        acc["ipw_sum"] += r / p
        acc["ipw_sumsq"] += r * r / (p * p)
        acc["ipw_n_sq"] += 1 / (p * p)
    for arm, n in fb_n.items():
        out[arm]["feedback_n"] = float(n)
    return out
