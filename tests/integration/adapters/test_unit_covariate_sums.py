"""``Evidence.unit_covariate_sums`` (CUPED, ``unit: user``) on SQLite and on a real
PostgreSQL (partitioned impressions): per arm the sums of X, X², XY and X/p, X²/p², XY/p² of the
units the per-user test analyses, X_u from the unit's impressions of *other* experiments served
in the pre-period, against a direct computation; and the look that uses them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from armlab.adapters.db.engine import make_engine, make_session_factory
from armlab.adapters.db.models import Impression
from armlab.adapters.db.uow import UnitOfWork
from armlab.core.specs import ExperimentSpec
from armlab.core.stats.cuped import CovariateSums
from armlab.services import registry
from armlab.services.decisions import evaluate_experiment

START = datetime(2026, 1, 20, 12, 0, tzinfo=UTC)
NOW = START + timedelta(days=2)
CUTOFF = NOW - timedelta(minutes=10)
PRE_FROM = START - timedelta(days=7)

Row = tuple[str, str, str, float, float, int, datetime]  # exp, arm, unit, p, reward, fb, at


@pytest.fixture(params=["sqlite_url", "pg_url"])
def sf(request: pytest.FixtureRequest) -> Any:
    engine = make_engine(request.getfixturevalue(request.param))
    yield make_session_factory(engine)
    engine.dispose()


def _create(sf: Any, key: str, cuped: dict[str, Any] | None) -> int:
    seq: dict[str, Any] = {"min_samples": 1, "min_events": 0}
    if cuped is not None:
        seq["cuped"] = cuped
    spec = ExperimentSpec.model_validate({
        "key": key, "unit": "user", "exploration_floor": 0.1, "attribution_window_s": 600,
        "sequential": seq,
        "arms": [{"key": "control", "control": True, "variant": {"kind": "popularity"}},
                 {"key": "t1", "variant": {"kind": "popularity"}}]})
    with UnitOfWork(sf) as uow:
        exp = registry.create_experiment(uow, spec=spec, actor="t")
        registry.start_experiment(uow, key=key, actor="t")
        exp.started_at = START if key == "cu" else START - timedelta(days=30)
        uow.commit()
        return int(exp.id)


def _rows() -> list[Row]:
    """The experiment's users (6 per arm, 1-4 impressions each, some after the cutoff) and
    what the other experiment ("old") served them: inside the pre-period (weeks apart, so on
    PostgreSQL in several partitions), before it, and at the start (outside: [from, to))."""
    rows: list[Row] = []
    for arm, p in (("control", 0.7), ("t1", 0.3)):
        for u in range(6):
            unit = f"{arm}-{u}"
            for j in range(1 + u % 4):
                late = u == 5 and arm == "t1"
                rows.append(("cu", arm, unit, p, float((u + j) % 2), 1,
                             CUTOFF + timedelta(seconds=5) if late else START + timedelta(
                                 hours=1 + j)))
            if u % 3 != 0:  # users 0 and 3 of each arm: never seen before
                for j in range(u):
                    rows.append(("old", "control", unit, 0.5, float(j % 2 == 0), 1 + j % 2,
                                 START - timedelta(days=1 + 2 * j, hours=1)))
            rows.append(("old", "control", unit, 0.5, 1.0, 3, PRE_FROM - timedelta(hours=1)))
            rows.append(("old", "control", unit, 0.5, 1.0, 3, START))
    rows.append(("old", "control", "stranger", 0.5, 1.0, 1, START - timedelta(days=1)))
    return rows


def _direct(rows: list[Row], covariate: str) -> dict[str, CovariateSums]:
    xs: dict[str, float] = {}
    for exp, _, unit, _, r, fb, at in rows:
        if exp == "old" and PRE_FROM <= at < START:
            xs[unit] = xs.get(unit, 0.0) + {"reward": r, "feedback": fb, "impressions": 1}[
                covariate]
    per: dict[tuple[str, str], list[float]] = {}
    for exp, arm, unit, p, r, _, at in rows:
        if exp == "cu" and at <= CUTOFF:
            a = per.setdefault((arm, unit), [0.0, p])
            a[0] += r
    acc: dict[str, list[float]] = {}
    for (arm, unit), (y, p) in per.items():
        x = xs.get(unit, 0.0)
        a = acc.setdefault(arm, [0.0] * 7)
        for j, v in enumerate((float(unit in xs), x, x * x, x * y, x / p, x * x / p**2,
                               x * y / p**2)):
            a[j] += v
    return {arm: CovariateSums(*a) for arm, a in acc.items()}


@pytest.mark.parametrize("covariate", ["reward", "feedback", "impressions"])
def test_unit_covariate_sums_match_a_direct_computation(sf: Any, covariate: str) -> None:
    ids = {"old": _create(sf, "old", None),
           "cu": _create(sf, "cu", {"pre_period_days": 7, "covariate": covariate})}
    rows = _rows()
    with sf() as s, s.begin():
        s.add_all(Impression(impression_id=f"i{k}", event_id=f"e{k}", experiment_id=ids[exp],
                             arm_key=arm, unit_id=unit, propensity=p, served_at=at,
                             reward=r, feedback_count=fb)
                  for k, (exp, arm, unit, p, r, fb, at) in enumerate(rows))
    with UnitOfWork(sf) as uow:
        got = uow.evidence.unit_covariate_sums(ids["cu"], CUTOFF, pre_from=PRE_FROM,
                                               pre_to=START, covariate=covariate)
        ev = evaluate_experiment(uow.evidence, registry.get_experiment(uow, key="cu"),
                                 now=NOW)
    want = _direct(rows, covariate)
    assert set(got) == set(want) == {"control", "t1"}
    for arm in want:
        assert got[arm].pre_units == want[arm].pre_units == (4 if arm == "control" else 3)
        for name in CovariateSums.__slots__:
            assert getattr(got[arm], name) == pytest.approx(getattr(want[arm], name)), (
                arm, name)
    assert want["control"].x > 0
    cu = ev["cuped"]
    assert cu["applied"] and cu["covariate"] == covariate and cu["pre_period_days"] == 7
    assert cu["pre_from"] == PRE_FROM.isoformat() and cu["pre_to"] == START.isoformat()
    assert cu["units"] == 11 and cu["pre_units"] == 7  # user t1-5 served after the cutoff
    assert 0.0 <= cu["variance_ratio"] <= 1.0
    # the shown means stay the users' plain means (the test runs on Y - theta X)
    arm = ev["arms"][0]
    assert arm["mean_control"] == pytest.approx(sum(
        r for exp, a, _, _, r, _, at in rows if exp == "cu" and a == "control"
        and at <= CUTOFF) / 6)
