"""What an interleaving experiment's look reads (:mod:`armlab.services.interleaving_evaluation`).

:func:`pair_sums`: the test's sufficient statistics per pair of rankers in one aggregate over
``interleaving_credits`` joined to ``interleaving_units`` (PostgreSQL and SQLite alike): the
number of units n (every unit of the experiment: a unit that never compared a pair, or got no
click, has preference 0 for it, as in :func:`armlab.core.stats.interleaving.unit_preferences`
with inverse-propensity weights), and per pair the sum and the sum of squares of the units'
preferences x = credit / impressions (``aggregate: mean``) or credit (``sum``).
:func:`pair_tallies`: per pair the compared impressions, wins and clicks per side, summed over
partitions (the dashboard's win rates and the dueling bandit's evidence).
:func:`latest_look`: the newest decision row of the experiment's interleaving looks.
"""

from __future__ import annotations

from sqlalchemy import Float, cast, func, select
from sqlalchemy.orm import Session

from armlab.adapters.db.models import Decision
from armlab.adapters.db.models_interleaving import (
    InterleavingCredit,
    InterleavingPair,
    InterleavingUnit,
)

Pair = tuple[str, str]


def pair_sums(session: Session, experiment_id: int, aggregate: str
              ) -> tuple[float, dict[Pair, tuple[float, float]]]:
    """(units n, {(a, b): (sum of x, sum of x²)}) over the experiment's units (see the module
    doc); a pair without credit rows is absent (its x are all 0)."""
    c, u = InterleavingCredit, InterleavingUnit
    x = c.credit / cast(u.impressions, Float) if aggregate == "mean" else c.credit
    n_units = (select(func.count()).select_from(u)
               .where(u.experiment_id == experiment_id).scalar_subquery())
    rows = session.execute(
        select(c.ranker_a, c.ranker_b, func.coalesce(func.sum(x), 0.0),
               func.coalesce(func.sum(x * x), 0.0), n_units)
        .join(u, (u.experiment_id == c.experiment_id) & (u.unit_id == c.unit_id))
        .where(c.experiment_id == experiment_id, u.impressions > 0)
        .group_by(c.ranker_a, c.ranker_b)
    ).all()
    if rows:
        n = float(rows[0][4])
    else:
        n = float(session.scalar(select(n_units)) or 0)
    return n, {(str(a), str(b)): (float(s), float(q)) for a, b, s, q, _ in rows}


def pair_tallies(session: Session, experiment_id: int
                 ) -> dict[Pair, tuple[int, int, int, int, int]]:
    """{(a, b): (compared, a_wins, b_wins, a_clicks, b_clicks)} summed over partitions."""
    p = InterleavingPair
    rows = session.execute(
        select(p.ranker_a, p.ranker_b, func.sum(p.compared), func.sum(p.a_wins),
               func.sum(p.b_wins), func.sum(p.a_clicks), func.sum(p.b_clicks))
        .where(p.experiment_id == experiment_id)
        .group_by(p.ranker_a, p.ranker_b)
    ).all()
    return {(str(r[0]), str(r[1])): (int(r[2] or 0), int(r[3] or 0), int(r[4] or 0),
                                     int(r[5] or 0), int(r[6] or 0)) for r in rows}


def latest_look(session: Session, experiment_id: int, row_key: str) -> Decision | None:
    """The newest ``decisions`` row of the experiment with arm key ``row_key`` (one probe of
    the (experiment_id, arm_key, id) index)."""
    return session.scalars(
        select(Decision).where(Decision.experiment_id == experiment_id,
                               Decision.arm_key == row_key)
        .order_by(Decision.id.desc()).limit(1)).first()
