"""Interleaved comparisons of rankers: team-draft interleaving and multileaving, and the
credit of clicks to the rankers' teams (:mod:`armlab.core.interleaving.team_draft`).

Pure numpy. The statistics live in :mod:`armlab.core.stats.interleaving`, the choice of
rankers per request in :mod:`armlab.core.policies.dueling`, and the Monte Carlo validity grid
that puts the three together in :mod:`armlab.core.interleaving.simulate`.
"""

from armlab.core.interleaving.team_draft import (
    Credit,
    Interleaving,
    ShownItem,
    credit,
    draw_orders,
    pair_compared,
    pair_differences,
    pair_indices,
    team_credit_kernel,
    team_draft,
    team_draft_kernel,
)

__all__ = [
    "Credit",
    "Interleaving",
    "ShownItem",
    "credit",
    "draw_orders",
    "pair_compared",
    "pair_differences",
    "pair_indices",
    "team_credit_kernel",
    "team_draft",
    "team_draft_kernel",
]
