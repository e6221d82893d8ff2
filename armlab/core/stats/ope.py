"""Off-policy evaluation: the value of a target policy estimated from logged bandit data.

Every logged event carries the action that was taken, its reward, and the propensity with
which the *logging* policy chose it. A *target* policy that never ran is judged by
re-weighting those events with ``w_i = pi_e(a_i | x_i) / pi_0(a_i | x_i)``.

Estimators (notation of Dudik, Langford & Li, "Doubly Robust Policy Evaluation and
Learning", ICML 2011, and Swaminathan & Joachims, "The Self-Normalized Estimator for
Counterfactual Learning", NeurIPS 2015):

- IPW (Horvitz & Thompson 1952):      V = (1/n) sum_i w_i r_i
- self-normalised IPW (SNIPW):        V = sum_i w_i r_i / sum_i w_i
- doubly robust (DR, Dudik et al. eq. 2):
                                      V = (1/n) sum_i [ qbar_i + w_i (r_i - q_i) ]
  with q_i = qhat(x_i, a_i) the reward model at the logged action and
  qbar_i = sum_a pi_e(a | x_i) qhat(x_i, a) its expectation under the target policy.

Each estimate comes with a CLT confidence interval (the estimators are means of i.i.d.
terms, or a ratio of two such means for SNIPW, whose variance follows from the delta method)
and, optionally, an *asymptotic confidence sequence* that stays valid under continuous
monitoring: the Gaussian-mixture boundary of Robbins (1970) as used by Waudby-Smith, Arbour,
Sinha, Kennedy & Ramdas, "Time-uniform central limit theory and asymptotic confidence
sequences" (Annals of Statistics 2024, Thm 2.2). Every result states how many events carried
non-zero weight and the Kish effective sample size ``(sum w)^2 / sum w^2``: a small number of
heavy weights is the usual reason an interval is wide.

Intervals and the reward range: every estimator takes an optional ``reward_range`` ``(lo,
hi)``, the range a reward can take. A policy's value (its mean reward) lies in that range, so
the CLT interval and the confidence sequence are intersected with it; that keeps their
coverage and only removes values that are impossible (a binary reward's interval lies in
[0, 1]). The point estimate is NOT clipped: IPW and DR are unbiased and may leave the range
(a sign of heavy weights; their interval then still overlaps the range or collapses to its
nearest end). With no declared range (``None``, continuous rewards) nothing is clipped: the
range observed in the log is not used, because the rewards a target policy would collect can
lie outside what the logging policy happened to observe, and clipping to the sample's range
would break coverage. Callers that know bounds (a 1-5 rating) pass them.

Pure numpy/scipy: no I/O, no settings. Inputs are 1-d arrays of length n (one entry per
logged event).

Layout: :class:`OPEEstimate`, its intervals (:func:`cs_radius`) and the shared input checks
live in :mod:`armlab.core.stats.ope_estimate`, the cross-fitted reward model of
:func:`tabular_dr` in :mod:`armlab.core.stats.ope_tabular`; this module holds the estimators
and re-exports the rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from armlab.core.stats.ope_estimate import (
    DEFAULT_CS_HORIZON,
    FloatArray,
    OPEEstimate,
    RewardRange,
    _as_1d,
    _check_alpha,
    _check_range,
    _finish,
    _sd,
    cs_radius,
    importance_weights,
)
from armlab.core.stats.ope_tabular import cross_fit, target_of
from armlab.errors import StatsError

__all__ = [
    "DEFAULT_CS_HORIZON", "ESTIMATORS", "FloatArray", "OPEEstimate", "RewardRange", "cs_radius",
    "doubly_robust", "evaluate_policy", "importance_weights", "ipw", "on_policy_mean", "snipw",
    "tabular_dr",
]

ESTIMATORS = ("ipw", "snipw", "dr")


def ipw(
    rewards: Any,
    propensities: Any,
    target_probs: Any,
    *,
    alpha: float = 0.05,
    confidence_sequence: bool = False,
    t_opt: int | None = None,
    reward_range: RewardRange | None = None,
) -> OPEEstimate:
    """Inverse propensity weighting: unbiased when propensities are right and positive
    wherever the target policy acts (Horvitz & Thompson 1952)."""
    _check_alpha(alpha)
    w = importance_weights(propensities, target_probs)
    r = _as_1d("rewards", rewards, w.shape[0])
    _check_range(reward_range, r)
    terms = w * r
    return _finish("ipw", float(np.mean(terms)), _sd(terms), w.shape[0], w, alpha,
                   confidence_sequence, t_opt, reward_range)


def snipw(
    rewards: Any,
    propensities: Any,
    target_probs: Any,
    *,
    alpha: float = 0.05,
    confidence_sequence: bool = False,
    t_opt: int | None = None,
    reward_range: RewardRange | None = None,
) -> OPEEstimate:
    """Self-normalised IPW: ``sum w r / sum w`` (Swaminathan & Joachims 2015).

    Slightly biased but bounded by the reward range and usually much less variable. Its
    standard error is the delta-method one for a ratio of means:
    ``Var ~ (1/n) Var(w_i (r_i - V)) / mean(w)^2``.
    """
    _check_alpha(alpha)
    w = importance_weights(propensities, target_probs)
    r = _as_1d("rewards", rewards, w.shape[0])
    _check_range(reward_range, r)
    sw = float(np.sum(w))
    if sw <= 0:
        raise StatsError(
            "no logged event has positive target probability: the target policy never "
            "takes an action the logging policy took, so SNIPW is undefined"
        )
    value = float(np.sum(w * r)) / sw
    terms = w * (r - value) / float(np.mean(w))
    return _finish("snipw", value, _sd(terms), w.shape[0], w, alpha, confidence_sequence, t_opt,
                   reward_range)


def doubly_robust(
    rewards: Any,
    propensities: Any,
    target_probs: Any,
    q_logged: Any,
    q_target: Any,
    *,
    alpha: float = 0.05,
    confidence_sequence: bool = False,
    t_opt: int | None = None,
    reward_range: RewardRange | None = None,
) -> OPEEstimate:
    """Doubly robust estimate (Dudik, Langford & Li 2011, eq. 2).

    ``q_logged[i] = qhat(x_i, a_i)``; ``q_target[i] = sum_a pi_e(a|x_i) qhat(x_i, a)``.
    Unbiased if either the propensities or the reward model are right; the reward model
    should be fit on other data (cross-fitting, see :func:`tabular_dr`) to keep that promise.
    """
    _check_alpha(alpha)
    w = importance_weights(propensities, target_probs)
    n = w.shape[0]
    r = _as_1d("rewards", rewards, n)
    ql = _as_1d("q_logged", q_logged, n)
    qt = _as_1d("q_target", q_target, n)
    _check_range(reward_range, r)
    terms = qt + w * (r - ql)
    return _finish("dr", float(np.mean(terms)), _sd(terms), n, w, alpha, confidence_sequence,
                   t_opt, reward_range)


def tabular_dr(
    actions: Sequence[str],
    rewards: Any,
    propensities: Any,
    target: Mapping[str, float],
    *,
    strata: Sequence[str] | None = None,
    target_by_stratum: Mapping[str, Mapping[str, float]] | None = None,
    folds: int = 2,
    alpha: float = 0.05,
    confidence_sequence: bool = False,
    t_opt: int | None = None,
    reward_range: RewardRange | None = None,
) -> OPEEstimate:
    """DR with a per-(stratum, action) mean-reward model, cross-fitted over ``folds``.

    For context-free allocations (armlab arms) or position-stratified ones (Open Bandit
    Dataset). The reward model for fold k is the self-normalised IPW mean of each
    (stratum, action) cell on the *other* folds (falling back to the stratum's overall mean
    for unseen cells), so the model never sees the event it corrects (Chernozhukov et al.,
    "Double/debiased machine learning", Econometrics Journal 2018; the model is
    :func:`armlab.core.stats.ope_tabular.cross_fit`).
    """
    acts = [str(a) for a in actions]
    n = len(acts)
    r = _as_1d("rewards", rewards, n)
    p = _as_1d("propensities", propensities, n)
    strat = [str(s) for s in strata] if strata is not None else [""] * n
    if len(strat) != n:
        raise StatsError(f"strata has {len(strat)} entries, expected {n}")
    if folds < 2:
        raise StatsError(f"folds must be >= 2, got {folds}")
    dist = target_of(target, target_by_stratum)
    tp = np.array([float(dist(s).get(a, 0.0)) for s, a in zip(strat, acts, strict=True)])
    q_logged, q_target = cross_fit(acts, strat, r, p, dist, folds)
    return doubly_robust(r, p, tp, q_logged, q_target, alpha=alpha,
                         confidence_sequence=confidence_sequence, t_opt=t_opt,
                         reward_range=reward_range)


def evaluate_policy(
    actions: Sequence[str],
    rewards: Any,
    propensities: Any,
    target: Mapping[str, float],
    *,
    strata: Sequence[str] | None = None,
    target_by_stratum: Mapping[str, Mapping[str, float]] | None = None,
    alpha: float = 0.05,
    confidence_sequence: bool = True,
    estimators: Sequence[str] = ESTIMATORS,
    t_opt: int | None = None,
    reward_range: RewardRange | None = None,
) -> dict[str, OPEEstimate]:
    """IPW, SNIPW and cross-fitted DR of a (possibly stratified) allocation over actions.

    ``target`` maps action -> probability (used when ``target_by_stratum`` is None);
    ``target_by_stratum`` maps stratum -> (action -> probability), e.g. a position-aware
    ranking policy. Probabilities of one stratum must sum to at most 1. ``t_opt`` tunes every
    estimator's confidence sequence; ``reward_range`` clips every interval (module docs).
    """
    for name in estimators:
        if name not in ESTIMATORS:
            raise StatsError(f"unknown estimator {name!r}; choose from {', '.join(ESTIMATORS)}")
    dists = list(target_by_stratum.values()) if target_by_stratum is not None else [target]
    for d in dists:
        total = sum(float(v) for v in d.values())
        if any(float(v) < 0 for v in d.values()) or total > 1 + 1e-6:
            raise StatsError(
                f"target probabilities must be >= 0 and sum to at most 1, got sum {total:.6g}"
            )
    acts = [str(a) for a in actions]
    strat = [str(s) for s in strata] if strata is not None else [""] * len(acts)
    if target_by_stratum is not None:
        tp = [float(target_by_stratum.get(s, {}).get(a, 0.0)) for s, a in zip(strat, acts,
                                                                               strict=True)]
    else:
        tp = [float(target.get(a, 0.0)) for a in acts]
    out: dict[str, OPEEstimate] = {}
    if "ipw" in estimators:
        out["ipw"] = ipw(rewards, propensities, tp, alpha=alpha,
                         confidence_sequence=confidence_sequence, t_opt=t_opt,
                         reward_range=reward_range)
    if "snipw" in estimators:
        out["snipw"] = snipw(rewards, propensities, tp, alpha=alpha,
                             confidence_sequence=confidence_sequence, t_opt=t_opt,
                             reward_range=reward_range)
    if "dr" in estimators:
        out["dr"] = tabular_dr(acts, rewards, propensities, target, strata=strata,
                               target_by_stratum=target_by_stratum, alpha=alpha,
                               confidence_sequence=confidence_sequence, t_opt=t_opt,
                               reward_range=reward_range)
    return out


def on_policy_mean(
    rewards: Any, *, alpha: float = 0.05, reward_range: RewardRange | None = None
) -> OPEEstimate:
    """The plain mean reward of a log with its CLT interval (the on-policy reference)."""
    r = _as_1d("rewards", rewards)
    if r.shape[0] == 0:
        raise StatsError("no events")
    _check_range(reward_range, r)
    w = np.ones_like(r)
    return _finish("on_policy", float(np.mean(r)), _sd(r), r.shape[0], w, alpha, False, None,
                   reward_range)
