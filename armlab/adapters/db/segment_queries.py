"""The matured impressions of an experiment with their contexts: what the per-segment effects
and the value of personalisation read (:mod:`armlab.services.contextual_results`).

One row per impression served at or before the cutoff: (arm, attributed reward, logged
propensity, context). The segment of a row depends on the experiment's feature spec (levels,
defaults, the ``other`` level), so rows are grouped in Python by
:func:`armlab.core.stats.segments.segment_table` rather than by a dialect-specific JSON
expression; the scan is one range read of the experiment's impressions (the same read as
``armlab ope``). Scale: the Python side costs about 0.4 s per 100,000 impressions on the
2-core development VM (segment indices; the sums are one bincount), on top of fetching the rows;
beyond a few hundred thousand matured impressions a per-(segment, arm) rollup kept by the
consumer would be the next step (not built).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from armlab.adapters.db.contextual_queries import BATCH, impression_contexts
from armlab.adapters.db.models import Impression
from armlab.core.stats.segments import ContextRow


def logged_contexts(session: Session, experiment_id: int, cutoff: datetime
                    ) -> list[ContextRow]:
    """(arm, reward, propensity, context) of the impressions served at or before ``cutoff``,
    in serving order (a stored context that is not an object reads as None)."""
    return [(a, r, p, ctx if isinstance(ctx, dict) else None)
            for a, r, p, ctx in impression_contexts(session, experiment_id, cutoff,
                                                    ordered=True)]


def logged_unit_contexts(session: Session, experiment_id: int, cutoff: datetime
                         ) -> list[tuple[str, ContextRow]]:
    """(unit id, (arm, reward, propensity, context)) of the impressions served at or before
    ``cutoff``, in serving order: what the per-user analysis of a ``unit: user`` experiment
    groups (:func:`armlab.core.stats.segment_units.per_unit_rows`)."""
    i = Impression
    stmt = (select(i.unit_id, i.arm_key, i.reward, i.propensity, i.context)
            .where(i.experiment_id == experiment_id, i.served_at <= cutoff)
            .order_by(i.served_at, i.impression_id))
    return [(str(u), (str(a), float(r or 0.0), float(p), ctx if isinstance(ctx, dict) else None))
            for u, a, r, p, ctx in session.execute(stmt.execution_options(yield_per=BATCH))]
