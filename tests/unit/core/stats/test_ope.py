"""Off-policy estimators: hand-computed reference numbers, invalid inputs, and coverage."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from armlab.core.stats import ope
from armlab.errors import StatsError

Z975 = 1.959963984540054

# A four-event log worked by hand:
#   rewards      1     0     1     0
#   propensity   1/2   1/4   1/2   1/4
#   target prob  1     0     1/2   1
#   weight       2     0     1     4
R = [1.0, 0.0, 1.0, 0.0]
P = [0.5, 0.25, 0.5, 0.25]
T = [1.0, 0.0, 0.5, 1.0]


def _sample_sd(xs: list[Fraction]) -> float:
    m = sum(xs) / len(xs)
    return math.sqrt(float(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)))


def test_ipw_matches_hand_computation() -> None:
    est = ope.ipw(R, P, T)
    # terms w*r = 2, 0, 1, 0 -> mean 3/4; sample sd = sqrt(11/12)
    assert est.value == pytest.approx(0.75)
    se = math.sqrt(11 / 12) / 2
    assert est.se == pytest.approx(se)
    assert est.ci_low == pytest.approx(0.75 - Z975 * se)
    assert est.ci_high == pytest.approx(0.75 + Z975 * se)
    assert est.n_events == 4
    assert est.n_weighted == 3
    assert est.ess == pytest.approx(49 / 21)  # (2+0+1+4)^2 / (4+0+1+16)
    assert est.max_weight == 4.0
    assert est.mean_weight == pytest.approx(1.75)


def test_snipw_matches_hand_computation() -> None:
    est = ope.snipw(R, P, T)
    v = Fraction(3, 7)
    assert est.value == pytest.approx(float(v))
    w = [Fraction(2), Fraction(0), Fraction(1), Fraction(4)]
    r = [Fraction(1), Fraction(0), Fraction(1), Fraction(0)]
    mean_w = Fraction(7, 4)
    terms = [wi * (ri - v) / mean_w for wi, ri in zip(w, r, strict=True)]
    assert est.se == pytest.approx(_sample_sd(terms) / 2)
    assert est.se == pytest.approx(0.3526934, rel=1e-6)


def test_dr_matches_hand_computation() -> None:
    q_logged = [0.5, 0.5, 0.25, 0.25]
    q_target = [0.4, 0.4, 0.4, 0.4]
    est = ope.doubly_robust(R, P, T, q_logged, q_target)
    # terms: .4 + 2*(1-.5)=1.4; .4 + 0 = .4; .4 + 1*(.75)=1.15; .4 + 4*(-.25)=-.6
    terms = [1.4, 0.4, 1.15, -0.6]
    assert est.value == pytest.approx(np.mean(terms))
    assert est.se == pytest.approx(np.std(terms, ddof=1) / 2)


def test_dr_with_perfect_model_and_uniform_target_has_zero_variance_part() -> None:
    # If qhat equals the rewards exactly, DR reduces to the direct method.
    est = ope.doubly_robust(R, P, T, R, [0.3] * 4)
    assert est.value == pytest.approx(0.3)
    assert est.se == pytest.approx(0.0)


def test_on_policy_target_recovers_plain_mean() -> None:
    # Target = logging policy: all weights 1, IPW = SNIPW = mean reward.
    rng = np.random.default_rng(0)
    r = rng.binomial(1, 0.3, 500).astype(float)
    p = rng.uniform(0.1, 1.0, 500)
    assert ope.ipw(r, p, p).value == pytest.approx(r.mean())
    assert ope.snipw(r, p, p).value == pytest.approx(r.mean())
    assert ope.ipw(r, p, p).ess == pytest.approx(500.0)


def test_cs_radius_reference_and_wider_than_ci() -> None:
    # radius = sd*sqrt(2(t e+1)/(t^2 e) * log(sqrt(t e+1)/alpha)), e = (L + log(L+1))/t*, L=-2log a
    a, t, sd = 0.05, 1000, 2.0
    L = -2 * math.log(a)
    e = (L + math.log(L + 1)) / t
    expect = sd * math.sqrt(2 * (t * e + 1) / (t * t * e) * math.log(math.sqrt(t * e + 1) / a))
    assert ope.cs_radius(sd, t, a, t_opt=t) == pytest.approx(expect)
    assert ope.cs_radius(sd, t, a, t_opt=t) > Z975 * sd / math.sqrt(t)
    est = ope.ipw(R * 50, P * 50, T * 50, confidence_sequence=True)
    assert est.cs_low is not None and est.cs_high is not None
    assert est.cs_low < est.ci_low < est.value < est.ci_high < est.cs_high


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"propensities": [0.0, 0.5]}, r"propensities must be in \(0, 1\]"),
        ({"propensities": [1.5, 0.5]}, r"propensities must be in \(0, 1\]"),
        ({"target_probs": [-0.1, 0.5]}, r"target probabilities must be in \[0, 1\]"),
        ({"rewards": [1.0]}, "rewards has 1 entries, expected 2"),
        ({"rewards": [float("nan"), 1.0]}, "NaN or infinite"),
        ({"alpha": 1.5}, r"alpha must be in \(0, 1\)"),
        ({"propensities": [], "target_probs": [], "rewards": []}, "at least one"),
    ],
)
def test_invalid_inputs_are_rejected(kwargs: dict, match: str) -> None:
    args = {"rewards": [1.0, 0.0], "propensities": [0.5, 0.5], "target_probs": [1.0, 0.0]}
    args.update(kwargs)
    with pytest.raises(StatsError, match=match):
        ope.ipw(**args)


def test_snipw_undefined_without_overlap() -> None:
    with pytest.raises(StatsError, match="never takes an action"):
        ope.snipw([1.0, 0.0], [0.5, 0.5], [0.0, 0.0])


def test_evaluate_policy_rejects_non_distribution() -> None:
    with pytest.raises(StatsError, match="sum to at most 1"):
        ope.evaluate_policy(["a", "b"], [1, 0], [0.5, 0.5], {"a": 0.9, "b": 0.9})


def test_stratified_target_uses_per_stratum_probabilities() -> None:
    acts = ["x", "y", "x", "y"]
    strata = ["1", "1", "2", "2"]
    res = ope.evaluate_policy(
        acts, [1, 0, 0, 1], [0.5] * 4, {}, strata=strata,
        target_by_stratum={"1": {"x": 1.0}, "2": {"y": 1.0}}, estimators=("ipw", "snipw"),
    )
    # weights 2, 0, 0, 2 -> IPW (2 + 2)/4 = 1, SNIPW 4/4 = 1
    assert res["ipw"].value == pytest.approx(1.0)
    assert res["snipw"].value == pytest.approx(1.0)
    assert res["ipw"].n_weighted == 2


def _simulate(rng: np.random.Generator, n: int, reps: int) -> dict[str, np.ndarray]:
    """A 3-action context-free bandit logged with a non-uniform policy.

    Means 0.10, 0.20, 0.05; logging (0.5, 0.3, 0.2); target (0.1, 0.8, 0.1):
    true value = 0.01 + 0.16 + 0.005 = 0.175.
    """
    means = np.array([0.10, 0.20, 0.05])
    log_p = np.array([0.5, 0.3, 0.2])
    tgt = {"0": 0.1, "1": 0.8, "2": 0.1}
    out: dict[str, list[tuple[float, float, float, float]]] = {k: [] for k in ope.ESTIMATORS}
    for _ in range(reps):
        a = rng.choice(3, size=n, p=log_p)
        r = rng.binomial(1, means[a]).astype(float)
        res = ope.evaluate_policy([str(x) for x in a], r, log_p[a], tgt)
        for k, e in res.items():
            out[k].append((e.ci_low, e.ci_high, e.cs_low, e.cs_high))  # type: ignore[arg-type]
    return {k: np.array(v) for k, v in out.items()}


def test_coverage_by_simulation() -> None:
    """95% CLT intervals cover the true value about 95% of the time; the CS at least as often.

    400 replications: the Monte Carlo sd of a 0.95 coverage is 0.011, so [0.91, 0.985]
    is a ~3.5 sd band that a broken variance formula (e.g. forgetting the weights) fails.
    """
    rng = np.random.default_rng(20240601)
    truth = 0.175
    sims = _simulate(rng, n=1500, reps=400)
    for name, arr in sims.items():
        cover = np.mean((arr[:, 0] <= truth) & (truth <= arr[:, 1]))
        cs_cover = np.mean((arr[:, 2] <= truth) & (truth <= arr[:, 3]))
        assert 0.91 <= cover <= 0.985, (name, cover)
        assert cs_cover >= cover, (name, cs_cover, cover)
        assert cs_cover >= 0.95, (name, cs_cover)


def test_biased_target_is_detected() -> None:
    """Power check: the intervals exclude a wrong value (the logging policy's value)."""
    rng = np.random.default_rng(7)
    sims = _simulate(rng, n=4000, reps=50)
    logging_value = 0.5 * 0.10 + 0.3 * 0.20 + 0.2 * 0.05  # 0.12
    for arr in sims.values():
        assert np.mean(arr[:, 0] > logging_value) > 0.9


def test_cs_mixture_is_tuned_once_not_at_every_look() -> None:
    """Regression: rho was re-tuned to the current t at every look (t_opt = t), which is a
    different boundary per look; the running coverage over 1,000 looks then fell below
    1 - alpha. With one tuning horizon the boundary is one mixture, time-uniform."""
    a, sd = 0.05, 1.0
    # one mixture: the implied eta² is the same whatever t is
    la = -2 * math.log(a)
    e = (la + math.log(la + 1)) / ope.DEFAULT_CS_HORIZON
    for t in (10, 1000, 10_000, 200_000):
        want = sd * math.sqrt(2 * (t * e + 1) / (t * t * e) * math.log(math.sqrt(t * e + 1) / a))
        assert ope.cs_radius(sd, t, a) == pytest.approx(want)
    # running coverage of the default confidence sequence, Gaussian terms, 1,000 looks
    rng = np.random.default_rng(7)
    reps, looks, step = 3000, 1000, 10
    s = np.zeros(reps)
    miss = np.zeros(reps, dtype=bool)
    for i in range(1, looks + 1):
        s += rng.standard_normal((reps, step)).sum(axis=1)
        t = i * step
        miss |= np.abs(s / t) > ope.cs_radius(sd, t, a)
    rate, se = miss.mean(), math.sqrt(a * (1 - a) / reps)
    assert rate <= a + 2 * se, rate
