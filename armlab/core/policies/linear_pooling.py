"""``linear_thompson``'s ``pooling: model_average``: the per-context model against a
context-free one, weighted by their posterior probabilities (Bayesian model averaging,
Hoeting et al. 1999; the evidence of a linear-Gaussian model, Bishop 2006, eq. 3.86).

Two hypotheses about the declared features, for all arms at once:

* **context-free** (H0): the context moves every arm's reward by the same factor,
  r = f_k b(x) + noise: a baseline b(x) = x'beta shared by the arms (beta: the ridge fit of all
  arms' data together) times each arm's factor f_k, prior f_k - 1 ~ N(0, 1). Under H0 the
  arms' ranking is the same in every context (b(x) > 0), so it serves one P(best) row for all
  contexts: P(f_k is the largest), f_k's posterior on the exploration scale ``noise_sd``.
  Segments alike, or heavy users clicking more on every variant, are H0.
* **per-context** (H1): each arm's own linear model (the policy's posterior, unpooled by
  default). For the evidence it is written on the same footing as H0, r = f_k b(x) + x'delta_k
  + noise with delta_k ~ N(0, s^2 I), s = ``effect_scale`` x the mean reward: deviations from
  H0 of about half the mean reward (the default 0.5) are what H1 expects.

The posterior probability of H1 is w = sigmoid(log p(y | H1) - log p(y | H0) + logit(p1)) with
p1 = ``context_prior`` (default 0.95: features are declared because they are expected to
matter; the data must show they do not). The evidences use the reward variance
v^2 = m (1 - m) of binary rewards with mean m (the exploration scale's square for continuous
ones), and come from the arms' sufficient statistics alone (sum xx', sum xr; the y'y terms
cancel between H0 and H1, the plug-in baseline appears in both). The policy serves

    P(arm | x) = w P_H1(arm | x) + (1 - w) P_H0(arm),

exactly what it draws from, so the logged propensity stays exact. Where segments differ the
data reject H0 within a few thousand impressions (w -> 1: the per-context model alone); where
they do not, w -> 0 and the arms are compared on all the traffic together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

from armlab.core.policies.base import FloatArray
from armlab.core.policies.normal_max import normal_prob_best


def log_evidence(xtx: FloatArray, xty: FloatArray, lam: FloatArray, v2: FloatArray
                 ) -> FloatArray:
    """log p(y | model) (..., K) of r = x'theta + N(0, v2) with theta ~ N(0, v2 / lam), up to
    the terms every model of the same y shares (-y'y / 2v2, -n/2 log 2 pi v2):
    b'A^-1 b / 2v2 - 1/2 log|A| + 1/2 sum log lam, A = X'X + diag(lam), b = X'y."""
    d = xty.shape[-1]
    idx = np.arange(d)
    a = np.array(xtx, dtype=np.float64)
    a[..., idx, idx] += lam
    chol = np.linalg.cholesky(a)
    z = np.linalg.solve(chol, xty[..., None])[..., 0]
    return np.asarray(
        0.5 * (z * z).sum(axis=-1) / v2
        - np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(axis=-1)
        + 0.5 * np.log(lam).sum(axis=-1), dtype=np.float64)


def mean_reward(xtx: FloatArray, xty: FloatArray) -> FloatArray:
    """The mean reward over all arms (...), with a Beta(1, 1) prior, from per-arm statistics
    whose coordinate 0 is the intercept (xtx[..., 0, 0] counts, xty[..., 0] sums)."""
    return np.asarray((xty[..., 0].sum(axis=-1) + 1.0) / (xtx[..., 0, 0].sum(axis=-1) + 2.0),
                      dtype=np.float64)


@dataclass(frozen=True)
class ContextFree:
    """H0's serving row and the weight of H1: ``prob_best`` (..., K), ``context_weight`` (...)."""

    prob_best: FloatArray
    context_weight: FloatArray


def context_free(xtx: FloatArray, xty: FloatArray, *, ridge: float, noise_sd: FloatArray,
                 effect_scale: float, context_prior: float, binary: bool, grid: int
                 ) -> ContextFree:
    """H0's P(best) and w (see the module doc) from per-arm statistics xtx (..., K, d, d),
    xty (..., K, d) whose coordinate 0 is the intercept (so xtx[..., 0, 0] counts the arm's
    observations); ``noise_sd``: the exploration scale per leading index (...); ``grid``:
    quadrature nodes beyond 3 arms."""
    d = xty.shape[-1]
    if binary:
        m = mean_reward(xtx, xty)
        v2 = np.maximum(m * (1.0 - m), 1e-6)
    else:
        m = xty[..., 0].sum(axis=-1) / np.maximum(xtx[..., 0, 0].sum(axis=-1), 1.0)
        v2 = np.broadcast_to(np.asarray(noise_sd, dtype=np.float64) ** 2, m.shape)
    scale2 = (effect_scale * np.maximum(np.abs(m), 1e-3)) ** 2  # (...)
    # the shared baseline b(x) = x'beta: all arms' data together, ridge
    a = xtx.sum(axis=-3) + ridge * np.eye(d)
    beta = np.linalg.solve(a, xty.sum(axis=-2)[..., None])[..., 0]  # (..., d)
    bxx = np.einsum("...kde,...e->...kd", xtx, beta)  # sum b(x) x, per arm
    b2 = np.einsum("...kd,...d->...k", bxx, beta)  # sum b(x)^2
    by = np.einsum("...kd,...d->...k", xty, beta)  # sum b(x) y
    g = by - b2  # sum b(x) (y - b(x)): H0 and H1 model z = y - b(x)
    shift = b2 - 2.0 * by  # z'z - y'y
    v2k = v2[..., None]
    # H0: z = (f - 1) b(x), f - 1 ~ N(0, 1)
    a0 = b2 + v2k
    l0 = 0.5 * g * g / (v2k * a0) - 0.5 * np.log(a0) + 0.5 * np.log(v2k) - 0.5 * shift / v2k
    # H1: z = (f - 1) b(x) + x'delta, delta ~ N(0, scale^2 I)
    xt = np.concatenate([np.concatenate([b2[..., None, None], bxx[..., None, :]], axis=-1),
                         np.concatenate([bxx[..., :, None], xtx], axis=-1)], axis=-2)
    bz = np.concatenate([g[..., None], xty - bxx], axis=-1)
    lam = np.concatenate([np.broadcast_to(v2k[..., None], (*g.shape, 1)),
                          np.broadcast_to((v2 / scale2)[..., None, None], (*g.shape, d))],
                         axis=-1)
    l1 = log_evidence(xt, bz, lam, v2k) - 0.5 * shift / v2k
    logit = (l1 - l0).sum(axis=-1) + np.log(context_prior / (1.0 - context_prior))
    w = special.expit(logit)
    # H0's ranking: f_k's posterior on the exploration scale (prior variance 1)
    sd = np.asarray(noise_sd, dtype=np.float64)[..., None]  # against (..., K)
    a0s = b2 + sd**2
    p, _ = normal_prob_best(1.0 + g / a0s, sd / np.sqrt(a0s), grid)
    return ContextFree(np.asarray(p, dtype=np.float64), np.asarray(w, dtype=np.float64))


__all__ = ["ContextFree", "context_free", "log_evidence", "mean_reward"]
