"""The guardrail test per user (``unit: user``): a ratio estimator with a per-user
(cluster-robust) variance. Few users with many correlated impressions breach per impression
but not per user; real harm over many users is still detected; the kernel matches a direct
computation; reduced simulation cells bound the false-rollback rate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from armlab.core.evidence import ArmSums
from armlab.core.recommendation import BREACHED, evaluate_guardrails
from armlab.core.specs import GuardrailSpec
from armlab.core.stats.guardrail_simulation import GuardrailSimConfig, simulate_guardrail
from armlab.core.stats.noninferiority_units import (
    RATIO_FIELDS,
    UnitSums,
    guardrail_unit_test,
    ratio_kernel,
    unit_pooled_variance,
)
from armlab.errors import StatsError

SPEC = GuardrailSpec.model_validate({
    "key": "low_rated", "source": {"feedback": "skip"}, "harm": "increase",
    "margin": {"absolute": 0.02}, "alpha": 0.05})


def _arm(users: list[tuple[int, int]], p: float) -> tuple[UnitSums, ArmSums]:
    """Per user (impressions, events of a 0/1 metric): its per-unit and per-impression sums."""
    u, a = UnitSums(), ArmSums()
    for n, y in users:
        u.add_unit(n, y, y, y, p)
        for j in range(n):
            a.add_impression(p)
            if j < y:
                a.add_reward_change(0.0, 1.0, p)
                a.add_feedback()
    return u, a


def _look(sums: dict[str, dict[str, ArmSums]] | dict[str, dict[str, UnitSums]]
          ) -> dict[str, object]:
    return evaluate_guardrails([SPEC], control="control", treatments=["t1"], sums=sums,
                               previous={}, min_events=30, min_samples=1, horizon=2000.0,
                               floor=0.1)[0]


def test_few_correlated_users_breach_per_impression_but_not_per_user() -> None:
    """The demo's failure: a treatment served to few users, 40 requests each, a user either
    always or never holding a low-rated movie, the treatment at propensity 0.1 (12 users, half
    of them "low-rated" users) against the control at 0.9 (108 users, a quarter). 240 events
    out of 480 treatment impressions look like overwhelming harm per impression; 12 users
    cannot support it."""
    control_u, control_a = _arm([(40, 40)] * 27 + [(40, 0)] * 81, 0.9)
    t1_u, t1_a = _arm([(40, 40)] * 6 + [(40, 0)] * 6, 0.1)
    per_impression = _look({"low_rated": {"control": control_a, "t1": t1_a}})
    per_user = _look({"low_rated": {"control": control_u, "t1": t1_u}})
    assert per_impression["state"] == BREACHED
    assert per_user["state"] != BREACHED and per_user["p_value"] > 0.2
    # the same point estimate (0.5 - 0.25 - 0.02), a far wider interval
    assert per_user["excess"] == pytest.approx(0.23)
    assert per_impression["excess"] == pytest.approx(0.23, abs=0.05)
    assert per_user["excess_low"] < 0.0 < per_impression["excess_low"]
    assert per_user["unit"] == "user" and per_user["units_treatment"] == 12
    assert per_user["n_treatment"] == 480


def test_real_harm_over_many_users_is_detected() -> None:
    rng = np.random.default_rng(3)
    users = 1500

    def arm(rate: float, p: float) -> UnitSums:
        s = UnitSums()
        for n in rng.integers(10, 41, users):
            q = rng.beta(rate * 9, (1 - rate) * 9)  # ICC 0.1
            y = float(rng.binomial(n, q))
            s.add_unit(float(n), y, y, y, p)
        return s

    r = _look({"low_rated": {"control": arm(0.10, 0.5), "t1": arm(0.16, 0.5)}})
    assert r["state"] == BREACHED and r["excess_low"] > 0


def _kernel(a: UnitSums, b: UnitSums, *, scale: float, binary: bool
            ) -> tuple[float, float]:
    est, var = ratio_kernel([np.float64(getattr(a, f)) for f in RATIO_FIELDS],
                            [np.float64(getattr(b, f)) for f in RATIO_FIELDS],
                            sign=1.0, scale=scale, binary=binary)
    return float(est), float(var)


@pytest.mark.parametrize("spread", [1.0, 3.0])
def test_ratio_kernel_matches_a_direct_delta_method_computation(spread: float) -> None:
    """Continuous values, varying propensities: the ratio estimate and the cluster-robust
    variance (realised, or the robust floor when the arms differ in spread)."""
    rng = np.random.default_rng(0)
    arms = []
    for p_lo, sd in ((0.1, 1.0), (0.4, spread)):
        n = rng.integers(1, 30, 50).astype(float)
        y = np.array([rng.normal(0.5, sd, int(k)).sum() for k in n])
        p = rng.uniform(p_lo, 0.9, 50)
        s = UnitSums()
        for ni, yi, pi in zip(n, y, p, strict=True):
            s.add_unit(ni, yi, yi * yi / ni, ni, pi)
        arms.append((s, n, y, p))
    g = 1.05
    (sa, *ra), (sb, *rb) = arms
    est, var = _kernel(sa, sb, scale=g, binary=False)

    def resid(n: np.ndarray, y: np.ndarray, p: np.ndarray) -> tuple[float, np.ndarray]:
        th = (y / p).sum() / (n / p).sum()
        return th, y - th * n

    (th_a, r_a), (th_b, r_b) = resid(*ra), resid(*rb)
    pooled = ((r_a ** 2).sum() + (r_b ** 2).sum()) / 100

    def v(r: np.ndarray, n: np.ndarray, p: np.ndarray) -> float:
        second = max((r ** 2 / p ** 2).sum(), max((r ** 2).mean(), pooled) * (1 / p ** 2).sum())
        return float(second / (n / p).sum() ** 2 * 50 / 49)

    assert est == pytest.approx(th_b - g * th_a, rel=1e-12)
    assert var == pytest.approx(v(r_b, rb[0], rb[2]) + g * g * v(r_a, ra[0], ra[2]), rel=1e-9)


def test_one_impression_per_user_is_the_per_impression_hajek_variance() -> None:
    """With n_u = 1 the per-user variance is the per-arm Bernoulli variance / impressions."""
    a, _ = _arm([(1, 1)] * 20 + [(1, 0)] * 80, 0.5)
    b, _ = _arm([(1, 1)] * 30 + [(1, 0)] * 70, 0.5)
    est, var = _kernel(a, b, scale=1.0, binary=True)
    assert est == pytest.approx(0.1)
    assert var == pytest.approx((0.2 * 0.8 / 100 + 0.3 * 0.7 / 100) * 100 / 99)
    pooled = unit_pooled_variance(*[np.float64(getattr(a, k) + getattr(b, k))
                                    for k in ("units", "n", "value_sum", "yy", "yn", "nn")])
    assert float(pooled) == pytest.approx(0.25 * 0.75 * 200 / 199)


def test_gate_and_validation() -> None:
    a, _ = _arm([(10, 2)] * 5, 0.5)
    b, _ = _arm([(10, 5)] * 5, 0.5)

    def test(control: object, treatment: UnitSums, min_samples: int = 1) -> bool:
        return guardrail_unit_test(control, treatment, harm="increase",  # type: ignore[arg-type]
                                   margin=0.0, relative=False, alpha=0.05, binary=True,
                                   min_events=0, min_samples=min_samples).informative

    assert test(a, b) and not test(a, b, min_samples=6) and not test(UnitSums(), b)
    with pytest.raises(StatsError, match="control must be UnitSums"):
        test(ArmSums(), b)
    with pytest.raises(StatsError, match="propensity"):
        UnitSums().add_unit(1, 0, 0, 0, 0.0)
    with pytest.raises(StatsError, match="units"):
        UnitSums(units=-1)
    with pytest.raises(StatsError, match="finite"):
        UnitSums(w_n=math.inf)


def _cell(**kw: object) -> dict[str, np.ndarray]:
    base: dict[str, object] = {
        "unit": "user", "click_b": 0.05, "skip_a": 0.10, "skip_b": 0.10, "icc": 0.2,
        "min_per_user": 10, "max_per_user": 40, "horizon": 1000, "look_every": 50,
        "reps": 1000, "seed": 11, "min_samples": 30}
    return simulate_guardrail(GuardrailSimConfig(**{**base, **kw}))  # type: ignore[arg-type]


def test_simulation_user_unit_aa_per_user_within_alpha_per_impression_not() -> None:
    """Reduced cell of ``armlab bench guardrails --unit user``: sticky users with ICC 0.2 and
    10-40 impressions each, no harm (margin 0): the per-user test keeps its false-breach
    rate within alpha + 2 MC s.e.; the per-impression test on the same data exceeds it."""
    out = _cell(click_b=0.06)  # Thompson moves traffic to the treatment
    reps = out["user_breach"].size
    se = math.sqrt(0.05 * 0.95 / reps)
    assert out["user_breach"].mean() <= 0.05 + 2 * se
    assert out["ipw_breach"].mean() > 0.05 + 2 * se


def test_simulation_user_unit_harm_is_detected() -> None:
    """Skip rate 10% -> 16% with an absolute margin of 0.02 over 2000 users."""
    out = _cell(skip_b=0.16, margin=0.02, reps=200, horizon=2000)
    assert out["user_breach"].mean() >= 0.85
