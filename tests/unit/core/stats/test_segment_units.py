"""Per-user terms of the contextual analyses for ``unit: user``
(armlab.core.stats.segment_units): the grouping, and a seeded A/A with heavily correlated
users in which the impression-level per-segment tests and personalisation value reject far
more often than alpha while the per-user ones hold."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from armlab.core.policies.context_features import ContextParams, ContextSpec
from armlab.core.stats.personalisation import personalisation_value
from armlab.core.stats.segment_units import per_unit_rows
from armlab.core.stats.segments import SegmentDesign, segment_effects, segment_table

SPEC = ContextSpec(ContextParams(features=[
    {"name": "device", "kind": "categorical", "levels": ["m", "d"]}]).features)
#: P(arm | segment) of the sticky draw: a (control), b
W = np.array([[0.3, 0.7], [0.7, 0.3]])
CTX = [{"device": "m"}, {"device": "d"}]


def test_one_row_per_user_and_arm_with_the_first_context_and_sticky_propensity() -> None:
    rows = [("u1", ("a", 1.0, 0.3, CTX[0])), ("u2", ("b", 0.0, 0.7, CTX[0])),
            ("u1", ("a", 1.0, 0.3, CTX[1])), ("u1", ("a", 0.0, 0.3, CTX[0])),
            # a rolled-back arm's user served the control at propensity 1: its own term
            ("u2", ("a", 1.0, 1.0, CTX[0])), ("u2", ("b", 1.0, 0.7, None))]
    out, seg, moved = per_unit_rows(rows, np.array([0, 0, 1, 0, 0, -1]))
    assert out == [("a", 2.0, 0.3, CTX[0]), ("b", 1.0, 0.7, CTX[0]), ("a", 1.0, 1.0, CTX[0])]
    assert seg.tolist() == [0, 0, 0]
    assert moved == 1  # u1 was in d once; an unreadable context does not count as a move


def _aa(rng: np.random.Generator, users: int = 600, mean_imps: int = 20
        ) -> tuple[list[tuple[str, Any]], np.ndarray]:
    """One A/A replication: each user's arm drawn once from its first segment's row of W,
    its own click rate (Beta(0.3, 2.7): mean 0.1, intra-user correlation 0.25) on about 20
    impressions, 1% of later impressions in the other segment; in a shuffled serving order."""
    seg = (rng.random(users) >= 0.6).astype(np.int64)
    arm = (rng.random(users) >= W[seg, 0]).astype(np.int64)
    rate = rng.beta(0.3, 2.7, users)
    u = np.repeat(np.arange(users), 1 + rng.poisson(mean_imps - 1, users))
    u = u[rng.permutation(u.size)]
    click = rng.random(u.size) < rate[u]
    first = np.zeros(u.size, dtype=bool)
    first[np.unique(u, return_index=True)[1]] = True
    g = np.where(first | (rng.random(u.size) > 0.01), seg[u], 1 - seg[u])
    rows = [(str(x), ("ab"[arm[x]], float(c), float(W[seg[x], arm[x]]), CTX[gi]))
            for x, c, gi in zip(u.tolist(), click.tolist(), g.tolist(), strict=True)]
    return rows, g


def _rejects(rows: list[Any], idx: np.ndarray, binary: bool) -> tuple[bool, bool]:
    """(some per-segment test significant, the personalisation CS excludes the true 0)."""
    design = SegmentDesign(control="a", treatments=("b",), binary=binary, floor=0.3,
                           horizon=float(len(rows)))
    eff = segment_effects(segment_table(SPEC, ["a", "b"], rows, idx), design)
    pv = personalisation_value(["a", "b"], [r[0] for r in rows], [r[1] for r in rows],
                               [r[2] for r in rows], W[idx])
    return (any(r["significant"] for r in eff["rows"]),
            bool(pv["cs_low"] > 0 or pv["cs_high"] < 0))


def test_correlated_users_break_the_impression_level_analysis_not_the_per_user_one() -> None:
    rng = np.random.default_rng(23)
    imp, user = [], []
    for _ in range(100):
        rows, g = _aa(rng)
        imp.append(_rejects([r for _, r in rows], g, binary=True))
        per_user, idx, _ = per_unit_rows(rows, g)
        user.append(_rejects(per_user, idx, binary=False))
    imp_rate, user_rate = np.mean(imp, axis=0), np.mean(user, axis=0)
    # impressions as independent terms: well above alpha = 0.05 (se about 0.04 at 100 reps)
    assert imp_rate[0] >= 0.12 and imp_rate[1] >= 0.12, imp_rate
    # one term per user: within alpha (the single look is conservative)
    assert user_rate[0] <= 0.05 and user_rate[1] <= 0.05, user_rate
    assert user_rate.tolist() == pytest.approx([0.0, 0.0], abs=0.05)
