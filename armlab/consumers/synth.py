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
    feedback of a random kind, some ``late_fraction`` outside the attribution window."""
    rng = random.Random(seed)
    t0 = t0 or datetime(2026, 1, 1, tzinfo=UTC)
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
