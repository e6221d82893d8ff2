"""The value of personalisation: the learned contextual policy against the best single arm,
off-policy, with a time-uniform confidence sequence.

Target policy. ``greedy`` (the default the platform shows): in every context, the arm the
learned allocation rates best (the largest P(arm | context) of the latest snapshot, i.e. its
largest posterior P(best); ties to the first arm). That is the rule one would *ship* ("serve
each segment its best arm"), the same kind of decision as shipping the best single arm, so the
difference answers "what does serving by segment gain over shipping one arm". ``stochastic``
(the snapshot's weights as served, exploration floor included) is the value of the current
serving policy; it is available in :func:`personalisation_value` but not shown, since it mixes
the value of personalising with the cost of exploring.

Estimator. For each arm k, the IPW difference of the two deterministic (or stochastic) targets
on the same logged impressions,

    d_i(k) = (pi(a_i | x_i) - 1{a_i = k}) r_i / p_i,   E[d_i(k) | past] = V(pi) - V(k),

(p_i = the logged P(a_i | x_i), positive thanks to the exploration floor), whose mean gets the
asymptotic confidence sequence of :func:`armlab.core.stats.ope_estimate.cs_radius` (Waudby-Smith
et al. 2024, mixture tuned at a fixed horizon). The gain over the *best* single arm is
min_k (V(pi) - V(k)); with every arm's sequence at alpha / K (Bonferroni), [min_k lo_k,
min_k hi_k] covers it simultaneously at every time with probability >= 1 - alpha, and the best
arm never has to be chosen from the data.

Caveat (stated with the result): pi is learned from the same impressions it is evaluated on,
so its value is optimistic when the segments barely differ (the greedy choice in a segment
follows that segment's noise). The comparison arms are not selected, so the bias is only on the
policy's side; in the A/A validity cells the shown lower bound stays below 0 (see
docs/contextual.md, "Inference").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from armlab.core.stats.ope_estimate import cs_radius
from armlab.errors import StatsError

Target = Literal["greedy", "stochastic"]


def greedy_rows(probs: np.ndarray) -> np.ndarray:
    """One-hot rows of the largest entry of each row of ``probs`` (N, K)."""
    out = np.zeros_like(probs, dtype=np.float64)
    if probs.shape[0]:
        out[np.arange(probs.shape[0]), np.argmax(probs, axis=1)] = 1.0
    return out


def _cs(terms: np.ndarray, alpha: float, t_opt: int | None
        ) -> tuple[float, float, float]:
    n = terms.shape[0]
    mean = float(np.mean(terms))
    sd = float(np.std(terms, ddof=1)) if n > 1 else 0.0
    r = cs_radius(sd, n, alpha, t_opt=t_opt)
    return mean, mean - r, mean + r


def personalisation_value(
    arms: Sequence[str],
    actions: Sequence[str],
    rewards: Sequence[float],
    propensities: Sequence[float],
    target_probs: Any,
    *,
    target: Target = "greedy",
    alpha: float = 0.05,
    t_opt: int | None = None,
) -> dict[str, Any]:
    """V(pi) - max_k V(k) with its time-uniform confidence sequence (see the module doc).

    ``target_probs`` (N, K): the learned allocation's P(arm | x_i) for every impression's
    context (arms in ``arms`` order); ``target`` picks greedy or the probabilities as they are.
    """
    k_arms = len(arms)
    n = len(actions)
    probs = np.asarray(target_probs, dtype=np.float64).reshape(n, k_arms)
    if n < 2:
        raise StatsError("the value of personalisation needs at least two matured impressions")
    index = {a: i for i, a in enumerate(arms)}
    try:
        a_idx = np.fromiter((index[a] for a in actions), dtype=np.int64, count=n)
    except KeyError as exc:
        raise StatsError(f"impression of unknown arm {exc.args[0]!r}") from None
    p = np.asarray(propensities, dtype=np.float64)
    r = np.asarray(rewards, dtype=np.float64)
    if np.any(p <= 0) or np.any(p > 1):
        raise StatsError("logged propensities must lie in (0, 1]")
    pi = greedy_rows(probs) if target == "greedy" else probs
    rows = np.arange(n)
    v_pi = pi[rows, a_idx] * r / p
    per_arm: list[dict[str, Any]] = []
    values: dict[str, float] = {}
    for k, arm in enumerate(arms):
        v_k = (a_idx == k) * r / p
        values[arm] = float(np.mean(v_k))
        gain, lo, hi = _cs(v_pi - v_k, alpha / k_arms, t_opt)
        per_arm.append({"arm": arm, "gain": gain, "cs_low": lo, "cs_high": hi})
    best = max(values, key=lambda a: values[a])
    return {
        "target": target,
        "value_policy": float(np.mean(v_pi)),
        "value_arms": values,
        "best_arm": best,
        "gain": min(x["gain"] for x in per_arm),
        "cs_low": min(x["cs_low"] for x in per_arm),
        "cs_high": min(x["cs_high"] for x in per_arm),
        "alpha": alpha,
        "n": n,
        "per_arm": per_arm,
        "policy_share": {a: float(np.mean(pi[:, i])) for i, a in enumerate(arms)},
    }


__all__ = ["Target", "greedy_rows", "personalisation_value"]
