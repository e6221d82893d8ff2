"""Always-valid inference that stays valid under bandit (adaptive) allocation.

Why plain mSPRT fails under a bandit: the allocation at time t depends on earlier rewards, so
the per-arm sample means are no longer averages of i.i.d. draws (an arm that looks bad early is
sampled less and its low mean is corrected slowly), and the normal approximation behind the
mSPRT is off in a direction that inflates the false-positive rate (see ``armlab simulate
sequential --allocation thompson --method msprt``).

What armlab does instead (Waudby-Smith, Wu, Ramdas, Karampatziakis, Mineiro, "Anytime-valid
off-policy inference for contextual bandits", 2023; Waudby-Smith, Arbour, Sinha, Kennedy,
Ramdas, "Time-uniform central limit theory and asymptotic confidence sequences", 2021): for
every impression t (over ALL arms of the experiment) with logged propensities p_t(k) > 0,

    Z_t = 1{A_t = b} R_t / p_t(b) - 1{A_t = a} R_t / p_t(a),
    E[Z_t | F_{t-1}] = mu_b - mu_a,

because p_t is fixed before A_t is drawn. So sum_t (Z_t - (mu_b - mu_a)) is a martingale and the
increments have bounded conditional variance as long as the exploration floor keeps
p_t(k) >= floor > 0. The Lindeberg-type martingale CLT behind the time-uniform CLT of
Waudby-Smith et al. (2021, Thm 2.5 / Prop 2.5, "Lyapunov-type" asymptotic CS) then gives the
asymptotic confidence sequence

    Zbar_T ± sigma_T · sqrt(2 (T rho² + 1)/(T² rho²) · log(sqrt(T rho² + 1)/alpha))

(``std_conjmix_margin`` in their drconfseq code), which, writing V = sigma_T²/T and
tau² = rho² sigma_T², is exactly JKPW's normal-mixture boundary
D ± sqrt(V (V + tau²)/tau² · log((V + tau²)/(V alpha²))) with D = Zbar_T. armlab therefore
reuses ``mixture_test`` with D = Zbar_T and V = sigma_T² / T, where sigma_T² estimates the
average conditional variance of Z_t (see ``ipw_moments`` for the estimator and why).

Everything is computable from the per-arm sums the consumers keep (arm_stats summed over
partitions): sum_t Z_t = ipw_sum_b - ipw_sum_a and, since an impression is in one arm only,
sum_t Z_t² = ipw_sumsq_b + ipw_sumsq_a; T = sum over all arms of n.

Sample-ratio mismatch under time-varying weights: for each arm k, X_t = 1{A_t = k}/p_t(k) - 1
is also a martingale difference sequence when the logged propensities are the ones actually
used, so sum_t X_t = ipw_n_k - T must stay near 0 whatever the weights did over time; its
variance is estimated by sum_t X_t² = ipw_n_sq_k - 2 ipw_n_k + T. ``srm_check`` applies the same
always-valid mixture test to it (Bonferroni over arms). A plain chi-square against the current
weights would be wrong for a bandit, whose weights changed over the experiment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from armlab.core.evidence import FIELDS, ArmSums
from armlab.core.stats.msprt import (
    Alternative,
    HorizonBoundary,
    MsprtResult,
    MsprtState,
    mixture_test,
)
from armlab.errors import StatsError

FloatArray = npt.NDArray[np.float64]
# The seven sums the IPW kernel reads, in its argument order (feedback_n is not one of them).
KERNEL_FIELDS = FIELDS[:7]
# Planned impressions that tune the default tau² when the experiment sets no horizon (max_n).
DEFAULT_PLAN_IMPRESSIONS = 20_000


@dataclass(frozen=True)
class IpwMoments:
    """Running mean and variance of the IPW contributions Z_t over T impressions.

    estimate = Zbar_T; sigma2 = estimated average conditional variance of Z_t;
    variance = sigma2 / T = Var(Zbar); centre = the control-variate constant c.
    """

    t: float
    estimate: float
    sigma2: float
    centre: float = 0.0

    @property
    def variance(self) -> float:
        return self.sigma2 / self.t if self.t > 0 else 0.0


def _check(name: str, value: float, *, nonneg: bool = True) -> float:
    if value is None or not math.isfinite(float(value)):
        raise StatsError(f"{name} must be a finite number, got {value!r}")
    if nonneg and value < 0:
        raise StatsError(f"{name} must be >= 0, got {value!r}")
    return float(value)


def ipw_moments(t: float, a: ArmSums, b: ArmSums, *, binary: bool = False) -> IpwMoments:
    """Zbar and the variance of Z from the per-arm sums; t = impressions over ALL arms.

    Two refinements of the plain Z_t above, both computable from the sums:

    * Control variate. Z_t(c) = 1{A=b}(R-c)/p(b) - 1{A=a}(R-c)/p(a) has the same conditional
      mean for any constant c (E[1{A=k}/p(k) | past] = 1), so sum Z(c) = (ipw_sum_b - c ipw_n_b)
      - (ipw_sum_a - c ipw_n_a). c = the pooled plain mean of a and b removes the reward level
      from the variance (decisive for continuous metrics such as ratings; ~5% for a 5% CTR).
      c is estimated, which perturbs the sum by (c_hat - c) x (a mean-zero martingale), O(1),
      negligible against the O(sqrt(T log T)) boundary.
    * Variance. Var(Z_t | past) = sum_k E[(R-c)² | k]/p_t(k) - delta². The realised sum of
      Z_t² is dominated by rare large jumps (one success of an arm held at the floor adds
      1/floor²) and underestimates the variance until they have happened, which inflates the
      false-positive rate under a bandit. armlab uses sum_k m2_k · ipw_n_sq_k (m2_k = plain
      per-arm mean of (R-c)², ipw_n_sq_k an unbiased estimate of sum_t 1/p_t(k)), which depends
      on how often each arm was shown rather than on its rare successes; for binary rewards
      (where r/p² = r²/p² makes the realised sum available) the larger of the two is used.
      m2_k is floored at the pooled second moment of both arms (``ipw_kernel``): a floored
      arm that has seen few successes otherwise reports m2_k ≈ c², which drove the A/A
      false-positive rate to 13-15% at a 1% base rate.
    """
    t = _check("t", t)
    for arm in (a, b):
        if arm.n > 0 and arm.ipw_n <= 0:
            raise StatsError("ipw_n is 0 although the arm has impressions: propensities were "
                             "not logged, the adaptive-valid test needs them")
    if t == 0 or a.n == 0 or b.n == 0:
        return IpwMoments(t, 0.0, 0.0)
    fa = [np.asarray(getattr(a, f), dtype=np.float64) for f in KERNEL_FIELDS]
    fb = [np.asarray(getattr(b, f), dtype=np.float64) for f in KERNEL_FIELDS]
    mean, sigma2, c = ipw_kernel(np.asarray(t, dtype=np.float64), *fa, *fb, binary=binary)
    if not (np.isfinite(mean) and np.isfinite(sigma2)):
        raise StatsError("arm sums give a non-finite IPW estimate")
    return IpwMoments(t, float(mean), float(sigma2), float(c))


def ipw_kernel(
    t: FloatArray,
    n_a: FloatArray, rs_a: FloatArray, rss_a: FloatArray,
    in_a: FloatArray, is_a: FloatArray, iss_a: FloatArray, ins_a: FloatArray,
    n_b: FloatArray, rs_b: FloatArray, rss_b: FloatArray,
    in_b: FloatArray, is_b: FloatArray, iss_b: FloatArray, ins_b: FloatArray,
    *,
    binary: bool,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Vectorised (mean of Z(c), variance of Z(c), c); arrays of any common shape.

    Arguments per arm in ``ArmSums`` order: n, reward_sum, reward_sumsq, ipw_n, ipw_sum,
    ipw_sumsq, ipw_n_sq. Used by ``ipw_moments`` and by the Monte Carlo simulator, so the
    simulation checks the exact code the platform runs. Requires n_a, n_b > 0 and t > 1.
    """
    c = (rs_a + rs_b) / (n_a + n_b)
    mean = ((is_b - c * in_b) - (is_a - c * in_a)) / t
    dev_a = np.maximum(rss_a - 2 * c * rs_a + c * c * n_a, 0.0)
    dev_b = np.maximum(rss_b - 2 * c * rs_b + c * c * n_b, 0.0)
    # Robust per-arm second moment: never below the pooled one. An arm held at the floor
    # with few or no successes has a per-arm (R - c)² near c², far below the pooled
    # p(1 - p), exactly when its 1/p weight is largest; the pooled value is the arm's second
    # moment under H0 (mu_a = mu_b), so the max keeps the null variance and only widens the
    # interval when the arms really differ in spread.
    m2_pool = (dev_a + dev_b) / (n_a + n_b)
    m2_a = np.maximum(dev_a / n_a, m2_pool)
    m2_b = np.maximum(dev_b / n_b, m2_pool)
    second = (m2_a * ins_a + m2_b * ins_b) / t
    if binary:
        # sum (R-c)²/p² = (1-2c) sum R/p² + c² sum 1/p², using R = R² for 0/1 rewards.
        realised = (np.maximum((1 - 2 * c) * iss_a + c * c * ins_a, 0.0)
                    + np.maximum((1 - 2 * c) * iss_b + c * c * ins_b, 0.0)) / t
        second = np.maximum(second, realised)
    sigma2 = np.maximum(second - mean * mean, 0.0) * t / np.maximum(t - 1.0, 1.0)
    return mean, sigma2, c


def events(arm: ArmSums, *, binary: bool) -> float:
    """The information an arm carries, in events: for binary rewards the rarer outcome
    (min(successes, failures)); for continuous rewards the feedback events applied."""
    if binary:
        return min(arm.reward_sum, arm.n - arm.reward_sum)
    return arm.feedback_n


def informative(a: ArmSums, b: ArmSums, *, binary: bool, min_samples: int,
                min_events: int) -> bool:
    """Whether a look may carry evidence: both arms have ``min_samples`` impressions AND
    ``min_events`` events (see :func:`events`).

    Gating on impressions alone is not enough at low base rates: at p = 1% an arm held at a
    10% floor has 100 impressions and about one success when the other has 900, its IPW
    terms are a handful of 1/p jumps, and the normal approximation behind the mixture
    boundary (a martingale CLT, Waudby-Smith et al. 2021) has not kicked in. Requiring a
    number of events per arm is the usual rule of thumb for a binomial normal approximation
    (n·p and n·(1-p) large); it gates *looks* only, so it cannot hurt validity.
    """
    if min(a.n, b.n) < max(min_samples, 1):
        return False
    return min(events(a, binary=binary), events(b, binary=binary)) >= min_events


def ipw_msprt(
    t: float,
    a: ArmSums,
    b: ArmSums,
    *,
    tau2: float,
    theta0: float = 0.0,
    alpha: float = 0.05,
    binary: bool = False,
    min_samples: int = 1,
    min_events: int = 0,
    state: MsprtState | None = None,
    alternative: Alternative = "two-sided",
    horizon: HorizonBoundary | None = None,
) -> MsprtResult:
    """Adaptive-valid always-valid test / confidence sequence for mu_b - mu_a.

    A look carries evidence only when :func:`informative` (impressions and events per arm).
    ``horizon``: the flat boundary of :class:`armlab.core.stats.msprt.HorizonBoundary` beside
    the mixture, with its ``t`` set to ``t`` here (S = sum of the IPW increments = t·Zbar).
    """
    m = ipw_moments(t, a, b, binary=binary)
    enough = m.t >= 2 and informative(a, b, binary=binary, min_samples=min_samples,
                                      min_events=min_events)
    if horizon is not None:
        horizon = HorizonBoundary(horizon.info, m.t, horizon.share)
    return mixture_test(m.estimate, m.variance, tau2=tau2, theta0=theta0, alpha=alpha,
                        state=state, enough_samples=enough, alternative=alternative,
                        horizon=horizon)


def planned_variance(sigma2: float, horizon: float, k: int, *, method: str,
                     floor: float) -> float:
    """Var(D) the test expects after ``horizon`` impressions over ``k`` arms.

    plain (fixed split, 1/k each): Var(mean_b - mean_a) = 2 sigma² / (horizon / k).
    ipw: Var(Zbar_T) = (1/T) sum_t Var(Z_t | past) ≈ sigma² (mean over t of 1/p_t(a) +
    1/p_t(b)) / T (Waudby-Smith et al. 2023, the variance of the IPW increment, with the
    control variate removing the reward level). A bandit that has found a winner holds the
    other arm at the floor f, so the pair's sum of inverse propensities approaches
    1/f + 1/(1 - (k-1) f) (11.1 at k = 2, f = 0.1, against 4 for a 50/50 split): tau² tuned
    for the 50/50 variance was 2.5-3 times too small and cost power. Without a floor there
    is no bound; the fixed-split value is used (and :func:`armlab.core.decisions.evaluate`
    warns).
    """
    k = max(k, 2)
    if method == "ipw" and floor > 0.0:
        inv = 1.0 / floor + 1.0 / max(1.0 - (k - 1) * floor, floor)
    else:
        inv = 2.0 * k
    return sigma2 * inv / horizon


@dataclass(frozen=True)
class SrmResult:
    """Always-valid sample-ratio-mismatch check.

    ratio[k] = ipw_n_k / T (1.0 when the logged propensities match what was served);
    p_values[k] its always-valid p-value; p_value = Bonferroni min over arms (running min when
    a previous value is passed in); mismatch = p_value <= alpha.
    """

    t: float
    ratio: dict[str, float]
    p_values: dict[str, float]
    p_value: float
    alpha: float
    mismatch: bool
    checked: bool = True
    reason: str = ""
    observed: dict[str, float] = field(default_factory=dict)
    expected: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "t": self.t, "ratio": self.ratio, "p_values": self.p_values,
            "p_value": self.p_value, "alpha": self.alpha, "mismatch": self.mismatch,
            "checked": self.checked, "reason": self.reason,
            "observed": self.observed, "expected": self.expected,
        }


def srm_check(
    n: dict[str, float],
    ipw_n: dict[str, float],
    ipw_n_sq: dict[str, float],
    *,
    alpha: float = 0.001,
    tau2: float = 0.02**2,
    min_samples: int = 100,
    previous_p: float = 1.0,
) -> SrmResult:
    """Sample-ratio mismatch that accounts for time-varying allocation weights.

    For arm k: mean of X_t = 1{A_t=k}/p_t(k) - 1 over all T impressions, i.e. ipw_n_k/T - 1,
    tested against 0 with the normal-mixture always-valid test (tau = 0.02 by default: a 2%
    relative mismatch). ``expected[k]`` = n_k / ratio_k = sum of the propensities the
    impressions of arm k imply (the count arm k should have had under the logged weights).
    """
    if not (0.0 < alpha < 1.0):
        raise StatsError(f"alpha must lie in (0, 1), got {alpha!r}")
    arms = list(n)
    if set(arms) != set(ipw_n) or set(arms) != set(ipw_n_sq):
        raise StatsError("n, ipw_n and ipw_n_sq must name the same arms")
    t = sum(_check(f"n[{k}]", n[k]) for k in arms)
    observed = {k: float(n[k]) for k in arms}
    if t < max(min_samples, 2) or len(arms) < 2:
        return SrmResult(t, {}, {}, previous_p, alpha, previous_p <= alpha, checked=False,
                         reason="too few impressions", observed=observed)
    if any(_check(f"ipw_n[{k}]", ipw_n[k]) == 0 and n[k] > 0 for k in arms):
        return SrmResult(t, {}, {}, previous_p, alpha, previous_p <= alpha, checked=False,
                         reason="propensities not logged", observed=observed)
    ratio: dict[str, float] = {}
    pvals: dict[str, float] = {}
    expected: dict[str, float] = {}
    for k in arms:
        s1 = _check(f"ipw_n[{k}]", ipw_n[k])
        s2 = _check(f"ipw_n_sq[{k}]", ipw_n_sq[k])
        mean = s1 / t - 1.0
        sum_x2 = s2 - 2.0 * s1 + t  # sum_t (1{A=k}/p - 1)²
        sigma2 = max(sum_x2 / t - mean * mean, 0.0)
        res = mixture_test(mean, sigma2 / t, tau2=tau2, alpha=alpha)
        ratio[k] = s1 / t
        pvals[k] = res.p_now
        expected[k] = n[k] / ratio[k] if ratio[k] > 0 else 0.0
    p = min(previous_p, min(1.0, len(arms) * min(pvals.values())))
    return SrmResult(t, ratio, pvals, p, alpha, p <= alpha, observed=observed,
                     expected=expected)
