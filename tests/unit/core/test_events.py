"""Event validation: a table of bad records, each with the reason code it must get."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import orjson
import pytest

from armlab.core.events import (
    MAX_RECORD_BYTES,
    DecodeFailure,
    FeedbackV1,
    ImpressionV1,
    decode,
    make_feedback,
    make_impression,
    parse_event,
)
from armlab.errors import InvalidEvent

IMP = {
    "schema": "impression.v1",
    "event_id": "e1",
    "impression_id": "i1",
    "experiment_key": "exp",
    "arm_key": "a",
    "unit_id": "u1",
    "propensity": 0.5,
    "served_at": "2026-01-01T00:00:00Z",
    "items": ["m1", 2],
    "context": {"page": "home"},
}
FB = {
    "schema": "feedback.v1",
    "event_id": "f1",
    "impression_id": "i1",
    "experiment_key": "exp",
    "kind": "click",
    "value": 1.0,
    "occurred_at": "2026-01-01T00:00:05+02:00",
}


def _with(base: dict, **changes: object) -> bytes:
    d = dict(base)
    for k, v in changes.items():
        if v is _DROP:
            d.pop(k, None)
        else:
            d[k] = v
    return json.dumps(d).encode()  # stdlib: lets NaN/Infinity through as JSON tokens


_DROP = object()

BAD_IMPRESSIONS = [
    (b"not json at all", "not_json"),
    (b"", "not_json"),
    (b"   ", "not_json"),
    (b"{", "not_json"),
    (b'{"schema": "impression.v1",}', "not_json"),
    (b"\xff\xfe\x00garbage", "bad_utf8"),
    (b'{"schema": "impression.v1", "unit_id": "\xc3\x28"}', "bad_utf8"),
    (b"[1, 2, 3]", "not_object"),
    (b'"a string"', "not_object"),
    (b"42", "not_object"),
    (b"null", "not_object"),
    (b"x" * (MAX_RECORD_BYTES + 1), "too_large"),
    (_with(IMP, context={"pad": "x" * MAX_RECORD_BYTES}), "too_large"),
    (_with(IMP, context={str(i): i for i in range(100)}), "too_large"),
    (_with(IMP, schema=_DROP), "missing_field"),
    (_with(IMP, schema="impression.v2"), "unknown_schema"),
    (_with(IMP, schema="impression"), "unknown_schema"),
    (_with(IMP, schema=1), "unknown_schema"),
    (_with(FB), "wrong_topic"),
    (_with(IMP, event_id=_DROP), "missing_field"),
    (_with(IMP, impression_id=_DROP), "missing_field"),
    (_with(IMP, experiment_key=_DROP), "missing_field"),
    (_with(IMP, arm_key=_DROP), "missing_field"),
    (_with(IMP, unit_id=_DROP), "missing_field"),
    (_with(IMP, propensity=_DROP), "missing_field"),
    (_with(IMP, served_at=_DROP), "missing_field"),
    (_with(IMP, propensity="0.5"), "wrong_type"),
    (_with(IMP, propensity=True), "wrong_type"),
    (_with(IMP, propensity=None), "wrong_type"),
    (_with(IMP, propensity=[0.5]), "wrong_type"),
    (_with(IMP, propensity=0), "bad_propensity"),
    (_with(IMP, propensity=0.0), "bad_propensity"),
    (_with(IMP, propensity=-0.2), "bad_propensity"),
    (_with(IMP, propensity=1.0000001), "bad_propensity"),
    (_with(IMP, propensity=7), "bad_propensity"),
    (_with(IMP, propensity=float("nan")), "non_finite"),
    (_with(IMP, propensity=float("inf")), "non_finite"),
    (_with(IMP, propensity=float("-inf")), "non_finite"),
    (b'{"schema":"impression.v1","event_id":"e","impression_id":"i","experiment_key":"x",'
     b'"arm_key":"a","unit_id":"u","propensity":1e999,"served_at":"2026-01-01T00:00:00Z"}',
     "non_finite"),
    (_with(IMP, served_at="2026-01-01T00:00:00"), "bad_timestamp"),
    (_with(IMP, served_at="yesterday"), "bad_timestamp"),
    (_with(IMP, served_at=1767225600), "bad_timestamp"),
    (_with(IMP, served_at=1767225600.5), "bad_timestamp"),
    (_with(IMP, served_at="1970-01-01T00:00:00Z"), "bad_timestamp"),
    (_with(IMP, served_at="2999-01-01T00:00:00Z"), "bad_timestamp"),
    (_with(IMP, served_at=None), "bad_timestamp"),
    (_with(IMP, event_id=""), "empty_field"),
    (_with(IMP, arm_key=""), "empty_field"),
    (_with(IMP, event_id="x" * 65), "too_long"),
    (_with(IMP, unit_id="u" * 129), "too_long"),
    (_with(IMP, items=["m"] * 1001), "too_long"),
    (_with(IMP, items=["x" * 200]), "too_long"),
    (_with(IMP, arm_key="a b"), "bad_identifier"),
    (_with(IMP, experiment_key="exp\n"), "bad_identifier"),
    (_with(IMP, event_id=123), "wrong_type"),
    (_with(IMP, arm_key=["a"]), "wrong_type"),
    (_with(IMP, items="m1,m2"), "wrong_type"),
    (_with(IMP, items=[None]), "wrong_type"),
    (_with(IMP, items=[{"id": 1}]), "wrong_type"),
    (_with(IMP, context=[1, 2]), "wrong_type"),
    (_with(IMP, surprise=1), "unknown_field"),
    # values the database cannot store (each one stopped the consumer before): one rule
    (_with(IMP, propensity=1e-300), "bad_propensity"),
    (_with(IMP, propensity=1e-160), "bad_propensity"),
    (_with(IMP, propensity=5e-324), "bad_propensity"),
    (_with(IMP, items=[2**63]), "out_of_range"),
    (_with(IMP, items=[-(2**63) - 1]), "out_of_range"),
    (_with(IMP, items=[10**40]), "out_of_range"),
    (_with(IMP, context={"n": 2**64}), "out_of_range"),
    (_with(IMP, context={"deep": [[{"n": -(10**30)}]]}), "out_of_range"),
    (_with(IMP, context={"s": "a\u0000b"}), "bad_string"),
    (_with(IMP, context={"a\u0000": 1}), "bad_string"),
    (_with(IMP, context={"l": ["x", "\u0000"]}), "bad_string"),
    (_with(IMP, items=["m\u0000"]), "bad_string"),
    (b'{"schema":"impression.v1","event_id":"e","impression_id":"i","experiment_key":"x",'
     b'"arm_key":"a","unit_id":"u\\u0000","propensity":0.5,'
     b'"served_at":"2026-01-01T00:00:00Z"}', "bad_identifier"),
    (_with(IMP, unit_id="u\x00v"), "bad_identifier"),
    # a lone surrogate escape is not JSON to the parser
    (_with(IMP, context={"s": "\ud800"}), "not_json"),
    (_with(IMP, unit_id="\udfff"), "not_json"),
    (_with(IMP, event_id="e\ud800"), "not_json"),
    (_with(IMP, context={"x": float("nan")}), "non_finite"),
    (_with(IMP, context={"x": [1.0, float("inf")]}), "non_finite"),
    (_with(IMP, context={"x": {"y": float("-inf")}}), "non_finite"),
    (b'{"schema":"impression.v1","event_id":"e","impression_id":"i","experiment_key":"x",'
     b'"arm_key":"a","unit_id":"u","propensity":0.5,"served_at":"2026-01-01T00:00:00Z",'
     b'"context":{"x":1e999}}', "non_finite"),
    (_with(IMP, context={"d": json.loads("[" * 20 + "]" * 20)}), "too_deep"),
]

BAD_FEEDBACK = [
    (_with(FB, kind="clack"), "unknown_kind"),
    (_with(FB, kind=None), "unknown_kind"),
    (_with(FB, kind=_DROP), "missing_field"),
    (_with(FB, value=float("nan")), "non_finite"),
    (_with(FB, value=float("inf")), "non_finite"),
    (_with(FB, value="1"), "wrong_type"),
    (_with(FB, value=False), "wrong_type"),
    (_with(FB, value=1e13), "out_of_range"),
    (_with(FB, occurred_at="2026-01-01 00:00"), "bad_timestamp"),
    (_with(FB, occurred_at=_DROP), "missing_field"),
    (_with(FB, impression_id=""), "empty_field"),
    (_with(FB, schema="feedback.v0"), "unknown_schema"),
    (_with(IMP), "wrong_topic"),
]


@pytest.mark.parametrize(("raw", "reason"), BAD_IMPRESSIONS)
def test_bad_impression_gets_its_reason(raw: bytes, reason: str) -> None:
    result = decode(raw, ImpressionV1)
    assert isinstance(result, DecodeFailure), result
    assert result.reason == reason, result
    assert result.detail


@pytest.mark.parametrize(("raw", "reason"), BAD_FEEDBACK)
def test_bad_feedback_gets_its_reason(raw: bytes, reason: str) -> None:
    result = decode(raw, FeedbackV1)
    assert isinstance(result, DecodeFailure), result
    assert result.reason == reason, result


def test_table_is_large_enough() -> None:
    assert len(BAD_IMPRESSIONS) + len(BAD_FEEDBACK) >= 40


def test_limits_accept_the_edges() -> None:
    """The storable-value rule rejects only what cannot be stored: its edges pass."""
    from armlab.core.events import MAX_JSON_DEPTH, MIN_PROPENSITY

    for raw in (
        _with(IMP, propensity=MIN_PROPENSITY),
        _with(IMP, items=[2**63 - 1, -(2**63)], context={"n": 2**63 - 1, "m": -(2**63)}),
        _with(IMP, context={"d": json.loads("[" * (MAX_JSON_DEPTH - 1)
                                            + "]" * (MAX_JSON_DEPTH - 1))}),
        _with(IMP, context={"s": "tab\there \u00e9\U0001f600", "f": 1e308, "t": 5e-324}),
    ):
        assert isinstance(decode(raw, ImpressionV1), ImpressionV1), decode(raw, ImpressionV1)


def test_sdk_builder_applies_the_same_rule() -> None:
    for kw, reason in (
        ({"propensity": 1e-300}, "bad_propensity"),
        ({"context": {"n": 2**70}}, "out_of_range"),
        ({"context": {"s": "\x00"}}, "bad_string"),
        ({"context": {"x": float("nan")}}, "non_finite"),
        ({"context": {"when": datetime(2026, 1, 1)}}, "wrong_type"),
        ({"items": [2**64]}, "out_of_range"),
        ({"unit_id": "has space"}, "bad_identifier"),
        ({"context": {"s": "\ud800"}}, "bad_string"),
        ({"context": {"\udfff": 1}}, "bad_string"),
        ({"items": ["a\x00"]}, "bad_string"),
        ({"arm_key": "a\ud800"}, "wrong_type"),  # not a valid str to pydantic
    ):
        args = {"experiment_key": "e", "arm_key": "a", "unit_id": "u", "propensity": 0.5, **kw}
        with pytest.raises(InvalidEvent) as err:
            make_impression(**args)  # type: ignore[arg-type]
        assert err.value.reason == reason, (kw, err.value)


def test_unit_id_rule_is_shared() -> None:
    from armlab.core.events import MAX_UNIT_ID_LEN, unit_id_problem

    assert unit_id_problem("user-1@example.com") is None
    assert unit_id_problem("u" * MAX_UNIT_ID_LEN) is None
    for bad in ("", "u" * (MAX_UNIT_ID_LEN + 1), "a b", "a\nb", "a\x00", "\ud800", 5, None):
        assert unit_id_problem(bad) is not None, bad


def test_good_events_round_trip() -> None:
    imp = decode(_with(IMP), ImpressionV1)
    assert isinstance(imp, ImpressionV1)
    assert imp.served_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert imp.items == ["m1", 2]
    assert decode(imp.to_json(), ImpressionV1) == imp
    fb = decode(_with(FB), FeedbackV1)
    assert isinstance(fb, FeedbackV1)
    assert fb.occurred_at.utcoffset() is not None
    assert decode(fb.to_json()) == fb
    assert orjson.loads(fb.to_json())["schema"] == "feedback.v1"
    # propensity exactly 1 is allowed (a shipped arm); an int 1 is a number too
    assert isinstance(decode(_with(IMP, propensity=1), ImpressionV1), ImpressionV1)


def test_builders_fill_ids_and_raise_named_errors() -> None:
    imp = make_impression(experiment_key="e", arm_key="a", unit_id="u", propensity=0.25)
    assert len(imp.event_id) == 32 and imp.impression_id != imp.event_id
    assert imp.served_at.tzinfo is not None
    with pytest.raises(InvalidEvent, match="propensity") as err:
        make_impression(experiment_key="e", arm_key="a", unit_id="u", propensity=1.5)
    assert err.value.reason == "bad_propensity"
    with pytest.raises(InvalidEvent, match="kind") as err:
        make_feedback(impression_id="i", experiment_key="e", kind="nope")
    assert err.value.reason == "unknown_kind"
    with pytest.raises(InvalidEvent) as err:
        make_impression(experiment_key="e", arm_key="a", unit_id="u", propensity=float("nan"))
    assert err.value.reason == "non_finite"
    with pytest.raises(InvalidEvent, match="bytes") as err:
        make_impression(experiment_key="e", arm_key="a", unit_id="u", propensity=0.5,
                        context={f"k{i}": "x" * 2000 for i in range(40)}).to_json()
    assert err.value.reason == "too_large"


def test_parse_event_accepts_dicts_with_wire_rules() -> None:
    ev = parse_event(dict(IMP))
    assert isinstance(ev, ImpressionV1)
    with pytest.raises(InvalidEvent) as err:
        parse_event({**IMP, "served_at": 1767225600})
    assert err.value.reason == "bad_timestamp"
    with pytest.raises(InvalidEvent) as err:
        parse_event({**FB, "schema": "feedback.v9"})
    assert err.value.reason == "unknown_schema"
