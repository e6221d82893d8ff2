"""Contextual policies: feature specs, per-segment Thompson sampling, propensities, floors."""

from __future__ import annotations

import numpy as np
import pytest

from armlab.core.policies import PolicyStats, ThompsonSettings
from armlab.core.policies.context_features import ContextParams, ContextSpec
from armlab.core.policies.contextual import (
    SegmentStats,
    SegmentThompson,
    SegmentThompsonSettings,
    others_rate,
    pooling_weight,
    relative_scale,
    segment_posteriors,
)
from armlab.core.policies.thompson import ThompsonSampling
from armlab.errors import PolicyError

SEG = [{"name": "device", "kind": "categorical", "levels": ["mobile", "desktop"]}]


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# --------------------------------------------------------------------- feature specs


@pytest.mark.parametrize(
    ("features", "match"),
    [
        ([], "features"),
        ("device", "must be a list"),
        ([{"name": "d", "kind": "categorical"}], r"features\[0\] \('d'\).*non-empty 'levels'"),
        ([{"name": "d", "kind": "categorical", "levels": ["a", "a"]}], "distinct"),
        ([{"name": "d", "kind": "categorical", "levels": ["a", "other"]}], "reserved"),
        ([{"name": "d", "kind": "categorical", "levels": ["a"], "default": "b"}], "default"),
        ([{"name": "d", "kind": "numeric", "levels": ["a"]}], "takes no 'levels'"),
        ([{"name": "d", "kind": "numeric", "default": "x"}], "finite number"),
        ([{"name": "d", "kind": "numeric", "scale": 0}], "scale"),
        ([{"name": "d", "kind": "ordinal"}], "kind"),
        ([{"name": "d", "kind": "numeric"}, {"name": "d", "kind": "numeric"}], "repeated: d"),
        (["d"], r"features\[0\] must be an object"),
        ([{"name": "d", "kind": "numeric", "colour": 1}], "colour"),
    ],
)
def test_bad_feature_specs_name_the_field(features: object, match: str) -> None:
    with pytest.raises(PolicyError, match=match):
        ContextParams(features=features)


def test_encoding_defaults_other_level_and_type_errors() -> None:
    spec = ContextSpec(ContextParams(features=[
        *SEG,
        {"name": "age", "kind": "numeric", "center": 30, "scale": 10},
        {"name": "tier", "kind": "categorical", "levels": ["1", "2"], "default": "2"},
    ]).features)
    assert spec.dim == 1 + 1 + 3 + 3 and spec.n_segments == 9
    x = spec.encode({"device": "desktop", "age": 40, "tier": 1})
    np.testing.assert_array_equal(x, [1, 1.0, 0, 1, 0, 1, 0, 0])
    # missing -> documented defaults: other level / center (0) / declared default level
    np.testing.assert_array_equal(spec.encode({}), [1, 0.0, 0, 0, 1, 0, 1, 0])
    assert spec.levels({"device": "tablet", "tier": None}) == (2, 1)
    assert spec.segment_label(spec.segment_index({"device": "mobile"})) == {
        "device": "mobile", "tier": "2"}
    with pytest.raises(PolicyError, match="'age' is numeric") as exc:
        spec.encode({"age": "old"})
    assert exc.value.errors == [("context.age", "expected a finite number")]
    with pytest.raises(PolicyError, match="'age' is numeric"):
        spec.encode({"age": float("nan")})
    with pytest.raises(PolicyError, match="'device' is categorical"):
        spec.encode({"device": ["mobile"]})


def test_segment_policy_rejects_numeric_features() -> None:
    st = SegmentThompsonSettings(features=[*SEG, {"name": "age", "kind": "numeric"}])
    with pytest.raises(PolicyError, match="categorical features only; numeric: 'age'"):
        SegmentThompson(st)


# --------------------------------------------------------------------- segment Thompson


def _policy(**kw: object) -> SegmentThompson:
    return SegmentThompson(SegmentThompsonSettings(features=SEG, **kw))


def test_below_min_segment_n_a_segment_uses_the_pooled_posterior() -> None:
    # mobile has 300 observations, desktop 90 (< 100), other none
    n = np.array([[100, 100, 100], [30, 30, 30], [0, 0, 0]], dtype=float)
    s = np.array([[2, 5, 9], [6, 3, 1], [0, 0, 0]], dtype=float)
    pol = _policy(min_segment_n=100, pooling="none")
    al = pol.allocate(SegmentStats(n, s), rng())
    pooled = ThompsonSampling(ThompsonSettings(grid=129)).weights(
        PolicyStats.from_lists(n.sum(0), s.sum(0)), rng())
    np.testing.assert_allclose(al.weights[1], pooled.weights, atol=1e-12)
    np.testing.assert_allclose(al.weights[2], pooled.weights, atol=1e-12)
    own = ThompsonSampling(ThompsonSettings(grid=129)).weights(
        PolicyStats.from_lists(n[0], s[0]), rng())
    np.testing.assert_allclose(al.weights[0], own.weights, atol=1e-12)
    assert al.to_dict()["segments"][1]["source"] == "pooled"
    # one more observation in desktop crosses the threshold: it now uses its own data
    n[1, 0] += 10
    al2 = pol.allocate(SegmentStats(n, s), rng())
    assert al2.source[1] == 2 and al2.weights[1, 0] > 0.5


def test_empirical_bayes_pools_homogeneous_segments_and_not_different_ones() -> None:
    n = np.full((3, 2), 5000.0)
    same = np.array([[250, 200], [252, 198], [249, 203]], dtype=float)
    differ = np.array([[400, 100], [100, 400], [250, 250]], dtype=float)
    assert np.all(pooling_weight(n, same) == 1.0)
    assert np.all(pooling_weight(n, differ) < 0.02)
    # with w = 1 a split segment's posterior is the pooled one: same weights as pooled rows
    al = _policy(min_segment_n=100, pooling="empirical_bayes").allocate(
        SegmentStats(n, same), rng())
    np.testing.assert_allclose(al.weights[0], al.weights[2], atol=1e-12)


def test_relative_pooling_borrows_the_lift_where_segments_differ_only_in_base_rate() -> None:
    """Click rates 0.08 / 0.04 / 0.02 by segment, arm 1 at 0.8 of arm 0 everywhere: the
    absolute rates are heterogeneous (empirical_bayes borrows almost nothing) but the lifts are
    not: ``relative`` (the default) borrows the others' lift at the segment's own base rate."""
    n = np.full((3, 2), 4000.0)
    s = n * np.array([[0.08, 0.064], [0.04, 0.032], [0.02, 0.016]])
    st = SegmentThompsonSettings(features=SEG, min_segment_n=100)
    assert st.pooling == "relative"
    assert np.all(pooling_weight(n, s) < 0.05)
    scale = relative_scale(n, s, 1.0, 1.0)
    assert np.all(pooling_weight(n, np.clip(s * scale, 0, n)) == 1.0)
    a, b, source = segment_posteriors(n, s, st)
    assert np.all(source == 2)
    # every segment's posterior mean stays at its own rates, with the others' counts added
    np.testing.assert_allclose(a / (a + b), s / n, rtol=0.02)
    assert np.all(a + b > 3 * n)
    absolute = segment_posteriors(n, s, SegmentThompsonSettings(
        features=SEG, min_segment_n=100, pooling="empirical_bayes"))
    assert np.all(absolute[0] + absolute[1] < 1.2 * n)


def test_shrinkage_target_weights_other_segments_by_traffic_not_by_arm_counts() -> None:
    # arm 1 was played 900 times where it is good (0.07) and 50 times where it is not (0.03):
    # counts would put the others' rate near 0.068; each segment's traffic counts equally here
    n = np.array([[100, 900], [950, 50], [500, 500]], dtype=float)
    s = np.array([[5, 63], [47.5, 1.5], [25, 25]], dtype=float)
    rate = others_rate(n, s)
    assert rate[2, 1] == pytest.approx((0.07 + 0.03) / 2)
    assert rate[2, 0] == pytest.approx((0.05 + 0.05) / 2)
    assert rate[0, 1] == pytest.approx((1000 * 0.03 + 1000 * 0.05) / 2000)
    assert others_rate(np.array([[3.0, 0.0], [0.0, 0.0]]), np.array([[1.0, 0.0], [0.0, 0.0]]))[
        0, 1] == 0.0


def test_burn_in_and_floor_hold_per_segment() -> None:
    n = np.array([[2000, 2000, 2000], [400, 3, 400], [0, 0, 0]], dtype=float)
    s = np.array([[20, 60, 200], [4, 0, 40], [0, 0, 0]], dtype=float)
    al = _policy(min_segment_n=100, floor=0.05, burn_in=5).allocate(SegmentStats(n, s), rng())
    assert list(al.source) == [2, 1, 1]  # desktop: one arm below burn_in in it -> pooled
    assert np.all(al.weights >= 0.05 - 1e-12)
    np.testing.assert_allclose(al.weights.sum(axis=1), 1.0)
    assert al.weights[0, 2] > 0.85
    # pooled counts below burn_in: every segment uniform
    al0 = _policy(burn_in=5).allocate(SegmentStats(n * 0 + 1, s * 0), rng())
    np.testing.assert_allclose(al0.weights, 1 / 3)
    assert set(al0.source) == {0}


def test_segment_propensities_match_serving_frequencies() -> None:
    n = np.array([[300, 300, 300], [300, 300, 300], [0, 0, 0]], dtype=float)
    s = np.array([[30, 15, 12], [10, 14, 20], [0, 0, 0]], dtype=float)
    al = _policy(min_segment_n=100, floor=0.1, pooling="none").allocate(
        SegmentStats(n, s), rng())
    contexts = [{"device": "mobile"}, {"device": "desktop"}, {}]
    props = al.propensities(contexts)
    np.testing.assert_allclose(props.sum(axis=1), 1.0)
    assert not np.allclose(props[0], props[1])
    r, draws = rng(7), 20_000
    for i, ctx in enumerate(contexts):
        picks = [al.decide(ctx, r) for _ in range(draws)]
        freq = np.bincount([a for a, _ in picks], minlength=3) / draws
        se = np.sqrt(props[i] * (1 - props[i]) / draws)
        assert np.all(np.abs(freq - props[i]) < 5 * se + 1e-9), (freq, props[i])
        assert all(p == pytest.approx(props[i][a]) for a, p in picks[:50])
    arms, ps = al.decide_many(contexts * 5000, r)
    freq0 = np.bincount(arms[0::3], minlength=3) / 5000
    assert np.all(np.abs(freq0 - props[0]) < 5 * np.sqrt(props[0] * (1 - props[0]) / 5000))
    np.testing.assert_allclose(ps, props[np.tile([0, 1, 2], 5000), arms])


def test_update_is_pure_and_counts_by_segment() -> None:
    pol = _policy()
    st0 = SegmentStats.empty(3, 2)
    st1 = pol.update(st0, [{"device": "mobile"}, {"device": "tv"}, {}], [1, 0, 0], [1, 0, 1])
    assert st0.n.sum() == 0
    np.testing.assert_array_equal(st1.n, [[0, 1], [0, 0], [2, 0]])
    np.testing.assert_array_equal(st1.reward_sum, [[0, 1], [0, 0], [1, 0]])
    with pytest.raises(PolicyError, match="3 segments"):
        pol.allocate(SegmentStats.empty(2, 2), rng())
