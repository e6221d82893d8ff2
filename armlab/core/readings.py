"""Plain values the read side of storage hands the services: what the dashboard, the report
and off-policy evaluation read, with no database types in them.

The database adapter builds them (:mod:`armlab.adapters.db.dashboard_queries`,
:mod:`armlab.adapters.db.report_queries`); the read ports of :mod:`armlab.services.ports` are
typed with them, so a service can be given an in-memory implementation instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

#: Per arm, in time order: (bin ends in epoch seconds, cumulative impressions, cumulative
#: reward sum).
ArmSeries = tuple[list[float], list[float], list[float]]
#: The impressions of one arm in one time bucket: (the last one's serving time, arm, how many,
#: the sum of their attributed rewards).
RewardBucket = tuple[datetime, str, int, float]
#: One impression as off-policy evaluation reads it: (arm, attributed reward, logged
#: propensity, serving time, context).
LoggedRow = tuple[str, float, float, datetime, dict[str, Any] | None]


@dataclass(frozen=True, slots=True)
class LatestDecision:
    """An arm's newest sequential-test decision, as the experiment list shows it."""

    decision: str
    srm_mismatch: bool = False


@dataclass(frozen=True, slots=True)
class ConsumerPosition:
    """One (group, topic, partition): the next offset stored with the effects, when its last
    batch committed, and the consumer's newest lag report (None where it has sent none)."""

    group: str
    topic: str
    partition: int
    next_offset: int
    updated_at: datetime | None
    high_watermark: int | None = None
    lag: int | None = None
    consumer: str | None = None
    reported_at: datetime | None = None


@dataclass
class ChartSeries:
    """An experiment's chart data as stored, sampled to about ``max_points`` per series.

    * ``snapshots``: ``(epoch seconds, weights by arm, P(best) list or None)`` in time order,
      ``n_snapshots`` the number of snapshots they were sampled from;
    * ``bucket_s`` and ``rewards``: the width of the reward bins and each arm's running
      totals at their ends (:data:`ArmSeries`);
    * ``decisions``: per arm, the sampled decision rows as lists ``x`` (epoch seconds),
      ``estimate``, ``low``, ``high``, ``decision`` in time order and ``stop_at`` (the time of
      its first terminal decision, or None); ``n_decisions`` the rows they came from.
    """

    snapshots: list[tuple[float, Any, Any]] = field(default_factory=list)
    n_snapshots: int = 0
    bucket_s: int = 60
    rewards: dict[str, ArmSeries] = field(default_factory=dict)
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)
    n_decisions: int = 0
