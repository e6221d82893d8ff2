"""The matured impressions of a contextual experiment, by their declared context features
(the allocator's contextual snapshot: :mod:`armlab.services.contextual_allocation`).

One aggregate per allocation pass over the experiment's impressions served at or before the
attribution cutoff, through the (experiment_id, arm_key, served_at) index. On PostgreSQL the
database groups them by arm and by the JSON text of each declared feature's value
(``CAST(context -> 'name' AS TEXT)``: ``true``, ``1``, ``1.0`` and ``"1"`` stay apart, as the
JSON types do) and returns one row per group: categorical features come back as at most
arms x segments rows, however many impressions there are. Elsewhere (SQLite, the embedded
default) the rows are streamed in batches and returned one per impression, with only the
declared features; the caller aggregates either. The cost of the scan grows with the matured
impressions (the raw table, whose PostgreSQL partitions retention drops: the policy then
learns from the retained weeks only).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Text, cast, func, literal, select
from sqlalchemy.orm import Session

from armlab.adapters.db.models import Impression

#: Rows fetched per round trip.
BATCH = 5000


def impression_contexts(session: Session, experiment_id: int, cutoff: datetime, *,
                        arms: Sequence[str] | None = None, ordered: bool = False
                        ) -> Iterator[tuple[str, float, float, Any]]:
    """(arm key, attributed reward, logged propensity, stored context) of each impression
    served at or before ``cutoff`` (only ``arms`` when given; in serving order when
    ``ordered``), streamed in batches of :data:`BATCH` rows."""
    stmt = select(Impression.arm_key, Impression.reward, Impression.propensity,
                  Impression.context).where(Impression.experiment_id == experiment_id,
                                            Impression.served_at <= cutoff)
    if arms is not None:
        stmt = stmt.where(Impression.arm_key.in_(list(arms)))
    if ordered:
        stmt = stmt.order_by(Impression.served_at, Impression.impression_id)
    for arm, reward, p, context in session.execute(stmt.execution_options(yield_per=BATCH)):
        yield str(arm), float(reward or 0.0), float(p), context


#: (arm key, {declared feature: value}, impressions, reward sum): one group of matured
#: impressions (several rows may carry the same values; the caller adds them up).
ContextSums = tuple[str, dict[str, Any], float, float]


def matured_context_sums(session: Session, experiment_id: int, cutoff: datetime,
                         arms: Sequence[str], features: Sequence[str], *,
                         in_database: bool = True) -> Iterator[ContextSums]:
    """The impressions of ``arms`` served at or before ``cutoff``, by arm and by the values of
    ``features`` in their stored context (a missing feature, or a context that is not an
    object, reads as None); see the module doc. ``in_database=False`` streams every row on
    PostgreSQL too (the baseline of ``armlab bench contextual-scan``)."""
    if not arms:
        return
    if not in_database or session.get_bind().dialect.name != "postgresql":
        names = list(features)
        for arm, reward, _, context in impression_contexts(session, experiment_id, cutoff,
                                                           arms=arms):
            ctx = context if isinstance(context, dict) else {}
            yield arm, {n: ctx.get(n) for n in names}, 1.0, reward
        return
    i = Impression
    values = [cast(i.context.op("->")(cast(literal(name), Text)), Text).label(f"f{j}")
              for j, name in enumerate(features)]
    stmt = (select(i.arm_key, *values, func.count(), func.coalesce(func.sum(i.reward), 0.0))
            .where(i.experiment_id == experiment_id, i.served_at <= cutoff,
                   i.arm_key.in_(list(arms)))
            .group_by(i.arm_key, *values))
    for arm, *texts, n, reward in session.execute(stmt.execution_options(yield_per=BATCH)):
        yield (str(arm), {name: None if t is None else json.loads(t)
                          for name, t in zip(features, texts, strict=True)},
               float(n), float(reward))
