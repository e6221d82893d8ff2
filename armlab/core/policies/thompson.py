"""Thompson sampling: weights = posterior probability that each arm is best.

Thompson (1933); for bandits see Russo, Van Roy, Kazerouni, Osband, Wen, "A Tutorial on
Thompson Sampling" (2018). Serving arm i with probability P(arm i is best | data) is exactly
what per-request posterior sampling does in distribution, so the allocator can compute those
probabilities once per cadence and the API can serve them from a snapshot.

Posteriors
----------
* Binary rewards: Beta-Bernoulli, prior Beta(alpha0, beta0); posterior
  Beta(alpha0 + successes, beta0 + n - successes).
* Continuous rewards: Normal with unknown mean and variance, Normal-Inverse-Gamma prior
  NIG(mu0, kappa0, a0, b0). Posterior (Murphy 2007, "Conjugate Bayesian analysis of the
  Gaussian distribution", eqs. 85-89): kappa_n = kappa0 + n, mu_n = (kappa0 mu0 + n xbar)/kappa_n,
  a_n = a0 + n/2, b_n = b0 + S/2 + kappa0 n (xbar - mu0)^2 / (2 kappa_n), S = sum (x - xbar)^2.
  The marginal posterior of the mean is Student-t with 2 a_n degrees of freedom, location mu_n,
  scale sqrt(b_n / (a_n kappa_n)) (Murphy eq. 90).

P(best)
-------
* ``quadrature`` (default): P(i best) = integral f_i(x) prod_{j != i} F_j(x) dx, a 1-D integral
  for any K. We integrate with the trapezoid rule on the union of per-arm quantile grids
  (each arm contributes nodes at its own quantiles Phi(z), z in [-7, 7]), so both wide and
  very concentrated posteriors are resolved. ``quad_error`` reports |sum P - 1| before
  normalisation (typically < 1e-4).
* ``monte_carlo``: n_draws joint posterior draws, P(i best) = fraction where i is the argmax;
  standard error sqrt(p (1 - p) / n_draws), reported as ``mc_se`` (the largest over arms).

Top-two Thompson sampling (Russo 2016, "Simple Bayesian algorithms for best arm
identification", Section 3.1): play the posterior leader with probability beta, otherwise
re-sample until a different arm leads. Its allocation probability is
psi_i = beta p_i + (1 - beta) p_i sum_{j != i} p_j / (1 - p_j).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field
from scipy import special

from armlab.core.policies.base import (
    POLICY_VERSION,
    AllocationWeights,
    CommonSettings,
    FloatArray,
    PolicyModel,
    PolicyStats,
    apply_floor,
    check_floor,
    in_burn_in,
    uniform_weights,
)

Positive = Annotated[float, Field(gt=0.0)]


class ThompsonParams(PolicyModel):
    """The registrable parameters of ``thompson``.

    prior_alpha, prior_beta: Beta prior (binary rewards).
    prior_mean, prior_kappa, prior_shape, prior_rate: NIG(mu0, kappa0, a0, b0) prior
    (continuous rewards).
    method: ``quadrature`` or ``monte_carlo`` for P(best); n_draws for Monte Carlo; grid:
    quadrature nodes per arm.
    """

    prior_alpha: Positive = 1.0
    prior_beta: Positive = 1.0
    prior_mean: float = 0.0
    prior_kappa: Positive = 1.0
    prior_shape: Positive = 1.0
    prior_rate: Positive = 1.0
    method: Literal["quadrature", "monte_carlo"] = "quadrature"
    n_draws: int = Field(20_000, ge=100, le=10_000_000)
    grid: int = Field(257, ge=17, le=10_001)


class TopTwoThompsonParams(ThompsonParams):
    """``top_two_thompson`` (Russo 2016): ``top_two_beta`` = probability of playing the leader."""

    top_two_beta: float = Field(0.5, gt=0.0, lt=1.0)


class ThompsonSettings(CommonSettings, TopTwoThompsonParams):
    """Everything a Thompson-sampling policy runs with (validated on construction).

    reward: ``binary`` (Beta-Bernoulli) or ``continuous`` (Normal, unknown variance), from the
    experiment's reward kind; top_two: top-two Thompson sampling with leader probability
    ``top_two_beta``.
    """

    reward: Literal["binary", "continuous"] = "binary"
    top_two: bool = False


# --------------------------------------------------------------------------- posteriors


def beta_posterior(
    n: FloatArray, successes: FloatArray, alpha0: float, beta0: float
) -> tuple[FloatArray, FloatArray]:
    """Beta posterior parameters; works on any shape. Successes are clipped into [0, n]."""
    s = np.clip(successes, 0.0, n)
    return alpha0 + s, beta0 + (n - s)


def nig_posterior(
    n: FloatArray,
    reward_sum: FloatArray,
    reward_sumsq: FloatArray,
    mu0: float,
    kappa0: float,
    a0: float,
    b0: float,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Student-t marginal of the mean under NIG (Murphy 2007, eqs. 85-90): (df, loc, scale)."""
    safe_n = np.maximum(n, 1e-300)
    xbar = np.where(n > 0, reward_sum / safe_n, 0.0)
    ss = np.maximum(reward_sumsq - n * xbar**2, 0.0)  # sum (x - xbar)^2
    kappa_n = kappa0 + n
    mu_n = (kappa0 * mu0 + n * xbar) / kappa_n
    a_n = a0 + n / 2.0
    b_n = b0 + ss / 2.0 + kappa0 * n * (xbar - mu0) ** 2 / (2.0 * kappa_n)
    return 2.0 * a_n, mu_n, np.sqrt(b_n / (a_n * kappa_n))


# --------------------------------------------------------------------------- P(best)


def _student_t_pdf(
    x: FloatArray,
    df: FloatArray,
    loc: FloatArray,
    scale: FloatArray,
) -> FloatArray:
    """Location-scale Student-t density (closed form; avoids importing scipy.stats, ~2 s)."""
    z = (x - loc) / scale
    log_norm = (
        special.gammaln((df + 1.0) / 2.0)
        - special.gammaln(df / 2.0)
        - 0.5 * np.log(df * np.pi)
        - np.log(scale)
    )
    return np.exp(log_norm - (df + 1.0) / 2.0 * np.log1p(z * z / df))


def _z_nodes(m: int) -> FloatArray:
    return np.linspace(-7.0, 7.0, m)


def _exclusive_prod(f: FloatArray) -> FloatArray:
    """prod_{j != i} f[..., j, :] for every i along axis -2, without division."""
    k = f.shape[-2]
    ones = np.ones_like(f[..., :1, :])
    prefix = np.cumprod(np.concatenate([ones, f[..., :-1, :]], axis=-2), axis=-2)
    suffix = np.cumprod(np.concatenate([ones, f[..., ::-1, :][..., :-1, :]], axis=-2), axis=-2)
    suffix = suffix[..., ::-1, :]
    assert prefix.shape[-2] == k
    return prefix * suffix


def _beta_pdf(x: FloatArray, a: FloatArray, b: FloatArray) -> FloatArray:
    # log-space density: ~10x faster than scipy.stats.beta.pdf on large grids
    return np.exp((a - 1.0) * np.log(x) + (b - 1.0) * np.log1p(-x) - special.betaln(a, b))


def prob_best_beta_quadrature(
    a: FloatArray, b: FloatArray, grid: int = 257
) -> tuple[FloatArray, FloatArray]:
    """P(arm i has the largest mean) for independent Beta(a_i, b_i), shape (..., K).

    Returns (probabilities normalised to sum 1, |raw sum - 1| per row).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    u = special.ndtr(_z_nodes(grid))  # (m,)
    nodes = special.betaincinv(a[..., None], b[..., None], u)  # (..., K, m)
    return _integrate(
        nodes,
        lambda x: _beta_pdf(x, a[..., None], b[..., None]),
        lambda x: special.betainc(a[..., None], b[..., None], x),
        support=(0.0, 1.0),
    )


def prob_best_t_quadrature(
    df: FloatArray, loc: FloatArray, scale: FloatArray, grid: int = 257
) -> tuple[FloatArray, FloatArray]:
    """P(arm i has the largest mean) for independent Student-t marginals, shape (..., K)."""
    df = np.asarray(df, dtype=np.float64)
    loc = np.asarray(loc, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    u = special.ndtr(_z_nodes(grid))
    nodes = loc[..., None] + scale[..., None] * special.stdtrit(df[..., None], u)
    return _integrate(
        nodes,
        lambda x: _student_t_pdf(x, df[..., None], loc[..., None], scale[..., None]),
        lambda x: special.stdtr(df[..., None], (x - loc[..., None]) / scale[..., None]),
        support=(-np.inf, np.inf),
    )


def _integrate(
    nodes: FloatArray,
    pdf: Any,
    cdf: Any,
    support: tuple[float, float],
) -> tuple[FloatArray, FloatArray]:
    shape = nodes.shape  # (..., K, m)
    k = shape[-2]
    x = np.sort(nodes.reshape(*shape[:-2], 1, k * shape[-1]), axis=-1)  # (..., 1, K*m)
    x = np.clip(x, support[0], support[1])
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        f = np.nan_to_num(pdf(x), nan=0.0, posinf=0.0)  # (..., K, K*m)
        big_f = np.clip(np.nan_to_num(cdf(x), nan=0.0), 0.0, 1.0)
    integrand = f * _exclusive_prod(big_f)
    dx = np.diff(x, axis=-1)
    raw = np.sum(0.5 * (integrand[..., 1:] + integrand[..., :-1]) * dx, axis=-1)  # (..., K)
    total = raw.sum(axis=-1, keepdims=True)
    err = np.abs(total[..., 0] - 1.0)
    p = np.where(total > 0, raw / np.where(total > 0, total, 1.0), 1.0 / k)
    return p, err


def prob_best_monte_carlo(draws: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Fraction of joint draws (D, K) in which each arm is the argmax, and its standard error."""
    d, k = draws.shape
    counts = np.bincount(np.argmax(draws, axis=1), minlength=k).astype(np.float64)
    p = counts / d
    return p, np.sqrt(p * (1.0 - p) / d)


def top_two_weights(p: FloatArray, beta: float) -> FloatArray:
    """Top-two TS allocation (Russo 2016, Sec. 3.1) from P(best) p, shape (..., K)."""
    q = np.clip(1.0 - p, 1e-12, None)
    s = np.sum(p / q, axis=-1, keepdims=True)
    second = p * (s - p / q)
    psi = beta * p + (1.0 - beta) * second
    return psi / psi.sum(axis=-1, keepdims=True)


# --------------------------------------------------------------------------- policy


class ThompsonSampling:
    """Thompson sampling policy; ``weights`` = (top-two adjusted) P(best), floored."""

    version = POLICY_VERSION

    def __init__(self, settings: ThompsonSettings | None = None) -> None:
        self.settings = settings or ThompsonSettings()
        self.name = "top_two_thompson" if self.settings.top_two else "thompson"

    def posterior_draws(self, stats: PolicyStats, rng: np.random.Generator,
                        size: int) -> FloatArray:
        """(size, K) joint draws of the arm means from the posterior."""
        s = self.settings
        if s.reward == "binary":
            a, b = beta_posterior(stats.n, stats.reward_sum, s.prior_alpha, s.prior_beta)
            return rng.beta(a, b, size=(size, stats.k))
        df, loc, scale = nig_posterior(
            stats.n,
            stats.reward_sum,
            stats.reward_sumsq,
            s.prior_mean,
            s.prior_kappa,
            s.prior_shape,
            s.prior_rate,
        )
        return loc + scale * rng.standard_t(df, size=(size, stats.k))

    def prob_best(
        self, stats: PolicyStats, rng: np.random.Generator
    ) -> tuple[FloatArray, float | None, float | None]:
        """(P(best), Monte Carlo SE or None, quadrature error or None)."""
        s = self.settings
        if s.method == "monte_carlo":
            p, se = prob_best_monte_carlo(self.posterior_draws(stats, rng, s.n_draws))
            return p, float(se.max()), None
        if s.reward == "binary":
            a, b = beta_posterior(stats.n, stats.reward_sum, s.prior_alpha, s.prior_beta)
            p, err = prob_best_beta_quadrature(a, b, s.grid)
        else:
            df, loc, scale = nig_posterior(
                stats.n,
                stats.reward_sum,
                stats.reward_sumsq,
                s.prior_mean,
                s.prior_kappa,
                s.prior_shape,
                s.prior_rate,
            )
            p, err = prob_best_t_quadrature(df, loc, scale, s.grid)
        return p, None, float(err)

    def weights(self, stats: PolicyStats, rng: np.random.Generator) -> AllocationWeights:
        s = self.settings
        check_floor(s.floor, stats.k)
        # binary rewards: successes are clipped into [0, n] by beta_posterior
        if in_burn_in(stats, s.burn_in):
            return AllocationWeights(
                uniform_weights(stats.k), "burn_in", details={"burn_in": s.burn_in}
            )
        p, se, err = self.prob_best(stats, rng)
        w = top_two_weights(p, s.top_two_beta) if s.top_two else p
        return AllocationWeights(
            apply_floor(w, s.floor),
            s.method,
            prob_best=p,
            mc_se=se,
            quad_error=err,
            details={"top_two": s.top_two} if s.top_two else {},
        )
