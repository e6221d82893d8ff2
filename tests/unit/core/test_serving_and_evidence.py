"""The serving rule, the per-arm statistics type and UTC handling."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from armlab.core.clock import as_utc, as_utc_or_none
from armlab.core.evidence import FIELDS, ArmSums
from armlab.core.serving import fixed_arm, served_weights
from armlab.errors import StatsError

ARMS = ("control", "a", "b")


@pytest.mark.parametrize(
    ("status", "shipped", "snapshot", "expected"),
    [
        ("running", None, {"control": 0.2, "a": 0.5, "b": 0.3}, [0.2, 0.5, 0.3]),
        ("running", None, None, [1 / 3] * 3),                    # before the first snapshot
        ("running", None, {"control": 0, "a": 0, "b": 0}, [1 / 3] * 3),
        ("running", None, {"control": 2, "a": 1, "b": 1}, [0.5, 0.25, 0.25]),  # normalised
        ("stopped", None, {"control": 0.2, "a": 0.8}, [1, 0, 0]),  # control serves
        ("shipped", "b", {"control": 0.2, "a": 0.8}, [0, 0, 1]),   # the shipped arm serves
        ("shipped", None, None, [1, 0, 0]),
    ],
)
def test_served_weights(status: str, shipped: str | None, snapshot: dict[str, float] | None,
                        expected: list[float]) -> None:
    w = served_weights(status, ARMS, control="control", shipped=shipped, snapshot=snapshot)
    assert list(w) == list(ARMS)
    assert [round(x, 12) for x in w.values()] == [round(x, 12) for x in expected]


def test_fixed_arm() -> None:
    assert fixed_arm("running", control="c", shipped=None) is None
    assert fixed_arm("draft", control="c", shipped=None) is None
    assert fixed_arm("stopped", control="c", shipped="x") == "c"
    assert fixed_arm("shipped", control="c", shipped="x") == "x"


def test_arm_sums_accumulate_impressions_and_reward_changes() -> None:
    s = ArmSums()
    s.add_impression(0.25)
    s.add_impression(0.5)
    s.add_feedback()
    s.add_reward_change(0.0, 1.0, 0.25)
    assert s == ArmSums(n=2, reward_sum=1, reward_sumsq=1, ipw_n=6, ipw_sum=4, ipw_sumsq=16,
                        ipw_n_sq=20, feedback_n=1)
    s.add_reward_change(1.0, 3.0, 0.25)  # continuous: the reward grows from 1 to 3
    assert (s.reward_sum, s.reward_sumsq, s.ipw_sum, s.ipw_sumsq) == (3, 9, 12, 144)
    total = ArmSums.from_mapping({"n": 1})
    total += s
    assert total.n == 3 and total.mean == 1.0
    assert ArmSums().mean is None
    assert tuple(s.as_dict()) == FIELDS


@pytest.mark.parametrize("field", ["n", "ipw_n", "ipw_n_sq", "reward_sumsq"])
def test_arm_sums_reject_negative_counts(field: str) -> None:
    with pytest.raises(StatsError, match=field):
        ArmSums(**{field: -1.0})


def test_arm_sums_reject_non_finite_values() -> None:
    with pytest.raises(StatsError, match="finite"):
        ArmSums(reward_sum=float("nan"))
    with pytest.raises(StatsError, match="numbers"):
        ArmSums.from_mapping({"n": "many"})  # type: ignore[dict-item]


def test_as_utc() -> None:
    naive = datetime(2030, 1, 1, 12, 0)
    assert as_utc(naive) == datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    plus2 = datetime(2030, 1, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    assert as_utc(plus2).tzinfo == UTC and as_utc(plus2).hour == 12
    assert as_utc_or_none(None) is None
