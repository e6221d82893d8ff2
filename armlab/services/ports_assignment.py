"""What the assignment cache needs from storage, as protocols (the assigner's ports).

:class:`AssignmentStore` opens :class:`AssignmentReads` (one session: the reads of one load
or one refresh) and stores sticky assignments (first writer wins).
:class:`armlab.adapters.db.assignment_store.SqlAssignmentStore` implements them on the
database; :mod:`armlab.bootstrap` wires it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from armlab.core.records import ExperimentRecord, SnapshotRecord
from armlab.services.ports import StorageFailures

#: A stored sticky assignment: (experiment id, unit id, arm key, propensity).
StickyRow = tuple[int, str, str, float]


class AssignmentReads(Protocol):
    """The reads of one cache load or refresh (experiments come with their arms)."""

    def experiment(self, key: str) -> ExperimentRecord | None: ...
    def experiments(self, ids: Sequence[int]) -> Sequence[ExperimentRecord]: ...
    def heads(self) -> list[tuple[int, str, int]]:
        """(id, key, version) of every experiment."""
    def latest_snapshot(self, experiment_id: int) -> SnapshotRecord | None: ...
    def latest_snapshot_ids(self) -> dict[int, int]:
        """ExperimentRecord id -> id of its newest allocation snapshot (experiments with one)."""
    def snapshots(self, ids: Sequence[int]) -> Mapping[int, SnapshotRecord]:
        """The snapshots with these ids, by experiment id."""
    def sticky(self, experiment_ids: Sequence[int], *,
               since: datetime | None = None) -> Iterable[StickyRow]:
        """Stored sticky assignments of these experiments (assigned at or after ``since``)."""


@runtime_checkable
class AssignmentStore(StorageFailures, Protocol):
    def reads(self) -> AbstractContextManager[AssignmentReads]: ...
    def store_sticky(self, rows: list[dict[str, Any]]) -> None:
        """Insert these sticky assignments (``experiment_id``, ``unit_id``, ``arm_key``,
        ``propensity``, ``assigned_at``) and commit; a unit already stored keeps its arm."""
