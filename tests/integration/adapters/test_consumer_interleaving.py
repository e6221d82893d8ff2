"""Interleaving experiments through the real consumer (memory bus -> IngestRunner -> the SQL
store) on SQLite and PostgreSQL: the three interleaving tables hold exactly the credits and
tallies of the events, the impression keeps its interleaving state, a click that came before
its impression is credited from the ledger, and a replay (another consumer group reading the
whole log again) adds nothing."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import select, text

from armlab.adapters.db import consumer_store
from armlab.adapters.db.models import Arm, ArmStats, Experiment, Feedback, Impression
from armlab.adapters.kafka.memory import MemoryBus
from armlab.bootstrap import Services, bootstrap
from armlab.core.clock import utcnow
from armlab.core.events import make_feedback, make_impression
from armlab.settings import Settings

T0 = utcnow() - timedelta(minutes=5)


def _experiment(services: Services) -> int:
    with services.session_factory() as s, s.begin():
        e = Experiment(key="il", name="il", control_arm_key="a", salt="il", status="running",
                       unit="user", design="interleaving", reward_kind="binary",
                       reward_metric="click", attribution_window_s=3600)
        # positions decide the pair order, not the keys: a, b, c
        e.arms = [Arm(key=k, is_control=k == "a", position=i) for i, k in enumerate("abc")]
        s.add(e)
        s.flush()
        return e.id


def _imp(iid: str, unit: str, items: list[Any], teams: list[str], rankers: list[str],
         pairs: list[dict[str, Any]] | None = None) -> bytes:
    return make_impression(
        experiment_key="il", arm_key=teams[0] if teams else rankers[0], unit_id=unit,
        propensity=1.0,
        impression_id=iid, event_id=f"e-{iid}", served_at=T0, items=items,
        interleaving={"rankers": rankers, "teams": teams, "pairs": pairs or []}).to_json()


def _click(eid: str, iid: str, item: Any = None, kind: str = "click") -> bytes:
    return make_feedback(experiment_key="il", impression_id=iid, kind=kind, value=1.0,
                         event_id=eid, occurred_at=T0 + timedelta(seconds=30),
                         item_id=item).to_json()


def _tables(services: Services, exp_id: int) -> dict[str, Any]:
    with services.session_factory() as s:
        q = {name: s.execute(text(f"SELECT {cols} FROM {name} WHERE experiment_id = :e"),
                             {"e": exp_id}).all()
             for name, cols in (
                 ("interleaving_units", "unit_id, impressions"),
                 ("interleaving_credits", "unit_id, ranker_a, ranker_b, credit"),
                 ("interleaving_pairs", "ranker_a, ranker_b, partition, compared, a_wins,"
                  " b_wins, a_clicks, b_clicks"))}
        out: dict[str, Any] = {
            "units": {r[0]: r[1] for r in q["interleaving_units"]},
            "credits": {tuple(r[:3]): pytest.approx(r[3]) for r in q["interleaving_credits"]},
            "pairs": {tuple(r[:3]): list(r[3:]) for r in q["interleaving_pairs"]},
            "arm_stats": s.execute(select(ArmStats).where(ArmStats.experiment_id == exp_id)
                                   ).all(),
            "state": dict(s.execute(select(Impression.impression_id, Impression.interleaving)
                                    ).all()),
            "ledger": {r[0]: (r[1], r[2]) for r in s.execute(
                select(Feedback.event_id, Feedback.status, Feedback.item_id))},
        }
        return out


@pytest.mark.parametrize("db", ["sqlite_url", "pg_url"])
def test_interleaving_credits_through_the_consumer(request: pytest.FixtureRequest,
                                                  db: str) -> None:
    services = bootstrap(Settings(database_url=request.getfixturevalue(db),
                                  transport="memory"))
    exp_id = _experiment(services)
    s = services.settings
    bus = MemoryBus(default_partitions=1)

    def drain(group: str | None = None) -> dict[str, int]:
        return bootstrap(s, engine=services.engine, bus=bus).ingest_runner(
            group=group, max_batch=3).drain()

    imps, fbs = s.topic_impressions, s.topic_feedback
    # a click before its impression: stored pending (with its item) by a first batch
    bus.produce(fbs, _click("g1", "i2", 20), b"i2")
    assert drain()["feedback_pending"] == 1
    for value, topic in [
        (_imp("i1", "u1", ["x1", "x2", "x3"], ["b", "a", "c"], ["a", "b", "c"]), imps),
        (_imp("i1", "u1", ["x1", "x2", "x3"], ["b", "a", "c"], ["a", "b", "c"]), imps),
        (_imp("i2", "u1", [10, 20], ["c", "a"], ["c", "a"],
              [{"a": "c", "b": "a", "propensity": 0.5}]), imps),
        (_imp("i3", "u2", ["y"], ["a"], ["a", "b"]), imps),
        (make_impression(experiment_key="il", arm_key="a", unit_id="u3", impression_id="i4",
                         propensity=1.0,
                         served_at=T0).to_json(), imps),             # not_interleaved
        (_click("f1", "i1", "x1"), fbs),       # b
        (_click("f1", "i1", "x1"), fbs),       # a copy: duplicate
        (_click("f2", "i1", "x3"), fbs),       # c
        (_click("f3", "i1", "x1"), fbs),       # x1 again: applied, no credit
        (_click("f4", "i1", "x9"), fbs),       # item_not_shown
        (_click("f5", "i1"), fbs),             # missing_item
        (_click("f6", "i1", kind="dwell"), fbs),  # another kind: applied, no credit
    ]:
        bus.produce(topic, value, b"k")
    counts = drain()
    assert counts["impression"] == 3 and counts["pending_resolved"] == 1
    assert counts["duplicate"] == 2
    dlq = sorted(orjson.loads(r.value)["reason"] for r in bus.records(s.topic_dlq))
    assert dlq == ["item_not_shown", "missing_item", "not_interleaved"]

    got = _tables(services, exp_id)
    assert got["units"] == {"u1": 2, "u2": 1}
    # (a, b): b clicked on i1; (a, c): c clicked on i1, a clicked on i2 with P = 0.5
    assert got["credits"] == {("u1", "a", "b"): -1.0, ("u1", "a", "c"): 1.0,
                              ("u1", "b", "c"): 0.0}
    # [compared, a_wins, b_wins, a_clicks, b_clicks]
    assert got["pairs"] == {("a", "b", 0): [2, 0, 1, 0, 1], ("a", "c", 0): [2, 1, 1, 1, 1],
                            ("b", "c", 0): [1, 0, 0, 1, 1]}
    assert got["arm_stats"] == []  # no A/B statistics for an interleaving experiment
    assert got["state"]["i1"] == {
        "unit": "u1", "teams": {"x1": "b", "x2": "a", "x3": "c"},
        "pairs": [["a", "b", 1.0], ["a", "c", 1.0], ["b", "c", 1.0]],
        "clicks": {"b": 1, "c": 1}, "credited": ["x1", "x3"]}
    assert got["state"]["i2"]["clicks"] == {"a": 1}
    assert got["state"]["i2"]["pairs"] == [["a", "c", 0.5]]
    assert got["ledger"]["g1"] == ("applied", "20")
    assert got["ledger"]["f4"] == ("rejected", "x9")
    assert got["ledger"]["f5"] == ("rejected", None)

    # a restarted consumer has nothing new; a replay of the whole log adds nothing
    assert drain() == {}
    replay = drain("replay")
    assert replay == {"duplicate": 12, "not_interleaved": 1}  # i4 was never stored
    assert _tables(services, exp_id) == got
    services.close()


def test_the_registry_gives_design_unit_and_rankers_in_arm_order(sqlite_url: str) -> None:
    services = bootstrap(Settings(database_url=sqlite_url, transport="memory"))
    with services.session_factory() as s, s.begin():
        e = Experiment(key="il", name="il", control_arm_key="z", salt="il", status="running",
                       unit="user", design="interleaving")
        # inserted out of order: the position decides
        e.arms = [Arm(key=k, is_control=k == "z", position=pos)
                  for k, pos in (("m", 2), ("z", 0), ("a", 1))]
        s.add(e)
        s.add(Experiment(key="ab", name="ab", control_arm_key="x", salt="ab",
                         arms=[Arm(key="x", is_control=True, position=0)]))
    with services.session_factory() as s:
        exps = consumer_store.load_experiments(s)
    assert (exps["il"].design, exps["il"].unit, exps["il"].rankers) == (
        "interleaving", "user", ("z", "a", "m"))
    assert exps["il"].arms == frozenset("zam")
    assert (exps["ab"].design, exps["ab"].unit, exps["ab"].rankers) == ("ab", "request", ("x",))
    services.close()
