"""The contextual read (``evidence.logged_contexts``) on SQLite and PostgreSQL: the per-segment
sums built from it equal the ones built directly from the inserted impressions, the cutoff
leaves out the immature ones, and the results' ``contextual`` block comes through the real
unit of work and validates against the strict response model; ``GET .../results`` serves it
and the OpenAPI document declares it (closed to other fields)."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import pytest

from armlab.adapters.db.models import AllocationSnapshot, Arm, Experiment, Impression
from armlab.bootstrap import bootstrap
from armlab.core.clock import utcnow
from armlab.core.policies.context_features import ContextParams, ContextSpec
from armlab.core.stats.segments import segment_table
from armlab.entrypoints.api.schemas import ResultsOut
from armlab.services.results import build_results
from armlab.settings import Settings

FEATURES = [{"name": "device", "kind": "categorical", "levels": ["m", "d"]}]
NOW = utcnow()


def _rows(n: int) -> list[dict[str, Any]]:
    rng = random.Random(7)
    out = []
    for i in range(n):
        dev = rng.choice(["m", "d", "tv", None])
        arm = rng.choice(["c", "t"])
        p = rng.choice([0.2, 0.5, 0.8])
        out.append({"impression_id": f"i{i}", "arm_key": arm, "propensity": p,
                    "reward": float(rng.random() < (0.3 if arm == "t" and dev == "m" else 0.1)),
                    "context": {} if dev is None else {"device": dev, "x": i},
                    "served_at": NOW - timedelta(hours=3) + timedelta(seconds=10 * i)})
    return out


def seed_contextual(services: Any, rows: list[dict[str, Any]], unit: str = "request") -> int:
    """A running segment_thompson experiment ``ctx`` (arms c, t) with ``rows`` and a snapshot
    (b-heavy in m, c-heavy in d); its id."""
    with services.session_factory() as s, s.begin():
        e = Experiment(key="ctx", name="ctx", control_arm_key="c", salt="ctx",
                       status="running", unit=unit, reward_kind="binary",
                       reward_metric="click", attribution_window_s=3600,
                       policy_name="segment_thompson", policy_params={"features": FEATURES},
                       exploration_floor=0.1)
        e.arms = [Arm(key=k, is_control=k == "c", position=i) for i, k in enumerate("ct")]
        s.add(e)
        s.flush()
        for i, r in enumerate(rows):
            s.add(Impression(event_id="e" + r["impression_id"], experiment_id=e.id,
                             unit_id=f"u{i % 50}", **r))
        s.add(AllocationSnapshot(experiment_id=e.id, policy_name="segment_thompson",
                                 weights={"c": 0.5, "t": 0.5}, stats={"contextual": {
                                     "policy": "segment_thompson", "features": FEATURES,
                                     "arms": ["c", "t"], "segments": [
                                         {"segment": {"device": lev}, "source": "segment",
                                          "weights": w, "prob_best": w}
                                         for lev, w in (("m", [0.1, 0.9]), ("d", [0.7, 0.3]),
                                                        ("other", [0.5, 0.5]))]}}))
        return int(e.id)


@pytest.mark.parametrize("db", ["sqlite_url", "pg_url"])
def test_logged_contexts_equal_a_direct_computation(request: pytest.FixtureRequest,
                                                    db: str) -> None:
    services = bootstrap(Settings(database_url=request.getfixturevalue(db),
                                  transport="memory"))
    rows = _rows(1000)  # served over ~2.8 h; the last ~1 h is inside the attribution window
    exp_id = seed_contextual(services, rows)
    cutoff = NOW - timedelta(hours=1)
    with services.uow() as uow:
        got = uow.evidence.logged_contexts(exp_id, cutoff)
    want = [(r["arm_key"], r["reward"], r["propensity"], r["context"] or None)
            for r in rows if r["served_at"] <= cutoff]
    assert len(got) == len(want) == 721  # served at or before now - 1 h: 2 h / 10 s + 1
    spec = ContextSpec(ContextParams(features=FEATURES).features)
    a, b = segment_table(spec, ["c", "t"], got), segment_table(spec, ["c", "t"], want)
    for seg_a, seg_b in zip(a.sums, b.sums, strict=True):
        for arm in ("c", "t"):
            assert seg_a[arm].as_dict() == pytest.approx(seg_b[arm].as_dict())
    with services.uow() as uow:
        exp = uow.experiments.get("ctx")
        assert exp is not None
        res = build_results(uow, exp)
    block = ResultsOut.model_validate(res).contextual
    assert block is not None and block.matured_impressions >= len(want) - 5
    assert {s.label for s in block.segments} == {"device=m", "device=d", "device=other"}
    m = next(s for s in block.segments if s.label == "device=m")
    assert m.weights == pytest.approx({"c": 0.1, "t": 0.9}) and m.source == "segment"
    assert block.personalisation is not None and block.personalisation.available
    assert block.personalisation.summary.startswith("serving by segment gains")


@pytest.mark.parametrize("db", ["sqlite_url", "pg_url"])
def test_logged_unit_contexts_carry_the_unit_in_serving_order(request: pytest.FixtureRequest,
                                                              db: str) -> None:
    services = bootstrap(Settings(database_url=request.getfixturevalue(db),
                                  transport="memory"))
    rows = _rows(1000)
    exp_id = seed_contextual(services, rows, unit="user")
    cutoff = NOW - timedelta(hours=1)
    with services.uow() as uow:
        got = uow.evidence.logged_unit_contexts(exp_id, cutoff)
    want = [(f"u{i % 50}", (r["arm_key"], r["reward"], r["propensity"], r["context"]))
            for i, r in enumerate(rows) if r["served_at"] <= cutoff]
    assert got == want
    with services.uow() as uow:
        exp = uow.experiments.get("ctx")
        assert exp is not None
        block = ResultsOut.model_validate(build_results(uow, exp)).contextual
    assert block is not None and block.per_user is not None
    # 50 users, each with both arms here (not sticky data): one term per (user, arm)
    assert block.per_user["users"] <= 100 and block.per_user["impressions"] >= 721


def test_results_endpoint_serves_the_block_and_documents_it(sqlite_url: str) -> None:
    from fastapi.testclient import TestClient

    from armlab.entrypoints.api.app import create_app

    settings = Settings(database_url=sqlite_url, transport="memory",
                        auth_tokens="ro:reader:reader-secret")
    seed_contextual(bootstrap(settings), _rows(1000))
    with TestClient(create_app(settings)) as client:
        got = client.get("/v1/experiments/ctx/results",
                         headers={"Authorization": "Bearer reader-secret"})
        doc = client.get("/openapi.json").json()
    assert got.status_code == 200, got.text
    block = got.json()["contextual"]
    assert block["policy"] == "segment_thompson" and len(block["segments"]) == 3
    assert block["personalisation"]["summary"].startswith("serving by segment gains")
    schemas = doc["components"]["schemas"]
    assert "contextual" in schemas["ResultsOut"]["properties"]
    assert schemas["ContextualResultsOut"]["additionalProperties"] is False
