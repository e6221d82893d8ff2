"""A reduced `armlab demo` end to end on SQLite + the memory bus, with tiny random models.

Exercises the whole path: registration and start through the API, /recommend through the
API with the assigner and the scorer, events through the producer SDK and the consumer
runner, allocator passes with the sequential test inside, shipping through the API with the
registry's evidence guard, and the HTML report.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from armlab.adapters.data.movielens import load_movielens
from armlab.adapters.db.engine import make_engine, make_session_factory
from armlab.adapters.db.models import (
    AllocationSnapshot,
    AuditLog,
    Decision,
    Experiment,
    GuardrailStats,
    Impression,
)
from armlab.adapters.db.uow import UnitOfWork
from armlab.core.clock import utcnow
from armlab.entrypoints.demo import adaptive, two_stage
from armlab.services.decisions import evaluate_experiment
from armlab.settings import Settings


@pytest.mark.timeout(300)
def test_reduced_demo_runs_end_to_end(sqlite_url: str, tmp_path: Path) -> None:
    settings = Settings(database_url=sqlite_url, transport="memory", auth_disabled=True,
                        home=tmp_path / "home")
    cfg = adaptive.DemoConfig(max_requests=60, cadence=20, tiny=True, quiet=True,
                          settings=settings, report_dir=tmp_path / "reports",
                          tiny_dir=tmp_path / "tiny", key="demo-test", include_lm=True,
                          concurrency=4, stages="ab")
    res = two_stage.run_demo(cfg)
    assert res.requests == 60
    assert sum(t.requests for t in res.tallies.values()) == 60
    assert set(res.tallies) == {"popularity", "minilm-history-pop", "minilm-history",
                                "minilm-genres", "smollm2-rerank"}
    assert res.status == "shipped" and res.shipped in res.tallies

    engine = make_engine(sqlite_url)
    with make_session_factory(engine)() as s:
        exp = s.scalars(select(Experiment).where(Experiment.key == "demo-test")).one()
        assert exp.status == "shipped" and exp.shipped_arm_key == res.shipped
        n, clicks = s.execute(select(func.count(), func.sum(Impression.reward))
                              .where(Impression.experiment_id == exp.id)).one()
        # every impression and click went through the producer SDK and the consumer once
        assert n == 60
        assert clicks == sum(t.clicks for t in res.tallies.values())
        per_arm = dict(s.execute(select(Impression.arm_key, func.count())
                                 .where(Impression.experiment_id == exp.id)
                                 .group_by(Impression.arm_key)).all())
        assert per_arm == {k: t.requests for k, t in res.tallies.items() if t.requests}
        snaps = s.scalar(select(func.count()).where(AllocationSnapshot.experiment_id == exp.id))
        assert snaps >= 4  # start, three cadence passes (+ final, shipped)
        assert s.scalar(select(func.count()).where(Decision.experiment_id == exp.id)) >= 3
        actions = [a for (a,) in s.execute(select(AuditLog.action)
                                           .where(AuditLog.experiment_id == exp.id)
                                           .order_by(AuditLog.id))]
        assert actions[:2] == ["create", "start"] and actions[-1] == "ship"
        # the guardrail is registered and its metric ingested for every impression
        assert [g["key"] for g in exp.guardrails] == ["low_rated"]
        # the demo knows its budget: the horizon boundary, planned at the users it will see
        # (the user is the unit of analysis: one user's requests are correlated)
        users = s.scalar(select(func.count(func.distinct(Impression.unit_id)))
                         .where(Impression.experiment_id == exp.id))
        assert exp.unit == "user"
        assert exp.sequential["boundary"] == "horizon" and exp.sequential["max_n"] == users
        low = s.execute(select(func.sum(GuardrailStats.n), func.sum(GuardrailStats.reward_sum))
                        .where(GuardrailStats.experiment_id == exp.id,
                               GuardrailStats.metric == "low_rated")).one()
        assert low[0] == 60 and low[1] is not None
    engine.dispose()

    assert res.report_path is not None
    page = res.report_path.read_text()
    for section in ('id="chart-weights"', 'id="chart-reward"', 'id="chart-cs"', 'id="audit"',
                    "id='guardrails'", "low_rated"):
        assert section in page


@pytest.mark.timeout(300)
def test_the_two_stage_demo_interleaves_then_ab_tests_per_user(sqlite_url: str,
                                                               tmp_path: Path) -> None:
    """Stage 1 multileaves the three rankers (every impression carries its interleaving log,
    clicks are credited per user); stage 2 A/B-tests the preferred ranker against the control
    with the user as the unit, or says why it did not run."""
    from armlab.adapters.db.models import InterleavingUnit

    settings = Settings(database_url=sqlite_url, transport="memory", auth_disabled=True,
                        home=tmp_path / "home")
    cfg = adaptive.DemoConfig(max_requests=80, cadence=20, tiny=True, quiet=True,
                              settings=settings, report_dir=tmp_path / "reports",
                              tiny_dir=tmp_path / "tiny", key="demo-2s", concurrency=2)
    res = two_stage.run_demo(cfg)
    one = res.stage_one
    assert one is not None and one.key == "demo-2s-stage1"
    assert one.requests == 40 and one.preferred in {"popularity", "minilm-history-pop",
                                                    "minilm-history"}
    assert one.report_path is not None and "interleaving" in one.report_path.read_text()
    engine = make_engine(sqlite_url)
    with make_session_factory(engine)() as s:
        exp1 = s.scalars(select(Experiment).where(Experiment.key == one.key)).one()
        assert exp1.design == "interleaving" and exp1.unit == "user"
        assert exp1.status == "stopped"  # stage 1 is closed either way
        rows = s.scalars(select(Impression).where(Impression.experiment_id == exp1.id)).all()
        assert len(rows) == 40 and all(r.interleaving for r in rows)
        users = {r.unit_id for r in rows}
        n_units = s.scalar(select(func.count()).where(InterleavingUnit.experiment_id == exp1.id))
        assert n_units == len(users)  # the unit of analysis is the user, not the request
        if res.status == "skipped":
            assert one.preferred == "popularity" and "stage 1 prefers the control" in res.why
        else:
            exp2 = s.scalars(select(Experiment).where(Experiment.key == "demo-2s")).one()
            assert exp2.unit == "user" and exp2.design == "ab"
            assert {a.key for a in exp2.arms} == {"popularity", one.preferred}
            # stage 1's users are stage 2's pre-period: CUPED on their stage-1 requests
            assert exp2.sequential["cuped"] == {"pre_period_days": 1,
                                                "covariate": "impressions"}
            assert (res.sequential or {})["cuped"]["applied"]
            # a look on all of stage 2's data: every stage-2 user analysed, those stage 1
            # served seen in the pre-period
            with UnitOfWork(make_session_factory(engine)) as uow:
                block = evaluate_experiment(uow.evidence, exp2,
                                            now=utcnow() + timedelta(hours=1))["cuped"]
            users2 = set(s.scalars(select(Impression.unit_id)
                                   .where(Impression.experiment_id == exp2.id)))
            assert block["applied"] and block["units"] == len(users2)
            assert block["pre_units"] == len(users2 & users)
            assert res.requests == 40
    engine.dispose()


def test_requests_are_time_ordered_and_rewards_come_from_future_ratings() -> None:
    ml = load_movielens()
    t0 = adaptive.split_time(ml, 0.5)
    reqs = adaptive.build_requests(ml, t0=t0, every=10, window_s=3 * 3600, history_len=10,
                               min_history=5)
    assert len(reqs) > 3000
    assert all(a.t <= b.t for a, b in zip(reqs, reqs[1:], strict=False))
    r = reqs[100]
    hist = ml.user_history(r.user)
    # positives: rated >= 4 at or after the request and within the window; never seen before
    expect = {i for i, v, t in hist if r.t <= t <= r.t + 3 * 3600 and v >= 4}
    assert r.positives == frozenset(expect)
    assert r.positives.isdisjoint(r.seen)
    # the guardrail's movies: rated 1-2 in the same window
    bad = {i: v for i, v, t in hist if r.t <= t <= r.t + 3 * 3600 and v <= 2}
    assert r.disliked == bad
    assert any(q.disliked for q in reqs[:500])
    assert set(r.history) <= r.seen and len(r.history) <= 10
    assert all(t < r.t for i, _, t in hist if i in r.seen)


def test_catalog_is_most_popular_first_with_the_popularity_before_the_split() -> None:
    ml = load_movielens()
    t0 = adaptive.split_time(ml, 0.5)
    pop = adaptive.popularity_before(ml, t0)
    cat = adaptive.catalog_payload(ml.items(), pop)
    assert len(cat) == len(ml.items())
    assert [c["popularity"] for c in cat] == sorted((c["popularity"] for c in cat),
                                                    reverse=True)
    assert all(c["popularity"] == pop.get(c["id"], 0.0) for c in cat)


def test_default_arms_serve_without_encoding_text_and_full_adds_the_slow_ones() -> None:
    from armlab.core.variants import validate_variant

    arms = adaptive.arm_specs(include_lm=False)
    assert [a["key"] for a in arms] == ["popularity", "minilm-history-pop", "minilm-history"]
    for a in arms[1:]:
        assert validate_variant(a["variant"])["user_tower"] == "history_mean"
    assert arms[1]["variant"]["prior"]["weight"] == 0.2
    full = adaptive.arm_specs(include_lm=True)
    assert [a["key"] for a in full][3:] == ["minilm-genres", "smollm2-rerank"]
    for a in full:
        validate_variant(a["variant"])


def test_choose_winner_follows_the_sequential_decisions() -> None:
    seq = {"arms": [
        {"arm": "a", "decision": "treatment_better", "estimate": 0.05, "p_adjusted": 0.01},
        {"arm": "b", "decision": "treatment_better", "estimate": 0.08, "p_adjusted": 0.02},
        {"arm": "c", "decision": "treatment_worse", "estimate": -0.1, "p_adjusted": 0.01},
    ]}
    assert adaptive.choose_winner(seq, "ctl")[0] == "b"
    seq2 = {"arms": [{"arm": "a", "decision": "futile"}, {"arm": "c",
                                                          "decision": "treatment_worse"}]}
    assert adaptive.choose_winner(seq2, "ctl")[0] == "ctl"
    seq3 = {"arms": [{"arm": "a", "decision": "continue"}]}
    arm, why = adaptive.choose_winner(seq3, "ctl")
    assert arm == "ctl" and "keeping the control" in why
    # a breached (or rolled-back) arm is never chosen, even when it is the best on clicks
    assert adaptive.choose_winner({**seq, "guardrails": [
        {"arm": "b", "metric": "low_rated", "state": "breached"}]}, "ctl")[0] == "a"
    assert adaptive.choose_winner({**seq, "rolled_back": {"b": {}, "a": {}}}, "ctl")[0] == "ctl"


@pytest.mark.timeout(300)
def test_the_demo_run_twice_on_one_database_counts_the_second_runs_traffic(
    sqlite_url: str, tmp_path: Path,
) -> None:
    """The second `make demo` used to ingest nothing: the database kept the first run's
    consumer offsets and the new in-process bus started at 0, so every record was skipped."""
    settings = Settings(database_url=sqlite_url, transport="memory", auth_disabled=True,
                        home=tmp_path / "home")
    engine = make_engine(sqlite_url)
    for key in ("demo-first", "demo-second"):
        cfg = adaptive.DemoConfig(max_requests=40, cadence=20, tiny=True, quiet=True,
                                  settings=settings, report_dir=tmp_path / "reports",
                                  tiny_dir=tmp_path / "tiny", key=key, include_lm=False,
                                  concurrency=2, stages="ab")
        res = two_stage.run_demo(cfg)
        assert res.requests == 40
        with make_session_factory(engine)() as s:
            exp = s.scalars(select(Experiment).where(Experiment.key == key)).one()
            n, clicks = s.execute(select(func.count(), func.sum(Impression.reward))
                                  .where(Impression.experiment_id == exp.id)).one()
        assert n == 40, f"{key}: the platform counted {n} of 40 impressions"
        assert clicks == sum(t.clicks for t in res.tallies.values())
    engine.dispose()


@pytest.mark.timeout(300)
def test_the_contextual_demo_serves_stage_two_by_history_segment(sqlite_url: str,
                                                                 tmp_path: Path) -> None:
    """``--contextual``: stage 2 registers segment_thompson on the user's history length;
    every impression carries its segment and the allocator's snapshot has the per-segment
    block (the policy's weights per segment)."""
    from armlab.entrypoints.demo.experiment import HISTORY_LEVELS

    settings = Settings(database_url=sqlite_url, transport="memory", auth_disabled=True,
                        home=tmp_path / "home")
    cfg = adaptive.DemoConfig(max_requests=60, cadence=20, tiny=True, quiet=True,
                              settings=settings, report_dir=tmp_path / "reports",
                              tiny_dir=tmp_path / "tiny", key="demo-ctx", concurrency=2,
                              stages="ab", contextual=True)
    res = two_stage.run_demo(cfg)
    assert res.requests == 60
    # the results' per-segment block reached the summary (the personalisation verdict or
    # why there is none yet)
    assert res.contextual is not None and "personalisation" in res.contextual
    engine = make_engine(sqlite_url)
    with make_session_factory(engine)() as s:
        exp = s.scalars(select(Experiment).where(Experiment.key == "demo-ctx")).one()
        assert exp.policy_name == "segment_thompson"
        contexts = [c for (c,) in s.execute(select(Impression.context)
                                           .where(Impression.experiment_id == exp.id))]
        assert len(contexts) == 60 and all(c["history"] in HISTORY_LEVELS for c in contexts)
        snaps = s.scalars(select(AllocationSnapshot)
                          .where(AllocationSnapshot.experiment_id == exp.id,
                                 AllocationSnapshot.policy_name == "segment_thompson")).all()
        assert snaps and all("contextual" in (sn.stats or {}) for sn in snaps)
        segments = snaps[-1].stats["contextual"]["segments"]
        assert [g["segment"]["history"] for g in segments][:3] == list(HISTORY_LEVELS)
    engine.dispose()
