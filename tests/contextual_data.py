"""Shared builders of the contextual serving tests (SQLite and PostgreSQL): a running
contextual experiment and its impressions with contexts, inserted as the consumer writes
them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from armlab.adapters.db.models import Impression
from armlab.adapters.db.uow import UnitOfWork
from armlab.core.specs import ExperimentSpec
from armlab.services import registry

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
DEVICE = {"name": "device", "kind": "categorical", "levels": ["mobile", "desktop"]}
#: click rates by (device, arm): t1 wins on mobile, the control on desktop
RATES = {("mobile", "control"): 0.10, ("mobile", "t1"): 0.35,
         ("desktop", "control"): 0.35, ("desktop", "t1"): 0.10}


def contextual_body(key: str = "ctx", *, policy: str = "segment_thompson",
                    arms: Sequence[str] = ("control", "t1"), unit: str = "request",
                    **params: Any) -> dict[str, Any]:
    features = params.pop("features", [DEVICE])
    return {
        "key": key, "unit": unit, "attribution_window_s": 3600,
        "arms": [{"key": a, "control": i == 0, "variant": {"kind": "popularity"}}
                 for i, a in enumerate(arms)],
        "policy": {"name": policy, "params": {"features": features, **params}},
    }


def create(sf: Any, **kwargs: Any) -> int:
    spec = ExperimentSpec.model_validate(contextual_body(**kwargs))
    with UnitOfWork(sf) as uow:
        exp = registry.create_experiment(uow, spec=spec, actor="t")
        registry.start_experiment(uow, key=spec.key, actor="t")
        uow.commit()
        return int(exp.id)


def add_impressions(sf: Any, exp_id: int,
                    rows: Sequence[tuple[str, dict[str, Any], float]], *,
                    served_at: datetime, prefix: str = "i") -> None:
    """(arm, context, reward) rows served at ``served_at``."""
    with sf() as s, s.begin():
        for i, (arm, ctx, reward) in enumerate(rows):
            s.add(Impression(
                impression_id=f"{prefix}{i}", event_id=f"e{prefix}{i}", experiment_id=exp_id,
                arm_key=arm, unit_id=f"u{prefix}{i}", propensity=0.5, served_at=served_at,
                reward=reward, feedback_count=int(reward > 0), context=dict(ctx)))


def segment_rows(n_per_cell: int, rng: np.random.Generator,
                 arms: Sequence[str] = ("control", "t1")
                 ) -> list[tuple[str, dict[str, Any], float]]:
    """``n_per_cell`` impressions per (device, arm) with the RATES click rates."""
    out = []
    for device in ("mobile", "desktop"):
        for arm in arms:
            rate = RATES.get((device, arm), 0.2)
            out += [(arm, {"device": device, "page": "home"}, float(rng.random() < rate))
                    for _ in range(n_per_cell)]
    return out


def matured(now: datetime = T0) -> datetime:
    return now - timedelta(hours=2)
