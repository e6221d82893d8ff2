"""The dashboard's charts as plain values (:func:`chart_data`): allocation weights and P(best)
over the allocator's snapshots, cumulative mean reward per arm, each treatment's confidence
sequence versus the control with its stopping point, in uPlot's aligned form (epoch seconds
on x). The series come from the unit of work's ``dashboard`` port (``chart_series``), already
downsampled to at most ``max_points`` per series; :mod:`armlab.services.dashboard` serves
them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from armlab.core.clock import as_utc
from armlab.core.readings import ArmSeries, ChartSeries
from armlab.services.ports import ReadsUnitOfWork
from armlab.services.registry import get_experiment

#: Points per chart series at most (the database downsamples to this).
MAX_POINTS = 400


def epoch_s(value: datetime | None) -> float | None:
    """Epoch seconds (what the charts plot), None passes through."""
    return None if value is None else as_utc(value).timestamp()


def _by_x(rows: Sequence[tuple[float, dict[str, float | None]]], keys: Sequence[str]
          ) -> dict[str, Any]:
    """uPlot's aligned form ``{"x": [...], "series": {key: [...]}}`` from ``(x, {key: y})``
    rows in time order (a later row with the same x replaces the earlier one)."""
    xs: list[float] = []
    series: dict[str, list[float | None]] = {k: [] for k in keys}
    for x, values in rows:
        if xs and xs[-1] == x:
            for k in keys:
                series[k][-1] = values.get(k)
            continue
        xs.append(x)
        for k in keys:
            series[k].append(values.get(k))
    return {"x": xs, "series": series}


def _cumulative(per_arm: Mapping[str, ArmSeries], width: float, keys: Sequence[str]
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The cumulative mean and impressions charts from per-arm running totals at bin ends:
    every arm on the union of the bin ends, carried forward across bins it has none in, from
    a first point one bin before the first end (no impressions, no mean yet)."""
    ends = sorted({t for arm_ends, _, _ in per_arm.values() for t in arm_ends})
    if not ends:
        empty = {"x": [], "series": {k: [] for k in keys}}
        return empty, {"x": [], "series": {k: [] for k in keys}}
    xs = [ends[0] - width, *ends]
    index = {x: i for i, x in enumerate(xs)}
    means: dict[str, list[float | None]] = {}
    counts: dict[str, list[float | None]] = {}
    for k in keys:
        mean: list[float | None] = [None] * len(xs)
        count: list[float | None] = [None] * len(xs)
        count[0] = 0.0
        arm_ends, ns, rs = per_arm.get(k, ([], [], []))
        for t, n, r in zip(arm_ends, ns, rs, strict=True):
            i = index[t]
            count[i] = n
            mean[i] = r / n if n else None
        for values in (mean, count):
            last = None
            for i, v in enumerate(values):
                if v is None:
                    values[i] = last
                else:
                    last = v
        means[k], counts[k] = mean, count
    return {"x": xs, "series": means}, {"x": list(xs), "series": counts}


def _weights_and_best(snapshots: Sequence[tuple[float, Any, Any]], keys: Sequence[str]
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The allocation-weights and P(best) charts: one point per (sampled) snapshot."""
    weight_rows: list[tuple[float, dict[str, float | None]]] = []
    best_rows: list[tuple[float, dict[str, float | None]]] = []  # snapshots with P(best)
    for at, weights, pb in snapshots:
        x = float(at)
        weight_rows.append((x, {k: float((weights or {}).get(k, 0.0)) for k in keys}))
        if isinstance(pb, list) and len(pb) == len(keys):
            best_rows.append((x, {k: None if v is None else float(v)
                                  for k, v in zip(keys, pb, strict=True)}))
    return _by_x(weight_rows, keys), _by_x(best_rows, keys)


def _sequences(series: ChartSeries, keys: Sequence[str], control: str
               ) -> dict[str, dict[str, Any]]:
    """Each treatment's confidence sequence versus the control (empty without decisions)."""
    return {k: series.decisions.get(k) or {"x": [], "estimate": [], "low": [], "high": [],
                                           "decision": [], "stop_at": None}
            for k in keys if k != control}


def chart_data(
    uow: ReadsUnitOfWork, key: str, *, source: str = "rollups", max_points: int = MAX_POINTS,
    sql_json: bool | None = None,
) -> dict[str, Any]:
    """The chart series of experiment ``key`` (epoch seconds on x). ``sql_json`` (default:
    on PostgreSQL) has the database build them as JSON arrays, with the same result as the
    portable row-by-row path (see :mod:`armlab.adapters.db.chart_queries`)."""
    exp = get_experiment(uow, key=key)
    keys = [a.key for a in exp.arms]
    control = exp.control_arm_key
    series = uow.dashboard.chart_series(exp.id, source=source, max_points=max_points,
                                        sql_json=sql_json)
    weights, prob_best = _weights_and_best(series.snapshots, keys)
    mean, impressions = _cumulative(series.rewards, series.bucket_s, keys)
    return {
        "key": exp.key, "arms": keys, "control": control, "status": exp.status,
        "source": source, "ended_at": epoch_s(exp.ended_at),
        "weights": weights, "snapshots": series.n_snapshots, "prob_best": prob_best,
        "mean": mean, "impressions": impressions,
        "bucket_s": series.bucket_s, "decisions": series.n_decisions,
        "cs": _sequences(series, keys, control),
    }
