"""The per-arm sufficient statistics: one named type from ingestion to the statistics.

Ingestion adds to an :class:`ArmSums` per (experiment, arm, partition) and stores its fields as
the ``arm_stats`` columns of the same names; the totals query sums those rows back into one
:class:`ArmSums` per arm; the sequential test, the SRM check and the results read it.

Fields (p = the logged propensity of the impression, r = its attributed reward)::

    n             number of impressions          reward_sum    sum r
    reward_sumsq  sum r^2                        ipw_n         sum 1/p
    ipw_sum       sum r/p                        ipw_sumsq     sum r^2/p^2
    ipw_n_sq      sum 1/p^2                      feedback_n    feedback events applied

The inverse-propensity-weighted sums (Horvitz & Thompson 1952) are what keep the sequential
test valid while a bandit moves traffic (see :mod:`armlab.core.stats.adaptive`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

from armlab.errors import StatsError


@dataclass(slots=True)
class ArmSums:
    """Sufficient statistics of one arm (see the module doc). Mutable: ingestion adds to it."""

    n: float = 0.0
    reward_sum: float = 0.0
    reward_sumsq: float = 0.0
    ipw_n: float = 0.0
    ipw_sum: float = 0.0
    ipw_sumsq: float = 0.0
    ipw_n_sq: float = 0.0
    feedback_n: float = 0.0

    def __post_init__(self) -> None:
        for name in FIELDS:
            value = getattr(self, name)
            if value is None or not math.isfinite(float(value)):
                raise StatsError(f"{name} must be a finite number, got {value!r}")
            if name not in SIGNED and value < 0:
                raise StatsError(f"{name} must be >= 0, got {value!r}")

    @classmethod
    def from_mapping(cls, d: Mapping[str, float]) -> ArmSums:
        """From a mapping with (some of) the field names; missing fields are 0."""
        try:
            return cls(**{f: float(d.get(f, 0.0) or 0.0) for f in FIELDS})
        except (TypeError, ValueError) as exc:
            raise StatsError(f"arm sums must be numbers: {exc}") from exc

    def as_dict(self) -> dict[str, float]:
        return {f: getattr(self, f) for f in FIELDS}

    def add_impression(self, propensity: float) -> None:
        """One more impression served with ``propensity`` (its reward is 0 until feedback)."""
        p = propensity
        self.n += 1
        self.ipw_n += 1.0 / p
        self.ipw_n_sq += 1.0 / (p * p)

    def add_reward_change(self, old: float, new: float, propensity: float) -> None:
        """An impression's attributed reward moved from ``old`` to ``new``."""
        p = propensity
        d1 = new - old
        d2 = new * new - old * old
        self.reward_sum += d1
        self.reward_sumsq += d2
        self.ipw_sum += d1 / p
        self.ipw_sumsq += d2 / (p * p)

    def add_feedback(self) -> None:
        self.feedback_n += 1

    def __iadd__(self, other: ArmSums) -> ArmSums:
        for f in FIELDS:
            setattr(self, f, getattr(self, f) + getattr(other, f))
        return self

    @property
    def mean(self) -> float | None:
        """Plain mean reward per impression (None without impressions)."""
        return self.reward_sum / self.n if self.n > 0 else None


FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ArmSums))
#: Fields that may be negative (continuous rewards can be).
SIGNED = frozenset({"reward_sum", "ipw_sum"})
#: Fields stored as integers.
COUNTS = frozenset({"n", "feedback_n"})
