"""Linear Thompson sampling on numeric and one-hot context features (Agrawal & Goyal 2013).

Model (per arm k, disjoint parameters as in Li et al. 2010's disjoint LinUCB; MABWiser's LinTS
is the same model): reward r = x' theta_k + noise, noise ~ N(0, v^2), with the Gaussian prior
theta_k ~ N(0, (v^2 / lambda) I). ``lambda`` (``ridge``) is the ridge penalty and ``v``
(``noise_sd``) the exploration scale. The posterior is Gaussian (Bishop 2006, eqs. 3.50-3.51;
Agrawal & Goyal 2013, "Thompson Sampling for Contextual Bandits with Linear Payoffs",
Algorithm 1 with B = A_k):

    A_k = lambda I + sum x x',   mu_k = A_k^-1 sum x r,   theta_k | data ~ N(mu_k, v^2 A_k^-1).

Thompson sampling draws theta_k for every arm and serves argmax_k x' theta_k. For a fixed
context the drawn scores are independent normals, x' theta_k ~ N(x' mu_k, v^2 x' A_k^-1 x), so
P(arm k | x) = P(k has the largest of K independent normals): a 1-D integral,

    P(k | x) = integral phi_k(y) prod_{j != k} Phi_j(y) dy,

in closed form for up to 3 arms (Phi, and the bivariate normal orthant by Owen's T:
:mod:`armlab.core.policies.normal_max`), and for more by the trapezoid rule on the union of
the arms' quantile grids (as :mod:`armlab.core.policies.thompson` does for Beta posteriors);
``quad_error`` = |sum - 1| before normalisation. Serving draws from these probabilities after
the exploration floor, and logs the probability it drew from. During burn-in (an arm
with fewer than ``burn_in`` observations) every context is served uniformly.

With ``pooling: model_average`` (the default) the policy also weighs a context-free model
(a shared baseline times a factor per arm) against this one by their posterior
probabilities and serves P(arm | x) = w P(arm | x, this model) + (1 - w) P(arm | the
context-free model): :mod:`armlab.core.policies.linear_pooling`.

A snapshot precomputes mu_k and v^2 A_k^-1 (via a Cholesky solve) once; a request costs one
(K, d) product, one (K, d, d) quadratic form and the closed form (or a (K, K * grid)
quadrature beyond 3 arms), and a design
vector seen before in the snapshot (categorical contexts repeat) a dict lookup.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

from armlab.core.policies.base import (
    POLICY_VERSION,
    CommonSettings,
    FloatArray,
    apply_floor,
    check_floor,
)
from armlab.core.policies.context_features import ContextParams, ContextSpec
from armlab.core.policies.contextual import between_variance, draw_rows
from armlab.core.policies.linear_pooling import context_free, mean_reward
from armlab.core.policies.normal_max import normal_prob_best, normal_prob_best_one
from armlab.errors import PolicyError

Positive = Annotated[float, Field(gt=0.0)]
IntArray = npt.NDArray[np.int64]
#: Design vectors whose weights a snapshot remembers (see LinearAllocation.cache).
CACHE_SIZE = 4096


class LinearThompsonParams(ContextParams):
    """The parameters of ``linear_thompson`` (``policy.params``, registered in ``POLICY_PARAMS``).

    features: numeric and categorical (one-hot) features; ridge: lambda, the prior precision
    in units of the noise (prior theta ~ N(0, noise_sd^2 / ridge I)); onehot_ridge: the prior
    precision of the one-hot (categorical) coefficients: ``empirical_bayes``
    estimates it per arm and feature from the data (:func:`onehot_precision`), so alike levels
    are pooled and different ones are not; a number fixes it (large: shrink the per-level
    deviations towards the shared intercept); null (default) uses ``ridge``; noise_sd: v, the
    reward noise scale, which sets how widely the posterior explores (``auto``, the default:
    :func:`exploration_sd`); grid: quadrature nodes
    per arm for P(arm | context) with more than 3 arms (up to 3 use the closed form);
    pooling: ``model_average`` (default) mixes the per-context model with a context-free one
    by their posterior probabilities (:mod:`armlab.core.policies.linear_pooling`), ``none``
    serves the per-context model alone; context_prior: the prior probability that the
    context matters; effect_scale: the deviations from the context-free model the per-context
    model expects, in units of the mean reward.
    """

    ridge: Positive = 1.0
    onehot_ridge: Positive | Literal["empirical_bayes"] | None = None
    noise_sd: Positive | Literal["auto"] = "auto"
    grid: int = Field(48, ge=8, le=2049)
    pooling: Literal["model_average", "none"] = "model_average"
    context_prior: float = Field(0.95, gt=0.0, lt=1.0)
    effect_scale: Positive = 0.5


class LinearThompsonSettings(CommonSettings, LinearThompsonParams):
    """Everything ``linear_thompson`` runs with (the floor applies per context;
    ``binary_rewards`` from the experiment's reward kind sets the model average's variance)."""

    binary_rewards: bool = True


@dataclass(frozen=True)
class LinearStats:
    """Per-arm sufficient statistics: ``xtx`` (K, d, d) = sum x x', ``xty`` (K, d) = sum x r,
    ``n`` (K,) observation counts."""

    xtx: FloatArray
    xty: FloatArray
    n: FloatArray

    def __post_init__(self) -> None:
        xtx = np.asarray(self.xtx, dtype=np.float64)
        xty = np.asarray(self.xty, dtype=np.float64)
        n = np.asarray(self.n, dtype=np.float64)
        k = n.shape[0] if n.ndim == 1 else -1
        d = xty.shape[-1] if xty.ndim == 2 else -1
        if k < 1 or xty.shape != (k, d) or xtx.shape != (k, d, d):
            raise PolicyError(
                f"linear stats need xtx (K, d, d), xty (K, d), n (K,); got {xtx.shape}, "
                f"{xty.shape}, {n.shape}"
            )
        if not all(np.all(np.isfinite(x)) for x in (xtx, xty, n)) or np.any(n < 0):
            raise PolicyError("linear stats must be finite, with counts >= 0")
        object.__setattr__(self, "xtx", xtx)
        object.__setattr__(self, "xty", xty)
        object.__setattr__(self, "n", n)

    @classmethod
    def empty(cls, arms: int, dim: int) -> LinearStats:
        return cls(np.zeros((arms, dim, dim)), np.zeros((arms, dim)), np.zeros(arms))

    def add(self, x: FloatArray, arms: IntArray, rewards: FloatArray) -> LinearStats:
        """New stats with rows x (N, d) served ``arms`` (N,) and ``rewards`` (N,) added."""
        onehot = np.eye(self.n.shape[0])[np.asarray(arms, dtype=np.int64)]  # (N, K)
        r = np.asarray(rewards, dtype=np.float64)
        return LinearStats(
            self.xtx + np.einsum("nk,ni,nj->kij", onehot, x, x),
            self.xty + np.einsum("nk,ni,n->ki", onehot, x, r),
            self.n + onehot.sum(axis=0),
        )


#: ``noise_sd: auto`` for binary rewards: v = AUTO_SD_RATIO x sqrt(m (1 - m)), m the mean
#: reward; 0.7 makes v = 0.15 (the fixed default before ``auto``) at 5% click rates.
AUTO_SD_RATIO = 0.7
#: ``noise_sd: auto`` for continuous rewards (no second moments in the statistics).
AUTO_SD_CONTINUOUS = 0.15


def exploration_sd(st: LinearThompsonSettings, xtx: FloatArray, xty: FloatArray) -> FloatArray:
    """v per leading index (...): ``noise_sd`` when it is a number; ``auto``: for binary
    rewards AUTO_SD_RATIO x the Bernoulli sd of the mean reward m over all arms (m with a
    Beta(1, 1) prior, from the intercept coordinates of the statistics), so the posterior's
    width follows the click rate (at 0.5% a fixed 0.15 would explore about three times too
    widely); for continuous rewards AUTO_SD_CONTINUOUS."""
    shape = xty.shape[:-2]
    if st.noise_sd != "auto":
        return np.full(shape, float(st.noise_sd))
    if not st.binary_rewards:
        return np.full(shape, AUTO_SD_CONTINUOUS)
    m = mean_reward(xtx, xty)
    return np.asarray(AUTO_SD_RATIO * np.sqrt(m * (1.0 - m)), dtype=np.float64)


def linear_posterior(
    xtx: FloatArray, xty: FloatArray, ridge: float | FloatArray, noise_sd: float | FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Posterior means (..., K, d) and covariances v^2 A^-1 (..., K, d, d), any leading shape.

    ``ridge``: lambda, a number or prior precisions per coordinate, (d,) or (..., K, d);
    ``noise_sd``: v, a number or one per leading index (...).
    """
    d = xty.shape[-1]
    idx = np.arange(d)
    a = np.array(xtx, dtype=np.float64)
    a[..., idx, idx] += np.asarray(ridge, dtype=np.float64)
    chol = np.linalg.cholesky(a)
    eye = np.broadcast_to(np.eye(d), a.shape)
    # A^-1 = L^-T L^-1 from two triangular-shaped solves (A is symmetric positive definite)
    linv = np.linalg.solve(chol, eye)
    a_inv = np.swapaxes(linv, -1, -2) @ linv
    mean = (a_inv @ xty[..., None])[..., 0]
    v2 = np.asarray(noise_sd, dtype=np.float64) ** 2
    return mean, v2[..., None, None, None] * a_inv


def linear_weights(
    x: FloatArray, mean: FloatArray, cov: FloatArray, floor: float, grid: int,
    pooled: FloatArray | None = None, context_weight: FloatArray | float = 1.0,
) -> tuple[FloatArray, FloatArray]:
    """Floored P(arm | x) for design rows x (..., N, d) under posteriors mean (..., K, d),
    cov (..., K, d, d), mixed with the context-free row ``pooled`` (..., K) at weight
    1 - ``context_weight`` (...) (``pooling: model_average``); returns (weights (..., N, K),
    quadrature error (..., N))."""
    loc = np.einsum("...nd,...kd->...nk", x, mean)
    var = np.einsum("...nd,...kde,...ne->...nk", x, cov, x)
    p, err = normal_prob_best(loc, np.sqrt(np.maximum(var, 0.0)), grid)
    if pooled is not None:
        w = np.asarray(context_weight, dtype=np.float64)[..., None, None]
        p = w * p + (1.0 - w) * np.asarray(pooled)[..., None, :]
    return apply_floor(p, floor), err


@dataclass(frozen=True)
class LinearModel:
    """The fitted model of a snapshot (any leading shape): the per-context posterior ``mean``
    (..., K, d), ``cov`` (..., K, d, d); with ``pooling: model_average`` the context-free
    row ``pooled`` (..., K) and the per-context model's probability ``context_weight`` (...)."""

    mean: FloatArray
    cov: FloatArray
    pooled: FloatArray | None
    context_weight: FloatArray


def fit_linear(spec: ContextSpec, st: LinearThompsonSettings, xtx: FloatArray,
               xty: FloatArray) -> LinearModel:
    """The posterior of every arm and, with ``pooling: model_average``, the context-free model
    and the weights of the two (:mod:`armlab.core.policies.linear_pooling`)."""
    v = exploration_sd(st, xtx, xty)
    lam = prior_precision(spec, st, xtx, xty, v)
    mean, cov = linear_posterior(xtx, xty, lam, v)
    if st.pooling == "none":
        return LinearModel(mean, cov, None, np.ones(xty.shape[:-2]))
    h0 = context_free(xtx, xty, ridge=st.ridge, noise_sd=v,
                      effect_scale=st.effect_scale, context_prior=st.context_prior,
                      binary=st.binary_rewards, grid=st.grid)
    return LinearModel(mean, cov, h0.prob_best, h0.context_weight)


@dataclass(frozen=True)
class LinearAllocation:
    """A ``linear_thompson`` snapshot: the posterior, ready to serve any context."""

    spec: ContextSpec
    mean: FloatArray
    cov: FloatArray
    floor: float
    grid: int
    burn_in: bool
    #: ``pooling: model_average``: the context-free P(best) row (K,) and the per-context
    #: model's probability (None and 1.0 with ``pooling: none``)
    pooled: FloatArray | None = None
    context_weight: float = 1.0
    #: weights of design vectors already served (the posterior is fixed for the snapshot, so
    #: a repeated context, e.g. categorical features only, costs a dict lookup); bounded
    cache: dict[bytes, FloatArray] = field(default_factory=dict, repr=False, compare=False)

    def weights_x(self, x: FloatArray) -> tuple[FloatArray, FloatArray]:
        """(N, K) P(arm | x) (floored) and (N,) quadrature error for design rows x (N, d)."""
        k = self.mean.shape[0]
        if self.burn_in:
            return np.full((x.shape[0], k), 1.0 / k), np.zeros(x.shape[0])
        return linear_weights(x, self.mean, self.cov, self.floor, self.grid, self.pooled,
                              self.context_weight)

    def propensities(self, contexts: Sequence[Mapping[str, Any]]) -> FloatArray:
        """(N, K): P(arm | context) for each context (computed once per distinct context)."""
        x = self.spec.encode_many(contexts)
        if x.shape[0] == 0:
            return np.zeros((0, self.mean.shape[0]))
        rows, inverse = np.unique(x, axis=0, return_inverse=True)
        return self.weights_x(rows)[0][inverse.reshape(-1)]

    def weights_one(self, x: FloatArray) -> FloatArray:
        """(K,) floored P(arm | x) for one design vector x (d,): the per-request path."""
        key = x.tobytes()
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        k = self.mean.shape[0]
        if self.burn_in:
            return np.full(k, 1.0 / k)
        sd = np.sqrt(np.maximum(((self.cov @ x) * x).sum(axis=-1), 0.0))
        p = normal_prob_best_one(self.mean @ x, sd, np.linspace(-6.5, 6.5, self.grid))
        if self.pooled is not None:
            p = self.context_weight * p + (1.0 - self.context_weight) * self.pooled
        w = p if p.min() >= self.floor else apply_floor(p, self.floor)
        if len(self.cache) >= CACHE_SIZE:  # emptied when full: one-off contexts cannot
            self.cache.clear()  # keep the repeated ones out for the snapshot's life
        self.cache[key] = w
        return w

    def decide(self, context: Mapping[str, Any], rng: np.random.Generator) -> tuple[int, float]:
        """(arm, P(arm | context)) for one request."""
        w = self.weights_one(self.spec.encode(context))
        cdf = np.cumsum(w)
        arm = min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), w.size - 1)
        return arm, float(w[arm] / cdf[-1])

    def decide_many(
        self, contexts: Sequence[Mapping[str, Any]], rng: np.random.Generator
    ) -> tuple[IntArray, FloatArray]:
        """(N,) arms and (N,) propensities, vectorised."""
        return draw_rows(self.propensities(contexts), rng)


#: Largest prior precision the empirical-Bayes one-hot ridge takes (no measurable dispersion
#: between levels): per-level deviations of sd noise_sd / 100, i.e. pooled.
MAX_ONEHOT_RIDGE = 1e4


def onehot_precision(
    spec: ContextSpec, xtx: FloatArray, xty: FloatArray, ridge: float,
    noise_sd: float | FloatArray,
) -> FloatArray:
    """Empirical-Bayes prior precision of each arm's one-hot coefficients, (..., K, d).

    For each categorical feature and arm, the levels' reward rates (counts and sums are the
    diagonal of xtx and the entries of xty on the feature's one-hot block) give the
    between-level variance tau^2 by the moment estimator of segment_thompson
    (:func:`armlab.core.policies.contextual.between_variance`); a deviation with prior variance
    tau^2 has precision noise_sd^2 / tau^2 in the units of A (clipped to [ridge,
    MAX_ONEHOT_RIDGE]). Intercept and numeric coordinates keep ``ridge``.
    """
    d = spec.dim
    lam = np.full((*xty.shape[:-1], d), float(ridge))
    v2 = (np.asarray(noise_sd, dtype=np.float64) ** 2)[..., None]  # against (..., K)
    off = 1 + len(spec.numeric)
    for r in spec.radix:
        j = np.arange(off, off + r)
        n = np.swapaxes(xtx[..., j, j], -1, -2)  # (..., r, K)
        s = np.clip(np.swapaxes(xty[..., j], -1, -2), 0.0, n)
        tau2 = between_variance(n, s)[0][..., 0, :]  # (..., K)
        with np.errstate(divide="ignore"):
            prec = np.where(tau2 > 0, v2 / np.maximum(tau2, 1e-300), MAX_ONEHOT_RIDGE)
        lam[..., off:off + r] = np.clip(prec, ridge, MAX_ONEHOT_RIDGE)[..., None]
        off += r
    return lam


def prior_precision(
    spec: ContextSpec, st: LinearThompsonSettings, xtx: FloatArray, xty: FloatArray,
    noise_sd: float | FloatArray,
) -> FloatArray:
    """Prior precisions, (d,) or (..., K, d) with ``empirical_bayes``: ``ridge`` for the
    intercept and numeric features, ``onehot_ridge`` (default ``ridge``) for the one-hot
    blocks; ``noise_sd``: the resolved v (:func:`exploration_sd`)."""
    if st.onehot_ridge == "empirical_bayes":
        return onehot_precision(spec, xtx, xty, st.ridge, noise_sd)
    lam = np.full(spec.dim, st.ridge)
    if st.onehot_ridge is not None:
        lam[1 + len(spec.numeric):] = st.onehot_ridge
    return lam


class LinearThompson:
    """``linear_thompson``: disjoint linear Thompson sampling with a per-context floor."""

    name = "linear_thompson"
    version = POLICY_VERSION

    def __init__(self, settings: LinearThompsonSettings) -> None:
        self.settings = settings
        self.spec = ContextSpec(settings.features)

    def allocate(self, stats: LinearStats) -> LinearAllocation:
        s = self.settings
        k = stats.n.shape[0]
        check_floor(s.floor, k)
        if stats.xty.shape[1] != self.spec.dim:
            raise PolicyError(
                f"linear stats have dimension {stats.xty.shape[1]}, the features encode to "
                f"{self.spec.dim}"
            )
        model = fit_linear(self.spec, s, stats.xtx, stats.xty)
        burning = s.burn_in > 0 and bool(np.any(stats.n < s.burn_in))
        return LinearAllocation(self.spec, model.mean, model.cov, s.floor, s.grid, burning,
                                model.pooled, float(model.context_weight))

    def update(
        self, stats: LinearStats, contexts: Sequence[Mapping[str, Any]],
        arms: npt.ArrayLike, rewards: npt.ArrayLike,
    ) -> LinearStats:
        """New stats with the matured observations added (the input is not modified)."""
        return stats.add(self.spec.encode_many(contexts), np.asarray(arms, dtype=np.int64),
                         np.asarray(rewards, dtype=np.float64))


__all__ = [
    "LinearAllocation",
    "LinearModel",
    "LinearStats",
    "LinearThompson",
    "LinearThompsonParams",
    "LinearThompsonSettings",
    "exploration_sd",
    "fit_linear",
    "linear_posterior",
    "linear_weights",
    "normal_prob_best",
    "normal_prob_best_one",
    "onehot_precision",
    "prior_precision",
]
