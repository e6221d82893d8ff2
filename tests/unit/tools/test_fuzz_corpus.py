"""The fuzz corpus is deterministic, covers every family, and is mostly rejected."""

from __future__ import annotations

from collections import Counter

from armlab.core.events import DecodeFailure, FeedbackV1, ImpressionV1, decode
from armlab.tools.fuzz import FAMILIES, fuzz_records


def test_same_seed_same_records_and_every_family() -> None:
    a = list(fuzz_records(2_000, seed=7, experiment_key="fz", arms="ab"))
    b = list(fuzz_records(2_000, seed=7, experiment_key="fz", arms="ab"))
    assert a == b
    assert {r.family for r in a} == set(FAMILIES)
    assert a != list(fuzz_records(2_000, seed=8, experiment_key="fz", arms="ab"))


def test_decode_never_raises_and_gives_many_reasons() -> None:
    reasons: Counter[str] = Counter()
    for r in fuzz_records(3_000, seed=1, experiment_key="fz", arms="ab"):
        ev = decode(r.value, ImpressionV1 if r.topic == "impression" else FeedbackV1)
        reasons[ev.reason if isinstance(ev, DecodeFailure) else "valid"] += 1
    assert reasons["valid"] < 1_000
    assert {"not_json", "bad_utf8", "wrong_type", "non_finite", "out_of_range",
            "bad_propensity", "too_deep", "bad_identifier", "unknown_schema"} <= set(reasons)
