"""OPE intervals: every estimator honours ``t_opt``, and intervals stay in the reward range."""

from __future__ import annotations

import numpy as np
import pytest

from armlab.core.stats import ope
from armlab.errors import StatsError


def _log(n: int = 60, seed: int = 3) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A small, low-rate binary log: the CLT intervals reach below 0 unless clipped."""
    rng = np.random.default_rng(seed)
    log_p = np.array([0.8, 0.2])
    a = rng.choice(2, size=n, p=log_p)
    r = rng.binomial(1, np.array([0.03, 0.05])[a]).astype(float)
    r[:2] = 1.0  # at least a couple of clicks, so the estimates are not degenerate
    return [str(x) for x in a], r, log_p[a]


def test_snipw_confidence_sequence_uses_t_opt_like_ipw_and_dr() -> None:
    """evaluate_policy passed t_opt to IPW and DR but not to SNIPW, whose confidence sequence
    was then always tuned at DEFAULT_CS_HORIZON whatever the caller planned."""
    acts, r, p = _log(400)
    target = {"0": 0.3, "1": 0.7}
    tp = [target[a] for a in acts]
    t_opt = 50
    assert t_opt != ope.DEFAULT_CS_HORIZON
    res = ope.evaluate_policy(acts, r, p, target, t_opt=t_opt)
    alone = ope.snipw(r, p, tp, confidence_sequence=True, t_opt=t_opt)
    default = ope.snipw(r, p, tp, confidence_sequence=True)
    assert default.cs_high != pytest.approx(alone.cs_high)  # t_opt changes the boundary
    assert res["snipw"].cs_low == pytest.approx(alone.cs_low)
    assert res["snipw"].cs_high == pytest.approx(alone.cs_high)
    # the same horizon as the other estimators: their radii all follow cs_radius(..., t_opt)
    for name in ("ipw", "snipw", "dr"):
        e = res[name]
        assert e.cs_low is not None and e.cs_high is not None
        radius = (e.cs_high - e.cs_low) / 2
        sd = e.se * np.sqrt(e.n_events)
        assert radius == pytest.approx(ope.cs_radius(sd, e.n_events, 0.05, t_opt=t_opt)), name


def test_binary_reward_intervals_lie_in_0_1() -> None:
    acts, r, p = _log()
    target = {"0": 0.0, "1": 1.0}  # all weight on the rarely logged arm: heavy weights
    raw = ope.evaluate_policy(acts, r, p, target)
    assert min(e.ci_low for e in raw.values()) < 0  # the case that needs clipping
    assert min(e.cs_low for e in raw.values() if e.cs_low is not None) < 0
    res = ope.evaluate_policy(acts, r, p, target, reward_range=(0.0, 1.0))
    for name, e in res.items():
        assert e.cs_low is not None and e.cs_high is not None
        assert 0.0 <= e.ci_low <= e.ci_high <= 1.0, (name, e)
        assert 0.0 <= e.cs_low <= e.cs_high <= 1.0, (name, e)
        assert e.value == raw[name].value  # the point estimate is not touched
        assert e.reward_range == (0.0, 1.0)
        # an end inside the range is unchanged
        assert e.ci_high == pytest.approx(min(raw[name].ci_high, 1.0))
        assert e.ci_low == pytest.approx(max(raw[name].ci_low, 0.0))
    logged = ope.on_policy_mean([0.0] * 30 + [1.0], reward_range=(0.0, 1.0))
    assert logged.ci_low == 0.0 and logged.ci_high <= 1.0
    assert ope.on_policy_mean([0.0] * 30 + [1.0]).ci_low < 0  # unclipped without a range


def test_interval_beyond_the_range_collapses_to_its_nearest_end() -> None:
    # IPW may leave the range (weights 4, 2, 2, 2 on rewards of 1): value 2.5, CI above 1
    est = ope.ipw([1.0, 1.0, 1.0, 1.0], [0.25] * 4, [1.0, 0.5, 0.5, 0.5],
                  reward_range=(0.0, 1.0), confidence_sequence=True)
    assert est.value == pytest.approx(2.5)
    assert (est.ci_low, est.ci_high) == (1.0, 1.0)


def test_continuous_rewards_without_a_declared_range_are_not_clipped() -> None:
    r = np.array([-3.0, 0.5, 12.0, 4.0, -1.0, 7.5])
    p = np.full(6, 0.5)
    t = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    plain = ope.ipw(r, p, t)
    assert plain.reward_range is None
    assert plain.ci_low < r.min() or plain.ci_high > r.max()  # not the observed range
    declared = ope.ipw(r, p, t, reward_range=(-5.0, 20.0))
    assert declared.ci_low >= -5.0 and declared.ci_high <= 20.0


@pytest.mark.parametrize(
    ("reward_range", "match"),
    [((0.0, 0.5), r"reward 1.0 lies outside reward_range \[0, 0.5\]"),
     ((1.0, 0.0), "low <= high"),
     ((0.0, float("inf")), "finite")],
)
def test_reward_range_is_checked(reward_range: tuple[float, float], match: str) -> None:
    with pytest.raises(StatsError, match=match):
        ope.snipw([1.0, 0.0], [0.5, 0.5], [1.0, 0.0], reward_range=reward_range)
