"""The cross-fitted tabular reward model of :func:`armlab.core.stats.ope.tabular_dr`.

For fold k, the model is fitted on the *other* folds: the self-normalised IPW mean reward of
each (stratum, action) cell, falling back to the stratum's plain mean reward for a cell that
fold never saw and to the overall mean for an unseen stratum. For each event of fold k it
gives ``q_logged`` (the model at the logged action) and ``q_target`` (its expectation under the
target policy of the event's stratum).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
TargetOf = Callable[[str], Mapping[str, float]]


def target_of(target: Mapping[str, float],
              target_by_stratum: Mapping[str, Mapping[str, float]] | None) -> TargetOf:
    """stratum -> the target policy's action probabilities there (``target`` everywhere when
    no per-stratum policy is given; an empty policy for a stratum it does not name)."""
    def dist(s: str) -> Mapping[str, float]:
        if target_by_stratum is not None:
            return target_by_stratum.get(s, {})
        return target

    return dist


def _fit(acts: list[str], strat: list[str], r: FloatArray, p: FloatArray,
         train: npt.NDArray[np.bool_]) -> Callable[[str, str], float]:
    """q(stratum, action) fitted on the ``train`` events (module doc)."""
    cell_num: dict[tuple[str, str], float] = {}
    cell_den: dict[tuple[str, str], float] = {}
    s_num: dict[str, float] = {}
    s_den: dict[str, float] = {}
    for i in np.flatnonzero(train):
        key = (strat[i], acts[i])
        cell_num[key] = cell_num.get(key, 0.0) + r[i] / p[i]
        cell_den[key] = cell_den.get(key, 0.0) + 1.0 / p[i]
        s_num[strat[i]] = s_num.get(strat[i], 0.0) + r[i]
        s_den[strat[i]] = s_den.get(strat[i], 0.0) + 1.0
    overall = float(np.mean(r[train])) if np.any(train) else 0.0

    def q(s: str, a: str) -> float:
        if (s, a) in cell_den:
            return cell_num[(s, a)] / cell_den[(s, a)]
        return s_num[s] / s_den[s] if s in s_den else overall

    return q


def cross_fit(acts: list[str], strat: list[str], r: FloatArray, p: FloatArray,
              dist: TargetOf, folds: int) -> tuple[FloatArray, FloatArray]:
    """(q_logged, q_target) per event, each from the model fitted without its fold (event i
    is in fold i mod ``folds``)."""
    n = len(acts)
    fold = np.arange(n) % folds
    q_logged = np.zeros(n)
    q_target = np.zeros(n)
    for k in range(folds):
        train = fold != k
        q = _fit(acts, strat, r, p, train)
        qbar_cache: dict[str, float] = {}
        for i in np.flatnonzero(~train):
            s = strat[i]
            q_logged[i] = q(s, acts[i])
            if s not in qbar_cache:
                qbar_cache[s] = sum(float(pi) * q(s, a) for a, pi in dist(s).items())
            q_target[i] = qbar_cache[s]
    return q_logged, q_target
