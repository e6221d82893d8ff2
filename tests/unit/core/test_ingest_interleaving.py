"""Interleaving experiments in the pure batch handler: refusals, per-unit IPW credits, pair
tallies, pending clicks, duplicates (no I/O; the store tests write the same effects)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from armlab.core.event_effects import (
    BatchState,
    ExperimentInfo,
    ImpressionState,
    PendingFeedback,
    handle_batch,
)
from armlab.core.events import FeedbackV1, ImpressionV1, decode
from armlab.core.interleaving.team_draft import Interleaving, ShownItem, credit
from armlab.core.stats.interleaving import unit_preferences

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


# -- against a direct reference computation -----------------------------------------------

RANKERS = ("r0", "r1", "r2")


@st.composite
def _streams(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[tuple[bool, dict]], list[int]]:
    """Impressions (rankers, items, teams, pair propensities, unit), the event stream with
    copies in any order (click or not, document), and the batch boundaries."""
    imps = []
    for i in range(draw(st.integers(1, 5))):
        rankers = draw(st.sampled_from([("r0", "r1"), ("r1", "r2"), ("r0", "r2"), RANKERS]))
        n = draw(st.integers(1, 4))
        teams = [draw(st.sampled_from(rankers)) for _ in range(n)]
        pairs = [(a, b, draw(st.sampled_from([1.0, 0.5, 0.25])))
                 for j, a in enumerate(rankers) for b in rankers[j + 1:]]
        imps.append({"iid": f"i{i}", "unit": draw(st.sampled_from(["u0", "u1"])),
                     "rankers": list(rankers), "items": [f"x{i}.{j}" for j in range(n)],
                     "teams": teams, "pairs": pairs})
    events: list[tuple[bool, dict[str, Any]]] = [(False, imp) for imp in imps]
    for c in range(draw(st.integers(0, 10))):
        imp = draw(st.sampled_from(imps))
        j = draw(st.integers(0, len(imp["items"])))  # one past the end: not shown
        events.append((True, {"eid": f"c{c}", "iid": imp["iid"], "item": f"x{imp['iid'][1:]}.{j}"}))
    events = draw(st.permutations(events))
    copies = draw(st.lists(st.sampled_from(events), max_size=5))
    stream = events + copies  # copies come later (redeliveries)
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=4)))
    return imps, stream, cuts


def _reference(exp: ExperimentInfo, imps: list[dict[str, Any]], clicked: dict[str, set[str]]
               ) -> tuple[dict[tuple[str, str, str], float], dict[tuple[str, str], list[int]]]:
    """Credits per (unit, a, b) by team_draft.credit and unit_preferences(aggregate="sum"),
    and per pair [compared, a_wins, b_wins, a_clicks, b_clicks]."""
    pairs = [(a, b) for j, a in enumerate(exp.rankers) for b in exp.rankers[j + 1:]]
    diff = np.zeros((len(imps), len(pairs)))
    compared = np.zeros((len(imps), len(pairs)), dtype=bool)
    prop = np.ones((len(imps), len(pairs)))
    tallies = {p: [0, 0, 0, 0, 0] for p in pairs}
    for t, imp in enumerate(imps):
        rankers = tuple(r for r in exp.rankers if r in imp["rankers"])  # arm order
        il = Interleaving(rankers, tuple(ShownItem(item, pos, team, 0) for pos, (item, team)
                                         in enumerate(zip(imp["items"], imp["teams"]))),
                          (), len(imp["items"]), "team_draft_multileave")
        cr = credit(il, clicked.get(imp["iid"], set()))
        logged = {frozenset((a, b)): q for a, b, q in imp["pairs"]}
        for c, (a, b) in enumerate(pairs):
            if (a, b) in cr.pairs:
                diff[t, c], compared[t, c] = cr.pairs[(a, b)], True
                prop[t, c] = logged[frozenset((a, b))]
                row = tallies[(a, b)]
                row[0] += 1
                row[1] += cr.outcome(a, b) > 0
                row[2] += cr.outcome(a, b) < 0
                row[3] += int(cr.credits[a])
                row[4] += int(cr.credits[b])
    units = [imp["unit"] if exp.unit == "user" else imp["iid"] for imp in imps]
    codes = {u: i for i, u in enumerate(sorted(set(units)))}
    ids, x = unit_preferences(diff, [codes[u] for u in units], compared=compared,
                              propensity=prop, aggregate="sum")
    names = sorted(codes)
    out = {(names[int(u)], a, b): float(x[i, c]) for i, u in enumerate(ids)
           for c, (a, b) in enumerate(pairs)}
    return out, tallies


@pytest.mark.parametrize("unit", ["request", "user"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_streams())
def test_credits_match_a_direct_reference_in_any_order_with_copies(unit: str, data: Any) -> None:
    imps, stream, cuts = data
    exp = _exp(9, "H", RANKERS, unit=unit)
    s = Stream()
    for is_click, doc in stream:
        if is_click:
            s.fb(doc["eid"], doc["iid"], "H", doc["item"])
        else:
            s.imp(doc["iid"], "H", doc["items"], doc["teams"], doc["rankers"], doc["pairs"],
                  unit=doc["unit"])
    decoded = s.decoded()
    state = BatchState()  # the stored rows, carried from batch to batch
    credits: dict[tuple[str, str, str], float] = {}
    tallies: dict[tuple[str, str], list[int]] = {}
    units: Counter[str] = Counter()
    for lo, hi in zip([0, *cuts], [*cuts, len(decoded)], strict=True):
        fx = handle_batch(decoded[lo:hi], {"H": exp}, state, feedback_topic=FB_T)
        assert {r.reason for r in fx.rejects} <= {"item_not_shown"}
        for (_, u, a, b), v in fx.interleaving_credits.items():
            credits[(u, a, b)] = credits.get((u, a, b), 0.0) + v
        for (_, a, b, _), row in fx.interleaving_pairs.items():
            tallies[(a, b)] = [x + y for x, y in zip(tallies.get((a, b), [0] * 5), row,
                                                      strict=True)]
        units.update({u: n for (_, u), n in fx.interleaving_units.items()})
    clicked: dict[str, set[str]] = {}
    for is_click, doc in {d[1].get("eid", d[1]["iid"]): d for d in stream}.values():
        if is_click:
            clicked.setdefault(doc["iid"], set()).add(doc["item"])
    want_credits, want_tallies = _reference(exp, imps, clicked)
    assert {k: v for k, v in credits.items() if v} == pytest.approx(
        {k: v for k, v in want_credits.items() if v})
    assert {k: v for k, v in tallies.items() if any(v)} == {
        k: v for k, v in want_tallies.items() if any(v)}
    assert dict(units) == dict(Counter(imp["unit"] if unit == "user" else imp["iid"]
                                       for imp in imps))
    assert state.pending == {}  # every click found its impression


def test_after_a_stop_an_impression_without_interleaving_is_not_running() -> None:
    """A stopped or shipped experiment serves its fixed arm's own list (no interleaving): such
    an impression is refused as not running, not as not interleaved."""
    stopped = replace(EXPS["T"], status="stopped", ended_at=T0 - timedelta(seconds=1))
    s = Stream()
    s.imp("i1", "T", ["x1"], None, arm="a")
    fx = handle_batch(s.decoded(), {"T": stopped}, BatchState(), feedback_topic=FB_T)
    assert [r.reason for r in fx.rejects] == ["experiment_not_running"]
