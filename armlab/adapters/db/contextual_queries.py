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


def matured_contexts(session: Session, experiment_id: int, cutoff: datetime,
                     arms: Sequence[str]) -> Iterator[tuple[str, dict[str, Any], float]]:
    """(arm key, context, reward) of each impression of ``arms`` served at or before
    ``cutoff``."""
    if not arms:
        return
    stmt = (
        select(Impression.arm_key, Impression.context, Impression.reward)
        .where(Impression.experiment_id == experiment_id,
               Impression.arm_key.in_(list(arms)),
               Impression.served_at <= cutoff)
        .execution_options(yield_per=BATCH)
    )
    for arm, context, reward in session.execute(stmt):
        yield str(arm), context if isinstance(context, dict) else {}, float(reward or 0.0)
