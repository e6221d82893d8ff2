"""Interleaving experiments in the pure batch handler: refusals, per-unit IPW credits, pair
tallies, pending clicks, duplicates (no I/O; the store tests write the same effects)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import orjson
import pytest

from armlab.core.event_effects import (
    BatchState,
    ExperimentInfo,
    ImpressionState,
    PendingFeedback,
    handle_batch,
)
from armlab.core.events import FeedbackV1, ImpressionV1, decode

T0 = datetime(2026, 1, 1, tzinfo=UTC)
IMP_T, FB_T = "imps", "fbs"


def _exp(eid: int, key: str, rankers: tuple[str, ...], unit: str = "request",
         design: str = "interleaving") -> ExperimentInfo:
    return ExperimentInfo(eid, key, frozenset(rankers), "binary", "click", 100.0,
                          design=design, unit=unit, rankers=rankers)


# arm order b, a: the pair of the two-ranker experiment is (b, a)
EXPS = {
    "T": _exp(1, "T", ("b", "a")),
    "M": _exp(2, "M", ("a", "b", "c", "d"), unit="user"),
    "AB": _exp(3, "AB", ("a", "b"), design="ab"),
}


class Rec(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class Stream:
    def __init__(self, partition: int = 0) -> None:
        self.recs: list[Rec] = []
        self.partition = partition

    def raw(self, topic: str, doc: dict[str, Any]) -> None:
        self.recs.append(Rec(topic, self.partition, len(self.recs), b"k", orjson.dumps(doc)))

    def imp(self, iid: str, exp: str, items: list[Any], teams: list[str] | None,
            rankers: list[str] | None = None, pairs: list[tuple[str, str, float]] | None = None,
            *, unit: str = "u", p: float = 1.0, arm: str | None = None) -> None:
        doc: dict[str, Any] = {
            "schema": "impression.v1", "event_id": f"e-{iid}", "impression_id": iid,
            "experiment_key": exp, "arm_key": arm or (teams[0] if teams else "a"),
            "unit_id": unit, "propensity": p, "served_at": T0.isoformat(), "items": items}
        if teams is not None:
            doc["interleaving"] = {
                "rankers": rankers or sorted(set(teams)), "teams": teams,
                "pairs": [{"a": a, "b": b, "propensity": q} for a, b, q in pairs or ()]}
        self.raw(IMP_T, doc)

    def fb(self, eid: str, iid: str, exp: str, item: Any = None, *, kind: str = "click",
           value: float = 1.0, dt_s: float = 10.0) -> None:
        doc = {"schema": "feedback.v1", "event_id": eid, "impression_id": iid,
               "experiment_key": exp, "kind": kind, "value": value,
               "occurred_at": (T0 + timedelta(seconds=dt_s)).isoformat()}
        if item is not None:
            doc["item_id"] = item
        self.raw(FB_T, doc)

    def decoded(self) -> list[Any]:
        exp = {IMP_T: ImpressionV1, FB_T: FeedbackV1}
        return [(r, decode(r.value, exp[r.topic])) for r in self.recs]


def _run(s: Stream, state: BatchState | None = None) -> Any:
    return handle_batch(s.decoded(), EXPS, state if state is not None else BatchState(),
                        feedback_topic=FB_T)


def test_two_rankers_credit_clicks_to_the_team_and_tally_wins() -> None:
    s = Stream()
    s.imp("i1", "T", ["x1", "x2", 3, "x4"], ["a", "b", "a", "b"])
    s.fb("f1", "i1", "T", "x1")    # a: a leads
    s.fb("f2", "i1", "T", "x2")    # b: a tie
    s.fb("f3", "i1", "T", 3)       # a (an integer item id): a leads again
    s.fb("f4", "i1", "T", "x1")    # the same item again: applied, credited once
    s.fb("f5", "i1", "T", kind="dwell", value=30.0)  # another kind: applied, no item needed
    s.fb("f6", "i1", "T", "x4", value=0.0)  # not a click (value 0): applied, no credit
    fx = _run(s)
    assert fx.rejects == [] and fx.stats == {} and fx.guardrail_stats == {}
    assert fx.interleaving_units == {(1, "i1"): 1}  # unit: request -> the impression
    # pair (b, a) in arm order: credit_b - credit_a = 1 - 2
    assert fx.interleaving_credits == {(1, "i1", "b", "a"): -1.0}
    # [compared, b_wins, a_wins, b_clicks, a_clicks]: a won the impression
    assert fx.interleaving_pairs == {(1, "b", "a", 0): [1, 0, 1, 1, 2]}
    (imp,) = fx.new_impressions
    assert imp.interleaving == {
        "unit": "i1", "teams": {"x1": "a", "x2": "b", "3": "a", "x4": "b"},
        "pairs": [["b", "a", 1.0]], "clicks": {"a": 2, "b": 1}, "credited": ["x1", "x2", "3"]}
    assert imp.reward == 0.0 and imp.feedback_count == 6
    assert {ev.event_id: st for ev, _, st in fx.feedback_rows} == dict.fromkeys(
        ["f1", "f2", "f3", "f4", "f5", "f6"], "applied")


def test_three_of_four_rankers_weighted_by_pair_propensity_per_user() -> None:
    s = Stream(partition=2)
    pairs = [("a", "c", 0.5), ("d", "a", 0.25), ("c", "d", 0.5)]  # logged in any order
    s.imp("i1", "M", ["p", "q", "r"], ["c", "a", "d"], ["d", "c", "a"], pairs, unit="u1")
    s.imp("i2", "M", ["p", "q"], ["b", "a"], ["a", "b"], [("a", "b", 0.2)], unit="u1")
    s.fb("f1", "i1", "M", "p")     # c
    s.fb("f2", "i1", "M", "r")     # d
    s.fb("f3", "i2", "M", "p")     # b
    fx = _run(s)
    assert fx.rejects == [] and fx.stats == {}
    assert fx.interleaving_units == {(2, "u1"): 2}  # unit: user
    assert fx.interleaving_credits == {
        (2, "u1", "a", "c"): -2.0,          # c clicked, p = 0.5
        (2, "u1", "c", "d"): 2.0 - 2.0,     # c then d
        (2, "u1", "a", "d"): -4.0,          # d clicked, p = 0.25
        (2, "u1", "a", "b"): -5.0,          # b clicked, p = 0.2
    }
    assert fx.interleaving_pairs == {
        (2, "a", "c", 2): [1, 0, 1, 0, 1],
        (2, "a", "d", 2): [1, 0, 1, 0, 1],
        (2, "c", "d", 2): [1, 0, 0, 1, 1],  # c won, then a tie
        (2, "a", "b", 2): [1, 0, 1, 0, 1],
    }
    i1 = fx.new_impressions[0].interleaving
    assert i1["pairs"] == [["a", "c", 0.5], ["a", "d", 0.25], ["c", "d", 0.5]]


def test_late_early_and_unshown_clicks_are_dead_lettered_and_credit_nothing() -> None:
    s = Stream()
    s.imp("i1", "T", ["x1", "x2"], ["a", "b"])
    s.fb("late", "i1", "T", "x1", dt_s=101)
    s.fb("early", "i1", "T", "x1", dt_s=-1)
    s.fb("noitem", "i1", "T")
    s.fb("other", "i1", "T", "x9")
    s.fb("int", "i1", "T", 1)
    s.fb("wrongexp", "i1", "M", "x1")
    fx = _run(s)
    assert [r.reason for r in fx.rejects] == ["late", "before_impression", "missing_item",
                                              "item_not_shown", "item_not_shown",
                                              "experiment_mismatch"]
    assert fx.interleaving_credits == {} and fx.interleaving_pairs == {(1, "b", "a", 0): [
        1, 0, 0, 0, 0]}
    statuses = {ev.event_id: st for ev, _, st in fx.feedback_rows}
    assert statuses == {"late": "late", "early": "late", "noitem": "rejected",
                        "other": "rejected", "int": "rejected", "wrongexp": "rejected"}
    assert fx.new_impressions[0].feedback_count == 0


def test_a_click_before_its_impression_waits_and_is_credited_when_it_arrives() -> None:
    s = Stream()
    s.fb("f1", "i1", "T", "x2")                       # pending in this batch
    s.fb("f2", "i1", "T", "x9")                       # pending, then not shown
    s.imp("i1", "T", ["x1", "x2"], ["a", "b"])
    fx = _run(s)
    assert fx.interleaving_credits == {(1, "i1", "b", "a"): 1.0}
    assert fx.interleaving_pairs == {(1, "b", "a", 0): [1, 1, 0, 1, 0]}
    assert fx.feedback_status == {"f1": "applied", "f2": "rejected"}
    (bad,) = fx.rejects
    assert bad.reason == "item_not_shown" and bad.offset == -1
    assert orjson.loads(bad.raw)["item_id"] == "x9"
    # pending from an earlier batch (the ledger keeps item_id as a string), resolved on the
    # impression's partition
    t = Stream(partition=4)
    t.imp("i2", "T", [7, "x2"], ["a", "b"])
    state = BatchState(pending={"i2": [
        PendingFeedback("p1", "i2", "T", "click", 1.0, T0 + timedelta(seconds=5), 1, "7"),
        PendingFeedback("p2", "i2", "T", "click", 1.0, T0 + timedelta(seconds=5), 1, None)]})
    fx = _run(t, state)
    assert fx.interleaving_credits == {(1, "i2", "b", "a"): -1.0}
    assert fx.interleaving_pairs == {(1, "b", "a", 4): [1, 0, 1, 0, 1]}
    assert fx.feedback_status == {"p1": "applied", "p2": "rejected"}
    assert [(r.reason, r.partition) for r in fx.rejects] == [("missing_item", 1)]


def test_a_click_on_a_stored_impression_rewrites_its_state() -> None:
    stored = ImpressionState("i1", "e-i1", 1, "a", 1.0, T0, interleaving={
        "unit": "i1", "teams": {"x1": "a", "x2": "b"}, "pairs": [["b", "a", 1.0]],
        "clicks": {"a": 1}, "credited": ["x1"]})
    state = BatchState(impressions={"i1": stored}, impression_event_ids={"e-i1"})
    s = Stream(partition=1)
    s.fb("f2", "i1", "T", "x2")   # b: a's lead becomes a tie
    s.fb("f3", "i1", "T", "x1")   # credited already
    fx = _run(s, state)
    assert fx.interleaving_credits == {(1, "i1", "b", "a"): 1.0}
    assert fx.interleaving_pairs == {(1, "b", "a", 1): [0, 0, -1, 1, 0]}
    assert fx.interleaving_units == {}
    upd = fx.impression_updates["i1"]
    assert upd.interleaving["clicks"] == {"a": 1, "b": 1}
    assert upd.interleaving["credited"] == ["x1", "x2"] and upd.feedback_count == 2


def test_redelivered_impression_and_clicks_add_nothing() -> None:
    s = Stream()
    s.imp("i1", "T", ["x1", "x2"], ["a", "b"])
    s.fb("f1", "i1", "T", "x1")
    state = BatchState()
    first = _run(s, state)
    assert first.interleaving_units and first.interleaving_credits
    again = _run(s, state)  # the same records against the state they produced
    assert again.rejects == [] and again.new_impressions == []
    assert again.interleaving_units == {} and again.interleaving_credits == {}
    assert again.interleaving_pairs == {} and again.impression_updates == {}
    assert dict(again.counters) == {("duplicate", 0): 2}
    # a copy of the click naming another item is a conflicting duplicate, not a credit
    t = Stream()
    t.fb("f1", "i1", "T", "x2")
    fx = _run(t, state)
    assert [r.reason for r in fx.rejects] == ["conflicting_duplicate"]
    assert fx.interleaving_credits == {}


@pytest.mark.parametrize(("exp", "items", "teams", "rankers", "pairs", "reason"), [
    ("T", ["x1"], None, None, None, "not_interleaved"),
    ("AB", ["x1"], ["a"], ["a", "b"], None, "unexpected_interleaving"),
    ("T", ["x1", "x2"], ["a", "z"], ["a", "z"], None, "unknown_arm"),
    ("M", ["x1"], ["a"], ["a", "b", "c"], [("a", "b", 0.5), ("a", "c", 0.5)],
     "bad_interleaving"),  # the logged pairs leave (b, c) out
    ("T", ["x1", "x1"], ["a", "b"], ["a", "b"], None, "bad_interleaving"),
    ("T", [1, "1"], ["a", "b"], ["a", "b"], None, "bad_interleaving"),
])
def test_impressions_that_do_not_fit_the_design_are_dead_lettered(
    exp: str, items: list[Any], teams: list[str] | None, rankers: list[str] | None,
    pairs: list[tuple[str, str, float]] | None, reason: str,
) -> None:
    s = Stream()
    s.imp("i1", exp, items, teams, rankers, pairs, arm="a")
    fx = _run(s)
    assert [r.reason for r in fx.rejects] == [reason]
    assert fx.new_impressions == [] and fx.stats == {} and not fx.interleaving_units


def test_an_ab_impression_still_counts_in_the_arm_statistics() -> None:
    s = Stream()
    s.imp("i1", "AB", ["x1"], None, arm="a")
    s.fb("f1", "i1", "AB")       # no item needed on an A/B experiment
    fx = _run(s)
    assert fx.rejects == [] and fx.stats[(3, "a", 0)].n == 1
    assert fx.stats[(3, "a", 0)].reward_sum == 1.0
    assert not fx.interleaving_units and not fx.interleaving_pairs
    assert fx.new_impressions[0].interleaving is None
