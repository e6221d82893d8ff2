"""Per-user terms for the contextual analyses of a ``unit: user`` experiment.

With ``unit: user`` a user's arm is sticky: it is drawn once, at the user's first exposure,
from P(arm | context) of that first request's context, and every later impression of the user
repeats it (with that propensity). A user's impressions are then one draw, not many: their
rewards are correlated (the same person, the same arm), and treating them as independent
terms understates every variance (the per-segment tests and the personalisation value reject
too often; ``tests/unit/core/stats/test_segment_units.py`` shows it on a seeded A/A).

The analysis therefore has one term per (user, arm), as the per-arm test's ``unit_sums``:
Y_u = the user's total attributed reward, p_u = the user's sticky propensity (the largest
logged, as ``unit_sums``), and the context x_u of the user's **first** impression, the one
the arm was drawn with. The user belongs to the segment of that first context. Why that
choice: the IPW identity E[1{A_u = b} Y_u / p_u | x_u] = E[Y_u(b) | x_u] holds for the
context the propensity was computed on, so assigning the user there keeps every per-segment
term unbiased and independent across users; a user whose later requests fall in another
segment (a device switch) still counts once, in the first segment, with all their rewards
(the effect estimated per segment is "users who arrived in segment g", which is also what a
sticky assignment can answer). Such users are counted (``changed``) and the results say how
many; dropping them instead would condition on post-assignment behaviour, which the arm can
influence.

The rows returned are ordinary (arm, reward, propensity, context) rows, so
:func:`armlab.core.stats.segments.segment_table` and
:func:`armlab.core.stats.personalisation.personalisation_value` apply unchanged and count
users instead of impressions. The terms Y_u are totals, not 0/1: the analysis then runs with
``binary=False`` (its events are the users with a non-zero total), as the per-arm test does
for ``unit: user``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from armlab.core.stats.segments import ContextRow

#: (unit id, (arm, reward, propensity, context)) of one impression.
UnitContextRow = tuple[str, ContextRow]


def per_unit_rows(rows: Sequence[UnitContextRow], indices: npt.NDArray[np.int64]
                  ) -> tuple[list[ContextRow], npt.NDArray[np.int64], int]:
    """One row per (unit, arm) of ``rows`` (impressions in serving order, ``indices`` their
    segment indices, -1 where unreadable): the summed reward, the largest propensity and the
    first impression's context; returns the rows, their segment indices (the first
    impression's; -1 if it was unreadable) and how many units had impressions in more than
    one (readable) segment."""
    pos: dict[tuple[str, str], int] = {}
    reward: list[float] = []
    prop: list[float] = []
    ctx: list[Mapping[str, Any] | None] = []
    seg: list[int] = []
    arms: list[str] = []
    moved: set[str] = set()
    for (unit, (arm, r, p, c)), g in zip(rows, indices.tolist(), strict=True):
        key = (unit, arm)
        i = pos.get(key)
        if i is None:
            pos[key] = len(arms)
            arms.append(arm)
            reward.append(r)
            prop.append(p)
            ctx.append(c)
            seg.append(g)
            continue
        reward[i] += r
        if p > prop[i]:
            prop[i] = p
        if g >= 0 and seg[i] >= 0 and g != seg[i]:
            moved.add(unit)
    out: list[ContextRow] = list(zip(arms, reward, prop, ctx, strict=True))
    return out, np.asarray(seg, dtype=np.int64), len(moved)


__all__ = ["UnitContextRow", "per_unit_rows"]
