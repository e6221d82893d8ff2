"""mSPRT against independently computed numbers, properties, and degenerate inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, optimize
from scipy.stats import norm

from armlab.core.stats.msprt import (
    HorizonBoundary,
    MsprtState,
    bonferroni_adjust,
    cs_halfwidth,
    holm_adjust,
    horizon_critical,
    horizon_p,
    log_lambda,
    log_lambda_greater,
    lower_margin_greater,
    mixture_test,
    msprt_two_sample,
    tau2_for_effect,
    tau2_for_horizon,
    variance_for_tau2,
)
from armlab.errors import StatsError


def lambda_by_quadrature(d: float, v: float, tau2: float, theta0: float) -> float:
    """Integral of N(d; theta, V)/N(d; theta0, V) over theta ~ N(theta0, tau²)."""
    tau = math.sqrt(tau2)
    f = lambda th: norm.pdf(d, th, math.sqrt(v)) * norm.pdf(th, theta0, tau)  # noqa: E731
    num, _ = integrate.quad(f, theta0 - 12 * tau, theta0 + 12 * tau, points=[d], limit=200)
    return num / norm.pdf(d, theta0, math.sqrt(v))


@pytest.mark.parametrize(
    ("d", "v", "tau2", "theta0"),
    [(0.01, 1e-5, 1e-4, 0.0), (-0.02, 4e-5, 2.5e-5, 0.0), (0.3, 0.01, 0.04, 0.1),
     (0.0, 0.5, 1.0, 0.0)],
)
def test_closed_form_matches_numerical_mixture(d: float, v: float, tau2: float,
                                               theta0: float) -> None:
    assert np.isclose(math.exp(float(log_lambda(d, v, tau2, theta0))),
                      lambda_by_quadrature(d, v, tau2, theta0), rtol=1e-6)


def test_equal_n_two_stream_formula_of_the_paper() -> None:
    # JKPW two-stream normal mSPRT with n per arm and common variance sigma²:
    # Lambda = sqrt(2s²/(2s² + n tau²)) exp(n² tau² (Ybar - Xbar - theta0)² / (4 s² (2s² + n tau²)))
    n, s2, tau2, theta0 = 50, 4.0, 0.5, 0.2
    xbar, ybar = 1.0, 2.0
    sum_a, sum_b = n * xbar, n * ybar
    sumsq_a = (n - 1) * s2 + sum_a**2 / n
    sumsq_b = (n - 1) * s2 + sum_b**2 / n
    r = msprt_two_sample("normal", n, sum_a, sumsq_a, n, sum_b, sumsq_b, tau2=tau2, theta0=theta0)
    paper = math.sqrt(2 * s2 / (2 * s2 + n * tau2)) * math.exp(
        n**2 * tau2 * (ybar - xbar - theta0) ** 2 / (4 * s2 * (2 * s2 + n * tau2)))
    assert np.isclose(r.lambda_, paper, rtol=1e-10)
    assert np.isclose(r.p_value, min(1.0, 1 / paper))


def test_bernoulli_plugin_variance_and_unequal_n() -> None:
    r = msprt_two_sample("bernoulli", 1000, 50, None, 3000, 210, None, tau2=1e-4)
    pa, pb = 0.05, 0.07
    v = pa * (1 - pa) / 1000 + pb * (1 - pb) / 3000
    assert np.isclose(r.variance, v) and np.isclose(r.estimate, 0.02)
    expected = 0.5 * math.log(v / (v + 1e-4)) + 1e-4 * 0.02**2 / (2 * v * (v + 1e-4))
    assert np.isclose(r.log_lambda, expected)


def test_confidence_interval_is_the_set_where_lambda_is_below_one_over_alpha() -> None:
    d, v, tau2, alpha = 0.015, 2e-5, 1e-4, 0.05
    r = mixture_test(d, v, tau2=tau2, alpha=alpha)
    for edge in (r.ci_low, r.ci_high):
        assert np.isclose(float(log_lambda(d, v, tau2, edge)), -math.log(alpha), rtol=1e-9)
    assert float(log_lambda(d, v, tau2, d)) < -math.log(alpha)


def test_log_space_never_overflows() -> None:
    r = msprt_two_sample("bernoulli", 1e7, 5e5, None, 1e7, 9e5, None, tau2=1e-4)
    assert math.isfinite(r.log_lambda) and r.log_lambda > 1e4
    assert r.lambda_ == math.inf and r.p_value == 0.0
    assert r.as_dict()["lambda"] is None


def test_tau2_for_horizon_minimises_the_width_at_the_horizon() -> None:
    v_star, alpha = 3e-6, 0.05
    best = optimize.minimize_scalar(lambda lt: float(cs_halfwidth(v_star, math.exp(lt), alpha)),
                                    bounds=(math.log(v_star) - 5, math.log(v_star) + 8),
                                    method="bounded", options={"xatol": 1e-10})
    assert np.isclose(tau2_for_horizon(v_star, alpha), math.exp(best.x), rtol=1e-3)
    # Howard et al.'s closed-form approximation is close to the exact Lambert-W value.
    approx = v_star * (-2 * math.log(alpha) + math.log(1 - 2 * math.log(alpha)))
    assert abs(tau2_for_horizon(v_star, alpha) / approx - 1) < 0.05
    assert tau2_for_effect(-0.01) == pytest.approx(1e-4)


def test_state_resumes_running_p_and_interval() -> None:
    first = mixture_test(0.03, 1e-4, tau2=1e-4)
    second = mixture_test(0.0, 1e-4, tau2=1e-4, state=first.state)
    assert second.p_value == first.p_value < second.p_now
    assert second.ci_low == max(first.ci_low, second.ci_low_now)
    assert second.looks == 2


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 500), st.integers(0, 500), st.integers(1, 500),
                          st.integers(0, 500)), min_size=1, max_size=15),
       st.floats(1e-5, 1.0), st.sampled_from([0.01, 0.05, 0.2]))
def test_running_p_monotone_in_unit_interval_and_sequences_nested(
    increments: list[tuple[int, int, int, int]], tau2: float, alpha: float
) -> None:
    n_a = s_a = n_b = s_b = 0
    state = MsprtState()
    for da, xa, db, xb in increments:
        n_a += da
        s_a += min(xa, da)
        n_b += db
        s_b += min(xb, db)
        r = msprt_two_sample("bernoulli", n_a, s_a, None, n_b, s_b, None, tau2=tau2,
                             alpha=alpha, state=state)
        assert 0.0 <= r.p_value <= state.p_value <= 1.0
        assert r.ci_low >= state.ci_low and r.ci_high <= state.ci_high
        state = r.state


def test_zero_variance_and_too_few_samples_carry_no_evidence() -> None:
    r = msprt_two_sample("bernoulli", 500, 0, None, 500, 0, None, tau2=1e-4)
    assert (r.p_value, r.ci_low, r.ci_high, r.valid, r.reason) == (1.0, -math.inf, math.inf,
                                                                   False, "zero variance")
    r = msprt_two_sample("bernoulli", 10, 1, None, 10, 9, None, tau2=1e-4, min_samples=100)
    assert r.p_value == 1.0 and not r.valid and r.reason == "too few samples"
    r = msprt_two_sample("normal", 0, 0, 0, 0, 0, 0, tau2=1.0)
    assert r.p_value == 1.0 and not r.valid


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_a": float("nan")}, "n_a must be a finite"),
        ({"sum_b": float("inf")}, "sum_b must be a finite"),
        ({"n_a": -1.0}, "n_a must be >= 0"),
        ({"sum_a": 2000.0}, "sum_a must lie in"),
        ({"kind": "poisson"}, "kind must be"),
        ({"tau2": 0.0}, "tau2 must be positive"),
        ({"alpha": 1.5}, "alpha must lie"),
        ({"kind": "normal", "sumsq_a": None}, "sumsq_a is required"),
        ({"kind": "normal", "sumsq_a": 1.0}, "inconsistent"),
    ],
)
def test_bad_inputs_raise_stats_error(kwargs: dict, match: str) -> None:
    args = {"kind": "bernoulli", "n_a": 1000.0, "sum_a": 50.0, "sumsq_a": 50.0, "n_b": 1000.0,
            "sum_b": 60.0, "sumsq_b": 60.0, "tau2": 1e-4, "alpha": 0.05}
    args.update(kwargs)
    tau2, alpha = args.pop("tau2"), args.pop("alpha")
    with pytest.raises(StatsError, match=match):
        msprt_two_sample(args["kind"], args["n_a"], args["sum_a"], args["sumsq_a"], args["n_b"],
                         args["sum_b"], args["sumsq_b"], tau2=tau2, alpha=alpha)


def test_state_rejects_nan() -> None:
    with pytest.raises(StatsError):
        MsprtState(p_value=float("nan"))


def test_holm_and_bonferroni_reference_values() -> None:
    # Holm: sorted 0.01, 0.03, 0.04 -> 0.03, 0.06, max(0.06, 0.04) = 0.06
    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert bonferroni_adjust([0.01, 0.04, 0.5]) == pytest.approx([0.03, 0.12, 1.0])
    with pytest.raises(StatsError):
        holm_adjust([0.1, float("nan")])


def test_one_sided_mixture_closed_form_and_lower_bound() -> None:
    """Lambda+ = 2 Lambda Phi(d tau / sqrt(V (V + tau²))) (half-normal mixture, Howard et al.
    2021), checked against numerical integration over theta; the lower bound solves
    Lambda+(D - L) = 1/alpha and the upper bound is +inf."""
    d, v, tau2 = 0.004, 1e-6, 4e-6
    tau = math.sqrt(tau2)

    def integrand(th: float) -> float:
        return 2 * norm.pdf(th / tau) / tau * math.exp(th * d / v - th * th / (2 * v))

    num, _ = integrate.quad(integrand, 0, 20 * tau)
    assert float(log_lambda_greater(d, v, tau2)) == pytest.approx(math.log(num), rel=1e-6)
    x = lower_margin_greater(v, tau2, 0.05)
    assert float(log_lambda_greater(x, v, tau2)) == pytest.approx(-math.log(0.05), abs=1e-9)
    r = mixture_test(d, v, tau2=tau2, alpha=0.05, alternative="greater")
    assert r.ci_high == math.inf and r.ci_low == pytest.approx(d - x)
    two = mixture_test(d, v, tau2=tau2, alpha=0.05)
    assert r.p_value < two.p_value and r.ci_low > two.ci_low  # more power on that side
    worse = mixture_test(-d, v, tau2=tau2, alpha=0.05, alternative="greater")
    assert worse.p_value > 0.5  # a negative effect is no evidence for "greater"


def test_one_sided_mixture_keeps_alpha_under_continuous_monitoring() -> None:
    """Gaussian random walk at theta = 0, 2,000 looks: P(ever Lambda+ >= 1/alpha) <= alpha."""
    rng = np.random.default_rng(4)
    reps, looks = 4000, 2000
    s = np.zeros(reps)
    hit = np.zeros(reps, dtype=bool)
    tau2 = 8.0 / 2000  # sigma = 1 per step, tuned near the horizon
    for n in range(1, looks + 1):
        s += rng.standard_normal(reps)
        hit |= log_lambda_greater(s / n, 1.0 / n, tau2) >= -math.log(0.05)
    assert hit.mean() <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / reps)


def test_horizon_boundary_closed_forms() -> None:
    """Reflection principle: P(sup_{v<=1} W(v) >= c) = 2 (1 - Phi(c)); alpha1 = 0.04 gives
    c = 2.054 one-sided and 2.326 two-sided (union of the two one-sided crossings)."""
    assert horizon_critical(0.04, "greater") == pytest.approx(norm.ppf(0.98), abs=1e-12)
    assert horizon_critical(0.04) == pytest.approx(norm.ppf(0.99), abs=1e-12)
    assert float(horizon_p(norm.ppf(0.98), "greater")) == pytest.approx(0.04)
    assert float(horizon_p(-norm.ppf(0.99))) == pytest.approx(0.04)
    assert float(horizon_p(-3.0, "greater")) == 1.0
    assert variance_for_tau2(tau2_for_horizon(2.5e-5, 0.05), 0.05) == pytest.approx(2.5e-5)
    # one look by hand: p = min(p_h / share, p_mix / (1 - share)); CS = both intersected
    d, v, t, tau2 = 0.012, 2.0e-5, 20_000.0, 1.6e-4
    info = (t * math.sqrt(2.5e-5)) ** 2  # the plan: Var(D) 2.5e-5 at t = 20,000
    h = HorizonBoundary(info, t)
    r = mixture_test(d, v, tau2=tau2, alpha=0.05, horizon=h)
    p_h = 4 * norm.sf(t * d / math.sqrt(info))
    p_mix = math.exp(-float(log_lambda(d, v, tau2)))
    assert r.p_now == pytest.approx(min(p_h / 0.8, p_mix / 0.2))
    margin = horizon_critical(0.04) * math.sqrt(info) / t
    half = float(cs_halfwidth(v, tau2, 0.01))
    assert r.ci_low_now == pytest.approx(d - min(margin, half))
    assert r.ci_high_now == pytest.approx(d + min(margin, half))
    assert r.p_now < 0.05 < p_mix  # the flat boundary rejects where the mixture does not
    # beyond the planned information only the mixture (at 1 - share of alpha) is left
    late = mixture_test(d, v, tau2=tau2, alpha=0.05, horizon=HorizonBoundary(info / 2, t))
    assert late.p_now == pytest.approx(min(1.0, p_mix / 0.2))
    g = mixture_test(d, v, tau2=tau2, alpha=0.05, alternative="greater", horizon=h)
    assert g.p_now == pytest.approx(min(2 * norm.sf(t * d / math.sqrt(info)) / 0.8,
                                        math.exp(-float(log_lambda_greater(d, v, tau2))) / 0.2))
    assert g.ci_high_now == math.inf
    with pytest.raises(StatsError, match="share"):
        HorizonBoundary(1.0, 1.0, share=1.0)
    with pytest.raises(StatsError, match="info"):
        HorizonBoundary(0.0, 1.0)


@pytest.mark.parametrize("alternative", ["two-sided", "greater"])
def test_horizon_boundary_keeps_alpha_at_every_look_and_beyond_the_plan(
        alternative: str) -> None:
    """Random walk at theta = 0 with a look after every step, run to three times the planned
    information: P(ever p <= alpha) <= alpha; the flat part alone crosses with probability
    close to (and below) alpha1, so the boundary is not needlessly conservative; the
    confidence sequence covers theta under an alternative."""
    rng = np.random.default_rng(12)
    reps, plan, looks, alpha = 3000, 500, 1500, 0.05
    info, tau2 = float(plan), tau2_for_horizon(1.0 / plan, alpha)
    greater = alternative == "greater"
    s = np.zeros(reps)
    s_alt = np.zeros(reps)
    theta = 0.1
    hit = np.zeros(reps, dtype=bool)
    flat = np.zeros(reps, dtype=bool)
    miss = np.zeros(reps, dtype=bool)

    def p_value(total: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        d, v = total / n, 1.0 / n
        llr = (log_lambda_greater if greater else log_lambda)(d, v, tau2)
        p_mix = np.exp(-np.maximum(llr, 0.0))
        p_h = horizon_p(total / math.sqrt(info), alternative) if n <= plan else np.ones(reps)
        return np.minimum(p_h / 0.8, p_mix / 0.2), p_h

    for n in range(1, looks + 1):
        s += rng.standard_normal(reps)
        s_alt += rng.standard_normal(reps) + theta
        p, p_h = p_value(s, n)
        hit |= p <= alpha
        flat |= p_h <= 0.8 * alpha
        miss |= p_value(s_alt - theta * n, n)[0] <= alpha
    se = 2 * math.sqrt(alpha * (1 - alpha) / reps)
    assert hit.mean() <= alpha + se
    assert 0.8 * alpha - 0.02 <= flat.mean() <= 0.8 * alpha + se
    assert miss.mean() <= alpha + se
