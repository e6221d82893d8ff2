"""Shared data builders of the interleaving evaluation tests (SQLite and PostgreSQL):
an interleaving experiment, its units/credits/pair rows inserted as the consumer writes
them, and the check that the look's SQL sums equal the per-unit preferences."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from itertools import combinations
from typing import Any

import numpy as np
import pytest

from armlab.adapters.db.interleaving_queries import pair_sums
from armlab.adapters.db.models_interleaving import (
    InterleavingCredit,
    InterleavingPair,
    InterleavingUnit,
)
from armlab.adapters.db.uow import UnitOfWork
from armlab.core.specs import ExperimentSpec
from armlab.core.stats.interleaving import PairSums, unit_preferences
from armlab.services import registry

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def create(sf: Any, arms: Sequence[str], *, m: int | None = None, auto_stop: bool = True,
           unit: str = "request", aggregate: str = "mean") -> int:
    spec = ExperimentSpec.model_validate({
        "key": "il", "design": "interleaving", "unit": unit,
        "arms": [{"key": a, "control": i == 0, "variant": {"kind": "popularity"}}
                 for i, a in enumerate(arms)],
        "interleaving": {"rankers_per_request": m, "min_units": 30, "planned_units": 500,
                         "aggregate": aggregate},
        "sequential": {"alpha": 0.05, "auto_stop": auto_stop},
    })
    with UnitOfWork(sf) as uow:
        exp = registry.create_experiment(uow, spec=spec, actor="t")
        registry.start_experiment(uow, key="il", actor="t")
        uow.commit()
        return int(exp.id)


def add_units(sf: Any, exp_id: int, data: dict[str, tuple[int, dict[tuple[str, str], float]]],
              tallies: dict[tuple[str, str], tuple[int, int, int, int, int]] | None = None,
              partition: int = 0) -> None:
    """data: unit -> (impressions, {(a, b): credit}); rows inserted as the consumer would."""
    with sf() as s, s.begin():
        for unit, (imps, credits) in data.items():
            s.add(InterleavingUnit(experiment_id=exp_id, unit_id=unit, impressions=imps))
            for (a, b), c in credits.items():
                s.add(InterleavingCredit(experiment_id=exp_id, unit_id=unit, ranker_a=a,
                                         ranker_b=b, credit=c))
        for (a, b), t in (tallies or {}).items():
            s.add(InterleavingPair(experiment_id=exp_id, ranker_a=a, ranker_b=b,
                                   partition=partition, compared=t[0], a_wins=t[1],
                                   b_wins=t[2], a_clicks=t[3], b_clicks=t[4]))


def preferring(first: str, arms: Sequence[str], n: int, rng: np.random.Generator,
               start: int = 0, shift: float = 0.6) -> dict[str, Any]:
    """n request units whose credits favour ``first`` over every other ranker."""
    out: dict[str, Any] = {}
    for u in range(start, start + n):
        credits = {}
        for a, b in combinations(arms, 2):
            mu = shift if a == first else -shift if b == first else 0.0
            credits[(a, b)] = float(rng.normal(mu, 1.0))
        out[f"u{u}"] = (1, credits)
    return out


def _impressions(rng: np.random.Generator, arms: Sequence[str], n_imp: int, n_units: int,
                 propensity: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    pairs = list(combinations(arms, 2))
    units = rng.integers(0, n_units, size=n_imp)
    compared = rng.random((n_imp, len(pairs))) < propensity
    d = rng.integers(-2, 3, size=(n_imp, len(pairs))).astype(float)
    p = np.full(d.shape, propensity)
    return units, d, compared, p


def sql_matches_unit_preferences(sf: Any) -> None:
    """The SQL sums equal PairSums of unit_preferences on the impressions themselves."""
    arms = ["a", "b", "c"]
    pairs = list(combinations(arms, 2))
    exp_id = create(sf, arms, m=2)
    rng = np.random.default_rng(7)
    units, d, compared, p = _impressions(rng, arms, 400, 60, 0.5)
    data: dict[str, Any] = {}
    for t in range(len(units)):
        imps, credits = data.setdefault(f"u{units[t]}", (0, {}))
        for j, pair in enumerate(pairs):
            if compared[t, j] and d[t, j] != 0:
                credits[pair] = credits.get(pair, 0.0) + d[t, j] / p[t, j]
        data[f"u{units[t]}"] = (imps + 1, credits)
    add_units(sf, exp_id, data)
    for aggregate in ("mean", "sum"):
        _, x = unit_preferences(d, units, compared=compared, propensity=p, aggregate=aggregate)
        with sf() as s:
            n, got = pair_sums(s, exp_id, aggregate)
        assert n == len(np.unique(units))
        for j, pair in enumerate(pairs):
            want = PairSums.from_values(x[:, j])
            assert want.n == n
            assert got[pair][0] == pytest.approx(want.total, rel=1e-9, abs=1e-9)
            assert got[pair][1] == pytest.approx(want.sumsq, rel=1e-9, abs=1e-9)
