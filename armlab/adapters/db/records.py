"""The core's new-record dataclasses (:mod:`armlab.core.records`) as ORM rows.

The service layer builds a :class:`~armlab.core.records.NewExperiment`, ``NewSnapshot``,
``NewDecision`` or ``NewAuditEntry`` and hands it to a port; the database repositories map it
here to the row they add. The rows read back satisfy the core's record protocols as they are.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from armlab.adapters.db.models import AllocationSnapshot, Arm, AuditLog, Decision, Experiment
from armlab.core.records import NewAuditEntry, NewDecision, NewExperiment, NewSnapshot


def _values(record: Any, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The dataclass's fields by name (shallow: the row owns the same dicts and lists)."""
    return {f.name: getattr(record, f.name) for f in fields(record) if f.name not in skip}


def experiment_row(new: NewExperiment) -> Experiment:
    arms = [Arm(**_values(a)) for a in new.arms]
    return Experiment(**_values(new, skip=("arms",)), arms=arms)


def snapshot_row(new: NewSnapshot) -> AllocationSnapshot:
    return AllocationSnapshot(**_values(new))


def decision_row(new: NewDecision) -> Decision:
    return Decision(**_values(new))


def audit_row(new: NewAuditEntry) -> AuditLog:
    return AuditLog(**_values(new))
