"""In-memory stand-ins for the service layer's ports (armlab.services.ports), so use cases
run without a database: the same registry, decision and allocator code, different storage."""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any

from armlab.adapters.db.models import AllocationSnapshot, AuditLog, Decision, Experiment
from armlab.core.evidence import ArmSums
from armlab.errors import ExperimentExists

_ids = itertools.count(1)


class FakeExperiments:
    def __init__(self) -> None:
        self.by_key: dict[str, Experiment] = {}

    def get(self, key: str, *, for_update: bool = False) -> Experiment | None:
        return self.by_key.get(key)  # one thread, one unit of work: nothing to lock

    def list(self, status: str | None = None) -> list[Experiment]:
        rows = sorted(self.by_key.values(), key=lambda e: e.id, reverse=True)
        return [e for e in rows if status is None or e.status == status]

    def add(self, experiment: Experiment) -> None:
        if experiment.key in self.by_key:
            raise ExperimentExists(f"an experiment with key {experiment.key!r} already exists")
        experiment.id = next(_ids)
        experiment.version = 1
        self.by_key[experiment.key] = experiment

    def keys_starting_with(self, prefix: str) -> set[str]:
        return {k for k in self.by_key if k.startswith(prefix)}


class FakeAuditTrail:
    def __init__(self) -> None:
        self.rows: list[AuditLog] = []

    def add(self, row: AuditLog) -> None:
        row.id = next(_ids)
        self.rows.append(row)

    def for_experiment(self, experiment_id: int) -> list[AuditLog]:
        return [r for r in self.rows if r.experiment_id == experiment_id]


class FakeEvidence:
    def __init__(self) -> None:
        self.sums: dict[int, dict[str, ArmSums]] = {}
        self.late: dict[int, dict[str, ArmSums]] = {}
        self.units: dict[int, dict[str, ArmSums]] = {}
        self.snapshots: dict[int, AllocationSnapshot] = {}
        self.decisions: list[Decision] = []
        # metric -> arm -> sums (totals, and the immature / late part)
        self.guardrails: dict[int, dict[str, dict[str, ArmSums]]] = {}
        self.guardrails_late: dict[int, dict[str, dict[str, ArmSums]]] = {}

    def arm_sums(self, experiment_id: int) -> dict[str, ArmSums]:
        return dict(self.sums.get(experiment_id, {}))

    def sums_served_after(self, experiment_id: int, cutoff: datetime) -> dict[str, ArmSums]:
        """``late[experiment_id]``: what a test declares still immature / logged late."""
        return dict(self.late.get(experiment_id, {}))

    def unit_sums(self, experiment_id: int, cutoff: datetime | None) -> dict[str, ArmSums]:
        return dict(self.units.get(experiment_id, {}))

    def guardrail_sums(self, experiment_id: int) -> dict[str, dict[str, ArmSums]]:
        return {m: dict(v) for m, v in self.guardrails.get(experiment_id, {}).items()}

    def guardrail_sums_served_after(self, experiment_id: int, cutoff: datetime
                                    ) -> dict[str, dict[str, ArmSums]]:
        return {m: dict(v) for m, v in self.guardrails_late.get(experiment_id, {}).items()}

    def latest_snapshot(self, experiment_id: int) -> AllocationSnapshot | None:
        return self.snapshots.get(experiment_id)

    def latest_decisions(self, experiment_id: int) -> dict[str, Decision]:
        return {d.arm_key: d for d in self.decisions if d.experiment_id == experiment_id}

    def add_decision(self, row: Decision) -> None:
        row.id = next(_ids)
        self.decisions.append(row)

    def add_snapshot(self, row: AllocationSnapshot) -> None:
        row.id = next(_ids)
        self.snapshots[row.experiment_id] = row


class FakeUnitOfWork:
    """Implements armlab.services.ports.UnitOfWorkPort in memory. ``commits`` counts commits;
    every flush bumps the version of experiments whose state changed, as the database does."""

    def __init__(self) -> None:
        self.experiments = FakeExperiments()
        self.audit = FakeAuditTrail()
        self.evidence = FakeEvidence()
        self.commits = 0
        self._seen: dict[int, tuple[Any, ...]] = {}

    def flush(self) -> None:
        for exp in self.experiments.by_key.values():
            state = (exp.status, exp.shipped_arm_key)
            before = self._seen.get(exp.id)
            if before is not None and before != state:
                exp.version += 1
            self._seen[exp.id] = state

    def commit(self) -> None:
        self.flush()
        self.commits += 1
