"""``Evidence.unit_guardrail_sums`` (``unit: user``) on SQLite and on a real PostgreSQL: one
term per (metric, arm, user) read from the impressions' ``guardrail_values``, up to the
cutoff, against a direct computation; and the look that uses it analyses per user."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from armlab.adapters.db.engine import make_engine, make_session_factory
from armlab.adapters.db.models import Impression
from armlab.adapters.db.uow import UnitOfWork
from armlab.core.specs import ExperimentSpec
from armlab.core.stats.noninferiority_units import UnitSums
from armlab.services import registry
from armlab.services.decisions import evaluate_experiment, guardrail_analysis_sums

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
CUTOFF = NOW - timedelta(minutes=10)


@pytest.fixture(params=["sqlite_url", "pg_url"])
def sf(request: pytest.FixtureRequest) -> Any:
    engine = make_engine(request.getfixturevalue(request.param))
    yield make_session_factory(engine)
    engine.dispose()


def _create(sf: Any) -> int:
    spec = ExperimentSpec.model_validate({
        "key": "g", "unit": "user", "exploration_floor": 0.1, "attribution_window_s": 600,
        "sequential": {"min_samples": 1},
        "arms": [{"key": "control", "control": True, "variant": {"kind": "popularity"}},
                 {"key": "t1", "variant": {"kind": "popularity"}}],
        "guardrails": [
            {"key": "skips", "source": {"feedback": "skip"}, "harm": "increase",
             "margin": {"absolute": 0.02}, "alpha": 0.05},
            {"key": "dwell", "source": {"feedback": "dwell"}, "harm": "decrease",
             "margin": {"relative": 0.05}, "alpha": 0.05, "aggregate": "sum"}],
    })
    with UnitOfWork(sf) as uow:
        exp = registry.create_experiment(uow, spec=spec, actor="t")
        registry.start_experiment(uow, key="g", actor="t")
        uow.commit()
        return int(exp.id)


def _rows() -> list[tuple[str, str, float, dict[str, list[float]] | None, datetime]]:
    """(arm, user, propensity, guardrail_values, served_at): 2 arms x 6 users x 1-5
    impressions; some after the cutoff, one without values, dwell not observed on some."""
    rows = []
    for arm, p in (("control", 0.7), ("t1", 0.3)):
        for u in range(6):
            for j in range(1 + u % 5):
                values: dict[str, list[float]] | None = {"skips": [float((u + j) % 3 == 0),
                                                                   float((u + j) % 3 == 0)]}
                if j % 2 == 0 and values is not None:
                    values["dwell"] = [1.5 * j + u, 2.0]
                if (u, j) == (2, 1):
                    values = None  # an impression without guardrail values
                late = (u == 5 and j == 4) or (u == 0 and arm == "t1")
                rows.append((arm, f"{arm}-{u}", p, values,
                             NOW - timedelta(seconds=30 if late else 3600 + j)))
    return rows


def _direct(rows: list[tuple[str, str, float, dict[str, list[float]] | None, datetime]]
            ) -> dict[str, dict[str, UnitSums]]:
    per: dict[tuple[str, str, str], list[float]] = {}
    for arm, user, p, values, at in rows:
        if at > CUTOFF or values is None:
            continue
        for metric, (y, count) in values.items():
            a = per.setdefault((metric, arm, user), [0, 0, 0, 0, p])
            a[0] += 1
            a[1] += y
            a[2] += y * y
            a[3] += count
    out: dict[str, dict[str, UnitSums]] = {}
    for (metric, arm, _), (n, y, ysq, events, p) in sorted(per.items()):
        out.setdefault(metric, {}).setdefault(arm, UnitSums()).add_unit(n, y, ysq, events, p)
    return out


def test_unit_guardrail_sums_match_a_direct_computation(sf: Any) -> None:
    exp_id = _create(sf)
    rows = _rows()
    with sf() as s, s.begin():
        s.add_all(Impression(impression_id=f"i{k}", event_id=f"e{k}", experiment_id=exp_id,
                             arm_key=arm, unit_id=user, propensity=p, served_at=at,
                             guardrail_values=values)
                  for k, (arm, user, p, values, at) in enumerate(rows))
    with UnitOfWork(sf) as uow:
        got = uow.evidence.unit_guardrail_sums(exp_id, CUTOFF)
        every = uow.evidence.unit_guardrail_sums(exp_id, None)
        exp = registry.get_experiment(uow, key="g")
        via_service = guardrail_analysis_sums(uow.evidence, exp, now=NOW)
        ev = evaluate_experiment(uow.evidence, exp, now=NOW)
    want = _direct(rows)
    assert set(got) == set(want) == {"skips", "dwell"}
    for metric, per_arm in want.items():
        assert set(got[metric]) == set(per_arm)
        for arm, sums in per_arm.items():
            for name in UnitSums.__slots__:
                assert getattr(got[metric][arm], name) == pytest.approx(getattr(sums, name)), (
                    metric, arm, name)
    assert got["skips"]["t1"].units == 5  # user t1-0 only served after the cutoff
    assert every["skips"]["t1"].units == 6  # no cutoff: every impression
    assert via_service == got  # the matured, in-design cutoff of the attribution window
    entries = {(g["metric"], g["arm"]): g for g in ev["guardrails"]}
    assert entries[("skips", "t1")]["unit"] == "user"
    assert entries[("skips", "t1")]["units_treatment"] == 5
