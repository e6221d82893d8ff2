"""`armlab ope` (services.ope.evaluate_experiment) on SQLite: a binary experiment's intervals lie
in [0, 1]; a continuous one, which declares no range, is left unclipped."""

from __future__ import annotations

from datetime import timedelta

import pytest

from armlab.adapters.db.models import Impression
from armlab.bootstrap import bootstrap
from armlab.core.clock import utcnow
from armlab.core.specs import ExperimentSpec
from armlab.services import ope, registry
from armlab.settings import Settings


@pytest.mark.parametrize("kind", ["binary", "continuous"])
def test_ope_intervals_follow_the_declared_reward_range(sqlite_url: str, kind: str) -> None:
    services = bootstrap(Settings(database_url=sqlite_url, transport="memory"))
    try:
        spec = ExperimentSpec.model_validate({
            "key": "e", "reward": {"kind": kind, "metric": "click"},
            "arms": [{"key": "a", "control": True, "variant": {"kind": "popularity"}},
                     {"key": "b", "variant": {"kind": "popularity"}}]})
        with services.uow() as uow:
            exp = registry.create_experiment(uow, spec=spec, actor="t")
            registry.start_experiment(uow, key="e", actor="t")
            at = utcnow() - timedelta(days=2)  # matured
            # arm b is logged rarely (propensity 0.1) and clicked once: heavy weights
            rows = [("a", 0.9, 1.0 if i % 9 == 0 else 0.0) for i in range(36)]
            rows += [("b", 0.1, 1.0)] + [("b", 0.1, 0.0)] * 3
            for i, (arm, p, r) in enumerate(rows):
                uow.session.add(Impression(
                    impression_id=f"i{i}", event_id=f"e{i}", experiment_id=exp.id,
                    arm_key=arm, unit_id=f"u{i}", propensity=p, reward=r,
                    served_at=at + timedelta(seconds=i)))
            uow.commit()
        with services.uow() as uow:
            out = ope.evaluate_experiment(uow, "e", "b")
        estimates = [*out["estimates"].values(), out["logged"]]
        if kind == "binary":
            for e in estimates:
                assert 0.0 <= e["ci_low"] <= e["ci_high"] <= 1.0, e
                if e["cs_low"] is not None:
                    assert 0.0 <= e["cs_low"] <= e["cs_high"] <= 1.0, e
            assert out["estimates"]["ipw"]["ci_low"] == 0.0  # it reached below 0: clipped
        else:
            assert out["estimates"]["ipw"]["ci_low"] < 0.0  # no declared range: as estimated
            assert all(e.get("reward_range") is None for e in estimates)
    finally:
        services.close()
