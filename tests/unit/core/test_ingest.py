"""Handler logic (no I/O): joins, pending feedback, late feedback, dedupe, IPW sums."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import orjson

from armlab.core.event_effects import (
    BatchState,
    ExperimentInfo,
    ImpressionState,
    PendingFeedback,
    handle_batch,
    referenced_ids,
)
from armlab.core.events import FeedbackV1, ImpressionV1, decode
from armlab.core.evidence import ArmSums

T0 = datetime(2026, 1, 1, tzinfo=UTC)
IMP_T, FB_T = "imps", "fbs"
EXPS = {
    "E": ExperimentInfo(1, "E", frozenset({"a", "b"}), "binary", "click", 100.0),
    "C": ExperimentInfo(2, "C", frozenset({"x"}), "continuous", "rating", 100.0),
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

    def raw(self, topic: str, value: bytes) -> None:
        self.recs.append(Rec(topic, self.partition, len(self.recs), b"k", value))

    def imp(self, iid: str, exp: str, arm: str, p: float, *, eid: str | None = None,
            at: datetime = T0) -> None:
        self.raw(IMP_T, orjson.dumps({
            "schema": "impression.v1", "event_id": eid or f"e-{iid}", "impression_id": iid,
            "experiment_key": exp, "arm_key": arm, "unit_id": "u", "propensity": p,
            "served_at": at.isoformat()}))

    def fb(self, eid: str, iid: str, exp: str, kind: str, value: float, dt_s: float) -> None:
        self.raw(FB_T, orjson.dumps({
            "schema": "feedback.v1", "event_id": eid, "impression_id": iid,
            "experiment_key": exp, "kind": kind, "value": value,
            "occurred_at": (T0 + timedelta(seconds=dt_s)).isoformat()}))

    def decoded(self) -> list:
        exp = {IMP_T: ImpressionV1, FB_T: FeedbackV1}
        return [(r, decode(r.value, exp[r.topic])) for r in self.recs]


def test_one_batch_against_hand_computed_statistics() -> None:
    s = Stream()
    s.imp("i1", "E", "a", 0.5)
    s.fb("f1", "i1", "E", "click", 1.0, 10)      # applied: reward 0 -> 1
    s.fb("f2", "i1", "E", "click", 1.0, 20)      # applied, binary: no change
    s.fb("f3", "i2", "E", "click", 1.0, 5)       # pending: i2 not seen yet
    s.imp("i2", "E", "b", 0.25)                  # resolves f3 -> reward 1
    s.fb("f4", "i1", "E", "click", 1.0, 200)     # late (window 100 s)
    s.fb("f1", "i1", "E", "click", 1.0, 10)      # duplicate event_id
    s.imp("i1", "E", "a", 0.5)                   # duplicate impression event
    s.imp("i3", "E", "z", 0.5)                   # unknown arm
    s.imp("i4", "NOPE", "a", 0.5)                # unknown experiment
    s.raw(IMP_T, b"{garbage")                    # malformed
    s.fb("f6", "i1", "E", "dwell", 30.0, 15)     # applied, not the reward metric
    s.fb("f7", "i1", "C", "click", 1.0, 15)      # names the wrong experiment
    s.imp("c1", "C", "x", 1.0)
    s.fb("r1", "c1", "C", "rating", 2.5, 1)      # continuous: 2.5
    s.fb("r2", "c1", "C", "rating", 1.5, 2)      # continuous: 4.0
    s.fb("r3", "c1", "C", "rating", 1.0, -5)     # before the impression
    fx = handle_batch(s.decoded(), EXPS, BatchState(), feedback_topic=FB_T)

    assert fx.stats == {
        (1, "a", 0): ArmSums(1, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 2),
        (1, "b", 0): ArmSums(1, 1.0, 1.0, 4.0, 4.0, 16.0, 16.0, 1),
        (2, "x", 0): ArmSums(1, 4.0, 16.0, 1.0, 4.0, 16.0, 1.0, 2),
    }
    reasons = sorted(r.reason for r in fx.rejects)
    assert reasons == sorted(["late", "unknown_arm", "unknown_experiment", "not_json",
                              "experiment_mismatch", "before_impression"])
    c = {k[0]: v for k, v in fx.counters.items()}
    assert c["impression"] == 3 and c["duplicate"] == 2
    assert c["feedback_applied"] == 5 and c["feedback_pending"] == 1
    assert c["pending_resolved"] == 1
    new = {i.impression_id: (i.reward, i.feedback_count) for i in fx.new_impressions}
    assert new == {"i1": (1.0, 3), "i2": (1.0, 1), "c1": (4.0, 2)}
    assert fx.feedback_status == {"f3": "applied"}
    statuses = {ev.event_id: st for ev, _, st in fx.feedback_rows}
    assert statuses == {"f1": "applied", "f2": "applied", "f3": "pending", "f4": "late",
                        "f6": "applied", "f7": "rejected", "r1": "applied",
                        "r2": "applied", "r3": "late"}
    garbage = next(r for r in fx.rejects if r.reason == "not_json")
    assert (garbage.topic, garbage.offset, garbage.raw) == (IMP_T, 10, b"{garbage")
    dlq = orjson.loads(garbage.to_dlq("g"))
    assert dlq["reason"] == "not_json" and dlq["offset"] == 10 and dlq["raw"] == "e2dhcmJhZ2U="


def test_feedback_on_stored_impression_updates_it_and_stats() -> None:
    """State from earlier batches: a stored impression and a stored pending feedback."""
    s = Stream(partition=3)
    s.fb("f1", "old", "E", "click", 1.0, 50)
    s.imp("new", "E", "b", 0.125)
    state = BatchState(
        impressions={"old": ImpressionState("old", "e-old", 1, "a", 0.25, T0)},
        impression_event_ids={"e-old"},
        pending={"new": [PendingFeedback("pf", "new", "E", "click", 1.0,
                                         T0 + timedelta(seconds=3), 3),
                         PendingFeedback("pl", "new", "E", "click", 1.0,
                                         T0 + timedelta(seconds=999), 3)]},
    )
    fx = handle_batch(s.decoded(), EXPS, state, feedback_topic=FB_T)
    assert fx.impression_updates["old"].reward == 1.0
    assert fx.impression_updates["old"].feedback_count == 1
    # p = 0.25: r/p = 4, r^2/p^2 = 16; no n change for the stored impression
    assert fx.stats[(1, "a", 3)] == ArmSums(0, 1.0, 1.0, 0.0, 4.0, 16.0, 0.0, 1)
    # p = 1/8: 1/p = 8, 1/p^2 = 64
    assert fx.stats[(1, "b", 3)] == ArmSums(1, 1.0, 1.0, 8.0, 8.0, 64.0, 64.0, 1)
    assert fx.feedback_status == {"pf": "applied", "pl": "late"}
    late = next(r for r in fx.rejects if r.reason == "late")
    assert late.offset == -1 and orjson.loads(late.raw)["event_id"] == "pl"


def test_redelivered_batch_changes_nothing() -> None:
    """The same records against the state they produced: all duplicates, no stat change."""
    s = Stream()
    s.imp("i1", "E", "a", 0.5)
    s.fb("f1", "i1", "E", "click", 1.0, 10)
    state = BatchState(
        impressions={"i1": ImpressionState("i1", "e-i1", 1, "a", 0.5, T0, 1.0, 1)},
        impression_event_ids={"e-i1"}, feedback_event_ids={"f1"},
    )
    fx = handle_batch(s.decoded(), EXPS, state, feedback_topic=FB_T)
    assert fx.stats == {} and fx.rejects == [] and fx.new_impressions == []
    assert dict(fx.counters) == {("duplicate", 0): 2}


def test_events_older_than_the_retention_horizon_are_expired_even_as_duplicates() -> None:
    """A stored copy older than the horizon may have been dropped: every copy is refused, the
    first time and when it comes again, so none is ever counted twice."""
    s = Stream()
    s.imp("old", "E", "a", 0.5, at=T0 - timedelta(seconds=1))
    s.imp("edge", "E", "a", 0.5)                  # served exactly at the horizon: kept
    s.fb("f-old", "edge", "E", "click", 1.0, -1)  # occurred before the horizon
    s.fb("f-new", "edge", "E", "click", 1.0, 5)
    state = BatchState(impression_event_ids={"e-old"}, feedback_event_ids={"f-old"})
    fx = handle_batch(s.decoded(), EXPS, state, feedback_topic=FB_T, horizon=T0)
    assert [(r.reason, r.offset) for r in fx.rejects] == [("expired", 0), ("expired", 2)]
    assert [i.impression_id for i in fx.new_impressions] == ["edge"]
    assert [ev.event_id for ev, _, status in fx.feedback_rows] == ["f-new"]
    # without a horizon (no retention) the same stream has no expired record
    fx = handle_batch(s.decoded(), EXPS, BatchState(), feedback_topic=FB_T)
    assert not [r for r in fx.rejects if r.reason == "expired"]


def test_referenced_ids() -> None:
    s = Stream()
    s.imp("i1", "E", "a", 0.5)
    s.fb("f1", "i9", "E", "click", 1.0, 10)
    imp_ids, imp_events, fb_events, arriving = referenced_ids(s.decoded())
    assert imp_ids == {"i1", "i9"} and imp_events == {"e-i1"}
    assert fb_events == {"f1"} and arriving == {"i1"}


def test_dead_letter_of_a_huge_record_is_truncated_with_length_and_hash() -> None:
    import base64
    import hashlib

    from armlab.core.event_effects import MAX_DLQ_RAW_BYTES, Reject

    raw = b"{" + b"x" * 900_000
    out = orjson.loads(Reject("too_large", "d" * 10_000, "t", 0, 5, raw).to_dlq("g"))
    assert out["raw_truncated"] is True and out["raw_length"] == len(raw)
    assert out["raw_sha256"] == hashlib.sha256(raw).hexdigest()
    assert base64.b64decode(out["raw"]) == raw[:MAX_DLQ_RAW_BYTES]
    assert len(out["detail"]) <= 2000
    assert len(Reject("too_large", "d", "t", 0, 5, raw).to_dlq("g")) < 400_000
    small = orjson.loads(Reject("not_json", "d", "t", 0, 6, b"abc").to_dlq("g"))
    assert base64.b64decode(small["raw"]) == b"abc" and "raw_truncated" not in small
    assert small["raw_length"] == 3
