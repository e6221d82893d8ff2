"""The matured impressions of a contextual experiment, with their contexts (the allocator's
contextual snapshot: :mod:`armlab.services.contextual_allocation`).

One scan per allocation pass over the experiment's impressions served at or before the
attribution cutoff, through the (experiment_id, arm_key, served_at) index, streamed in
batches (the caller aggregates as it reads, so memory stays bounded). The cost grows with the
matured impressions (the raw table, whose PostgreSQL partitions retention drops: the policy
then learns from the retained weeks only).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
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


def matured_contexts(session: Session, experiment_id: int, cutoff: datetime,
                     arms: Sequence[str]) -> Iterator[tuple[str, dict[str, Any], float]]:
    """(arm key, context, reward) of each impression of ``arms`` served at or before
    ``cutoff`` (the allocator's read; a stored context that is not an object reads as {})."""
    if not arms:
        return
    for arm, reward, _, context in impression_contexts(session, experiment_id, cutoff,
                                                       arms=arms):
        yield arm, context if isinstance(context, dict) else {}, reward
