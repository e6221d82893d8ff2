"""Guardrail metrics in the ingestion handlers: per-impression values and their per-arm sums
(any / first / sum / mean of a feedback kind; an impression-side context field)."""

from __future__ import annotations

import orjson

from armlab.core.event_effects import (
    BatchState,
    ExperimentInfo,
    ImpressionState,
    MetricRule,
    handle_batch,
)
from armlab.core.evidence import ArmSums
from tests.unit.core.test_ingest import FB_T, IMP_T, T0, Stream

RULES = (
    MetricRule("skip_any", "any", feedback="skip"),
    MetricRule("skip_first", "first", feedback="skip"),
    MetricRule("dwell_sum", "sum", feedback="dwell"),
    MetricRule("dwell_mean", "mean", feedback="dwell"),
    MetricRule("latency", "mean", field=("serving", "latency_ms")),
)
EXPS = {"G": ExperimentInfo(1, "G", frozenset({"a", "b"}), "binary", "click", 100.0,
                            guardrails=RULES)}


def _imp(s: Stream, iid: str, arm: str, p: float, context: object) -> None:
    s.raw(IMP_T, orjson.dumps({
        "schema": "impression.v1", "event_id": f"e-{iid}", "impression_id": iid,
        "experiment_key": "G", "arm_key": arm, "unit_id": "u", "propensity": p,
        "served_at": T0.isoformat(), "context": context}))


def test_metric_values_and_sums_follow_each_aggregate() -> None:
    s = Stream()
    _imp(s, "i1", "a", 0.5, {"serving": {"latency_ms": 120}})
    s.fb("f1", "i1", "G", "skip", 0.0, 1)    # first: 0 -> 1; any: stays 0 (value 0)
    s.fb("f2", "i1", "G", "skip", 1.0, 2)    # any: 0 -> 1; first: no change
    s.fb("f3", "i1", "G", "dwell", 2.0, 3)   # sum 2, mean 2
    s.fb("f4", "i1", "G", "dwell", 4.0, 4)   # sum 6, mean 3
    s.fb("f5", "i1", "G", "click", 1.0, 5)   # the primary reward only
    s.fb("f6", "i1", "G", "skip", 1.0, 500)  # late: outside the 100 s window
    _imp(s, "i2", "b", 0.25, {"serving": {"latency_ms": "slow"}})  # not observed
    _imp(s, "i3", "b", 0.25, {"serving": {"latency_ms": True}})    # not observed
    _imp(s, "i4", "b", 0.25, {})                                   # not observed
    fx = handle_batch(s.decoded(), EXPS, BatchState(), feedback_topic=FB_T)

    imps = {i.impression_id: i for i in fx.new_impressions}
    assert imps["i1"].metrics == {"skip_any": [1.0, 2], "skip_first": [1.0, 2],
                                  "dwell_sum": [6.0, 2], "dwell_mean": [3.0, 2],
                                  "latency": [120.0, 1]}
    assert imps["i2"].metrics == {"skip_any": [0.0, 0], "skip_first": [0.0, 0],
                                  "dwell_sum": [0.0, 0], "dwell_mean": [0.0, 0]}
    g = fx.guardrail_stats
    assert g[(1, "a", "skip_any", 0)] == ArmSums(1, 1, 1, 2, 2, 4, 4, 2)
    assert g[(1, "a", "skip_first", 0)] == ArmSums(1, 1, 1, 2, 2, 4, 4, 2)
    assert g[(1, "a", "dwell_sum", 0)] == ArmSums(1, 6, 36, 2, 12, 144, 4, 2)
    assert g[(1, "a", "dwell_mean", 0)] == ArmSums(1, 3, 9, 2, 6, 36, 4, 2)
    # an observed field value is one event for the information gate
    assert g[(1, "a", "latency", 0)] == ArmSums(1, 120, 14400, 2, 240, 57600, 4, 1)
    assert g[(1, "b", "skip_any", 0)] == ArmSums(3, 0, 0, 12, 0, 0, 48, 0)
    assert (1, "b", "latency", 0) not in g  # no impression of b observed the latency
    assert fx.stats[(1, "a", 0)].reward_sum == 1.0  # the primary reward is unaffected


def test_feedback_on_a_stored_impression_moves_the_metric_once() -> None:
    stored = ImpressionState("old", "e-old", 1, "b", 0.25, T0, metrics={
        "skip_any": [0.0, 0], "skip_first": [0.0, 0], "dwell_sum": [1.0, 1],
        "dwell_mean": [1.0, 1]})
    state = BatchState(impressions={"old": stored}, impression_event_ids={"e-old"})
    s = Stream(partition=2)
    s.fb("d1", "old", "G", "dwell", 3.0, 10)
    s.fb("k1", "old", "G", "skip", 1.0, 10)
    s.fb("k1", "old", "G", "skip", 1.0, 10)  # redelivered: counted once
    fx = handle_batch(s.decoded(), EXPS, state, feedback_topic=FB_T)
    assert fx.impression_updates["old"].metrics == {
        "skip_any": [1.0, 1], "skip_first": [1.0, 1], "dwell_sum": [4.0, 2],
        "dwell_mean": [2.0, 2]}
    g = fx.guardrail_stats
    # old -> new changes only: dwell_sum 1 -> 4 (d1 = 3, d2 = 15), dwell_mean 1 -> 2
    assert g[(1, "b", "dwell_sum", 2)] == ArmSums(0, 3, 15, 0, 12, 240, 0, 1)
    assert g[(1, "b", "dwell_mean", 2)] == ArmSums(0, 1, 3, 0, 4, 48, 0, 1)
    assert g[(1, "b", "skip_any", 2)] == ArmSums(0, 1, 1, 0, 4, 16, 0, 1)


def test_without_guardrails_impressions_carry_no_metrics() -> None:
    plain = {"G": ExperimentInfo(1, "G", frozenset({"a"}), "binary", "click", 100.0)}
    s = Stream()
    _imp(s, "i1", "a", 1.0, {"serving": {"latency_ms": 5}})
    fx = handle_batch(s.decoded(), plain, BatchState(), feedback_topic=FB_T)
    assert fx.new_impressions[0].metrics is None and fx.guardrail_stats == {}
