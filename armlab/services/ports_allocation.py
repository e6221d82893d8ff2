"""What the allocator needs from storage, as protocols (the allocator's ports).

:class:`AllocationStore` lists the experiments a pass visits and opens one
:class:`AllocationUnit` per experiment: a unit of work (:class:`~armlab.services.ports.
UnitOfWorkPort`, one transaction, committed by the allocator) that can also lock the
experiment's row and read the part of its statistics still inside the attribution window
(and, for a contextual policy, the matured impressions with their contexts).
:class:`armlab.adapters.db.allocation_store.SqlAllocationStore` implements them on the
database; :mod:`armlab.bootstrap` wires it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from armlab.core.records import ExperimentRecord
from armlab.services.ports import StorageFailures, UnitOfWorkPort


class AllocationUnit(UnitOfWorkPort, Protocol):
    """One experiment's transaction in an allocation pass."""

    def lock_experiment(self, experiment_id: int) -> ExperimentRecord | None:
        """The experiment with its arms, its row locked until the transaction ends (None
        when it is gone)."""
    def immature_sums(self, experiment_id: int, cutoff: datetime
                      ) -> dict[str, tuple[float, float, float]]:
        """Per arm: (count, reward sum, sum of squared rewards) of the impressions served
        after ``cutoff`` (arms without such impressions are absent)."""
    def matured_context_sums(self, experiment_id: int, cutoff: datetime,
                             arms: Sequence[str], features: Sequence[str]
                             ) -> Iterator[tuple[str, dict[str, Any], float, float]]:
        """(arm key, {feature: value} of the declared ``features``, impressions, reward sum)
        of the impressions of ``arms`` served at or before ``cutoff``, in groups (a
        contextual policy's matured data; the same values may come in several groups, the
        caller adds them up). A feature missing from a context, or a context that is not an
        object, reads as None."""


@runtime_checkable
class AllocationStore(StorageFailures, Protocol):
    def active_experiment_ids(self, statuses: Sequence[str]) -> list[int]:
        """Ids of the experiments in one of ``statuses``, in id order."""
    def unit(self) -> AbstractContextManager[AllocationUnit]:
        """A new unit of work (rolled back unless committed)."""
