"""One scenario, two storages: the in-memory stores of ``tests/fakes_stores.py`` and
``tests/fakes_ingest.py`` and the database adapters on a migrated SQLite file, behind the same
small test-side interface, so a service test can run a scenario on both and compare what the
services wrote.

``backend.create(body)`` registers and starts an experiment; ``add_sums`` adds matured
per-arm totals without impression rows (``arm_stats`` only); ``serve`` logs impressions
(rows and totals, as the consumer does); ``act`` runs a registry call in a committed unit of
work, ``read`` a read in one; the ``*_store`` methods hand out the services' storage ports;
``snapshots`` / ``audit_actions`` / ``status`` / ``sticky`` read back what the services wrote.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from armlab.adapters.db.allocation_store import SqlAllocationStore
from armlab.adapters.db.assignment_store import SqlAssignmentStore
from armlab.adapters.db.consumer_batches import SqlIngestStore
from armlab.adapters.db.models import (
    AllocationSnapshot,
    ArmStats,
    GuardrailStats,
    Impression,
    UnitAssignment,
)
from armlab.adapters.db.models_interleaving import InterleavingPair
from armlab.adapters.db.uow import UnitOfWork
from armlab.core.evidence import FIELDS, ArmSums
from armlab.core.specs import ExperimentSpec
from armlab.services import registry
from armlab.services.ports import UnitOfWorkPort
from armlab.services.ports_allocation import AllocationStore
from armlab.services.ports_assignment import AssignmentStore
from armlab.services.ports_consumer import IngestStore
from tests import interleaving_data
from tests.fakes_ingest import MemoryIngestStore
from tests.fakes_stores import (
    LoggedImpression,
    MemoryAllocationStore,
    MemoryAssignmentStore,
    MemoryUnitOfWork,
    impression_sums,
)

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
Tallies = dict[tuple[str, str], tuple[int, int, int, int, int]]
#: interleaving units: unit id -> (impressions, {(a, b): IPW credit})
Units = dict[str, tuple[int, dict[tuple[str, str], float]]]


def plain(value: Any) -> Any:
    """``value`` as it comes back from a JSON column (tuples become lists, and so on)."""
    return json.loads(json.dumps(value))


def rounded(value: Any, digits: int = 10) -> Any:
    """``value`` with every float rounded to ``digits`` significant digits: the database
    sums in another order than Python, so the last bits of a sum may differ."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(rounded(v, digits) for v in value)
    return value


class Backend(Protocol):
    name: str

    def create(self, body: dict[str, Any]) -> int: ...
    def add_sums(self, exp_id: int, sums: dict[str, ArmSums]) -> None: ...
    def serve(self, rows: Sequence[LoggedImpression]) -> None: ...
    def add_tallies(self, exp_id: int, tallies: Tallies) -> None: ...
    def add_units(self, exp_id: int, units: Units) -> None: ...
    def add_guardrail_sums(self, exp_id: int, metric: str, sums: dict[str, ArmSums]
                           ) -> None: ...
    def act(self, fn: Callable[[UnitOfWorkPort], Any]) -> None: ...
    def allocation_store(self) -> AllocationStore: ...
    def assignment_store(self) -> AssignmentStore: ...
    def ingest_store(self) -> IngestStore: ...
    def read(self, fn: Callable[[UnitOfWorkPort], Any]) -> Any: ...
    def snapshots(self, exp_id: int) -> list[AllocationSnapshot]: ...
    def audit_actions(self, exp_id: int) -> list[tuple[str, str]]: ...
    def status(self, key: str) -> tuple[str, int, dict[str, Any]]: ...
    def sticky(self, exp_id: int) -> dict[str, tuple[str, float]]: ...


def _spec(body: dict[str, Any]) -> ExperimentSpec:
    return ExperimentSpec.model_validate(body)


class MemoryBackend:
    name = "memory"

    def __init__(self) -> None:
        self.db = MemoryUnitOfWork()
        self.alloc = MemoryAllocationStore(self.db)
        self.assign = MemoryAssignmentStore(self.db)
        self.ingest = MemoryIngestStore(self.db)

    def create(self, body: dict[str, Any]) -> int:
        exp = registry.create_experiment(self.db, spec=_spec(body), actor="t")
        registry.start_experiment(self.db, key=exp.key, actor="t")
        self.db.commit()
        return exp.id

    def add_sums(self, exp_id: int, sums: dict[str, ArmSums]) -> None:
        totals = self.db.evidence.sums.setdefault(exp_id, {})
        for arm, s in sums.items():
            old = totals.get(arm) or ArmSums()
            totals[arm] = ArmSums(*(getattr(old, f) + getattr(s, f) for f in FIELDS))

    def serve(self, rows: Sequence[LoggedImpression]) -> None:
        self.db.evidence.log(rows)

    def add_tallies(self, exp_id: int, tallies: Tallies) -> None:
        self.db.evidence.tallies.setdefault(exp_id, {}).update(tallies)

    def add_guardrail_sums(self, exp_id: int, metric: str, sums: dict[str, ArmSums]
                           ) -> None:
        self.db.evidence.guardrails.setdefault(exp_id, {}).setdefault(metric, {}).update(sums)

    def add_units(self, exp_id: int, units: Units) -> None:
        ev = self.db.evidence
        for unit, (n, credits) in units.items():
            ev.il_units[(exp_id, unit)] = n
            ev.il_credits.update({(exp_id, unit, a, b): c for (a, b), c in credits.items()})

    def act(self, fn: Callable[[UnitOfWorkPort], Any]) -> None:
        fn(self.db)
        self.db.commit()

    def allocation_store(self) -> MemoryAllocationStore:
        return self.alloc

    def assignment_store(self) -> MemoryAssignmentStore:
        return self.assign

    def ingest_store(self) -> MemoryIngestStore:
        return self.ingest

    def read(self, fn: Callable[[UnitOfWorkPort], Any]) -> Any:
        return fn(self.db)

    def snapshots(self, exp_id: int) -> list[AllocationSnapshot]:
        return [s for s in self.db.evidence.snapshot_log if s.experiment_id == exp_id]

    def audit_actions(self, exp_id: int) -> list[tuple[str, str]]:
        return [(r.action, r.actor) for r in self.db.audit.for_experiment(exp_id)]

    def status(self, key: str) -> tuple[str, int, dict[str, Any]]:
        e = self.db.experiments.by_key[key]
        return e.status, e.version, plain(e.rolled_back or {})

    def sticky(self, exp_id: int) -> dict[str, tuple[str, float]]:
        return {u: (a, p) for (e, u), (a, p, _) in self.db.sticky.items() if e == exp_id}


class SqliteBackend:
    """The same on the database adapters; ``sf`` a session factory of a migrated file."""

    name = "sqlite"

    def __init__(self, sf: Callable[[], Any]) -> None:
        self.sf = sf
        self._partitions = itertools.count()
        self._ids = itertools.count()

    def create(self, body: dict[str, Any]) -> int:
        with UnitOfWork(self.sf) as uow:
            exp = registry.create_experiment(uow, spec=_spec(body), actor="t")
            registry.start_experiment(uow, key=exp.key, actor="t")
            uow.commit()
            return int(exp.id)

    def add_sums(self, exp_id: int, sums: dict[str, ArmSums]) -> None:
        with self.sf() as s, s.begin():
            part = next(self._partitions)
            for arm, v in sums.items():
                s.add(ArmStats(experiment_id=exp_id, arm_key=arm, partition=part,
                               **{f: getattr(v, f) for f in FIELDS}))

    def serve(self, rows: Sequence[LoggedImpression]) -> None:
        with self.sf() as s, s.begin():
            for r in rows:
                i = next(self._ids)
                s.add(Impression(
                    impression_id=f"i{i}", event_id=f"e{i}", experiment_id=r.experiment_id,
                    arm_key=r.arm_key, unit_id=r.unit_id or f"#{i}", propensity=r.propensity,
                    served_at=r.served_at, reward=r.reward, feedback_count=r.feedback,
                    context=dict(r.context), guardrail_values=r.metrics))
        for exp_id in {r.experiment_id for r in rows}:
            self.add_sums(exp_id, impression_sums(r for r in rows if r.experiment_id == exp_id))

    def add_tallies(self, exp_id: int, tallies: Tallies) -> None:
        with self.sf() as s, s.begin():
            for (a, b), t in tallies.items():
                s.add(InterleavingPair(experiment_id=exp_id, ranker_a=a, ranker_b=b,
                                       partition=0, compared=t[0], a_wins=t[1], b_wins=t[2],
                                       a_clicks=t[3], b_clicks=t[4]))

    def add_units(self, exp_id: int, units: Units) -> None:
        interleaving_data.add_units(self.sf, exp_id, units)

    def add_guardrail_sums(self, exp_id: int, metric: str, sums: dict[str, ArmSums]
                           ) -> None:
        with self.sf() as s, s.begin():
            for arm, v in sums.items():
                s.add(GuardrailStats(experiment_id=exp_id, arm_key=arm, metric=metric,
                                     partition=0, **{f: getattr(v, f) for f in FIELDS}))

    def act(self, fn: Callable[[UnitOfWorkPort], Any]) -> None:
        with UnitOfWork(self.sf) as uow:
            fn(uow)
            uow.commit()

    def allocation_store(self) -> SqlAllocationStore:
        return SqlAllocationStore(self.sf)

    def assignment_store(self) -> SqlAssignmentStore:
        return SqlAssignmentStore(self.sf)

    def ingest_store(self) -> SqlIngestStore:
        return SqlIngestStore(self.sf)

    def read(self, fn: Callable[[UnitOfWorkPort], Any]) -> Any:
        with UnitOfWork(self.sf) as uow:
            return fn(uow)

    def snapshots(self, exp_id: int) -> list[AllocationSnapshot]:
        with self.sf() as s:
            rows = s.query(AllocationSnapshot).filter_by(experiment_id=exp_id)
            return list(rows.order_by(AllocationSnapshot.id))

    def audit_actions(self, exp_id: int) -> list[tuple[str, str]]:
        with UnitOfWork(self.sf) as uow:
            return [(r.action, r.actor) for r in uow.audit.for_experiment(exp_id)]

    def status(self, key: str) -> tuple[str, int, dict[str, Any]]:
        with UnitOfWork(self.sf) as uow:
            e = uow.experiments.get(key)
            assert e is not None
            return e.status, e.version, plain(e.rolled_back or {})

    def sticky(self, exp_id: int) -> dict[str, tuple[str, float]]:
        with self.sf() as s:
            rows = s.query(UnitAssignment).filter_by(experiment_id=exp_id)
            return {r.unit_id: (r.arm_key, r.propensity) for r in rows}


def snapshot_summary(snaps: Sequence[AllocationSnapshot]) -> list[dict[str, Any]]:
    """What to compare across storages: policy, weights and statistics, as JSON."""
    return [plain({"policy": s.policy_name, "weights": s.weights, "stats": s.stats})
            for s in snaps]
