"""Multiple treatment arms: Bonferroni and Holm adjustments of (always-valid) p-values."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from armlab.core.stats.mixture import FloatArray
from armlab.errors import StatsError


def _check_pvalues(pvalues: Sequence[float]) -> FloatArray:
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1 or np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise StatsError(f"p-values must be a 1-d sequence in [0, 1], got {list(pvalues)!r}")
    return p


def bonferroni_adjust(pvalues: Sequence[float]) -> list[float]:
    """Bonferroni-adjusted p-values min(1, m p_i): reject i when adjusted p_i <= alpha."""
    p = _check_pvalues(pvalues)
    return [float(x) for x in np.minimum(1.0, p * len(p))]


def holm_adjust(pvalues: Sequence[float]) -> list[float]:
    """Holm (1979) step-down adjusted p-values: max_{j<=i} min(1, (m-j+1) p_(j)) in sorted order.

    With always-valid p-values this stays valid under continuous monitoring: Holm is monotone
    in the p-values, so a rejection at any look is also a rejection of Holm applied to the
    per-arm infima inf_n p_{i,n}, which are valid p-values (JKPW §6 on multiple testing).
    """
    p = _check_pvalues(pvalues)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adj = np.empty(m)
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        adj[idx] = running
    return [float(x) for x in adj]
