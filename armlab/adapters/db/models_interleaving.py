"""Tables of interleaving experiments (``design: interleaving``), written by the consumer in
the batch's transaction and read by the allocator's look.

``interleaving_units``: per unit of analysis (the user for ``unit: user``, the impression for
``unit: request``) its interleaved impressions; ``interleaving_credits``: per unit and pair of
rankers (a before b in the experiment's arm order) the sum over its impressions of the
inverse-propensity-weighted credit difference, 1{compared} (clicks on a's team - clicks on
b's team) / P(compared). A unit's preference for the pair is that sum divided by its
impressions (``aggregate: mean``) or the sum itself, and the test's sufficient statistics
(units, sum and sum of squares of the preferences) are one aggregate query over the two tables
(:mod:`armlab.core.stats.interleaving`). Both hold increments only, so consumers of one group
add to them in any order. ``interleaving_pairs``: per pair the impressions that compared it,
the impressions each side won (more clicks on its team) and the clicks on each team, sharded
by partition like ``arm_stats``: the dashboard's win rates and the dueling bandit's evidence.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Float, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from armlab.adapters.db.engine import Base


class InterleavingUnit(Base):
    __tablename__ = "interleaving_units"

    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True)
    unit_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    impressions: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)


class InterleavingCredit(Base):
    __tablename__ = "interleaving_credits"

    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True)
    unit_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    ranker_a: Mapped[str] = mapped_column(String(64), primary_key=True)
    ranker_b: Mapped[str] = mapped_column(String(64), primary_key=True)
    credit: Mapped[float] = mapped_column(Float, default=0.0, nullable=False)


class InterleavingPair(Base):
    __tablename__ = "interleaving_pairs"

    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True)
    ranker_a: Mapped[str] = mapped_column(String(64), primary_key=True)
    ranker_b: Mapped[str] = mapped_column(String(64), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    compared: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    a_wins: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    b_wins: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    a_clicks: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    b_clicks: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
