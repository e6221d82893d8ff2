"""In-memory stand-ins for the service layer's ports (armlab.services.ports), so use cases
run without a database: the same registry, decision, allocator and read-model code, different
storage."""

from __future__ import annotations

import itertools
import math
from datetime import datetime
from typing import Any

from armlab.adapters.db.models import AllocationSnapshot, AuditLog, Decision, Experiment
from armlab.adapters.db.records import audit_row, decision_row, experiment_row, snapshot_row
from armlab.core.catalog import CatalogInfo
from armlab.core.evidence import ArmSums
from armlab.core.readings import (
    ChartSeries,
    ConsumerPosition,
    LatestDecision,
    LoggedRow,
    RewardBucket,
)
from armlab.core.records import NewAuditEntry, NewDecision, NewExperiment, NewSnapshot
from armlab.core.stats.cuped import CovariateSums
from armlab.core.stats.noninferiority_units import UnitSums
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

    def add(self, new: NewExperiment) -> Experiment:
        experiment = experiment_row(new)
        if experiment.key in self.by_key:
            raise ExperimentExists(f"an experiment with key {experiment.key!r} already exists")
        experiment.id = next(_ids)
        experiment.version = 1
        self.by_key[experiment.key] = experiment
        return experiment

    def unflushed_change(self, record: object, attribute: str) -> bool:
        return False  # no change tracking in memory

    def keys_starting_with(self, prefix: str) -> set[str]:
        return {k for k in self.by_key if k.startswith(prefix)}


class FakeAuditTrail:
    def __init__(self) -> None:
        self.rows: list[AuditLog] = []

    def add(self, new: NewAuditEntry) -> None:
        row = audit_row(new)
        row.id = next(_ids)
        self.rows.append(row)

    def for_experiment(self, experiment_id: int) -> list[AuditLog]:
        return [r for r in self.rows if r.experiment_id == experiment_id]


class FakeEvidence:
    def __init__(self) -> None:
        self.sums: dict[int, dict[str, ArmSums]] = {}
        self.late: dict[int, dict[str, ArmSums]] = {}
        self.units: dict[int, dict[str, ArmSums]] = {}
        # unit: user with sequential.cuped: arm -> the CUPED covariate sums
        self.covariates: dict[int, dict[str, CovariateSums]] = {}
        self.snapshots: dict[int, AllocationSnapshot] = {}
        self.decisions: list[Decision] = []
        # metric -> arm -> sums (totals, and the immature / late part)
        self.guardrails: dict[int, dict[str, dict[str, ArmSums]]] = {}
        self.guardrails_late: dict[int, dict[str, dict[str, ArmSums]]] = {}
        # unit: user: metric -> arm -> per-unit sums (already cut at the analysis cutoff)
        self.guardrail_units: dict[int, dict[str, dict[str, UnitSums]]] = {}
        # interleaving: experiment -> (units, {(a, b): (sum, sumsq)}) and pair tallies
        self.interleaving: dict[int, tuple[float, dict[tuple[str, str], tuple[float, float]]]] = {}
        self.tallies: dict[int, dict[tuple[str, str], tuple[int, int, int, int, int]]] = {}
        # contextual: experiment -> [(arm, reward, propensity, served_at, context)]
        self.contexts: dict[int, list[tuple[str, float, float, datetime, dict[str, Any]]]] = {}
        self.unit_contexts: dict[
            int, list[tuple[str, str, float, float, datetime, dict[str, Any]]]] = {}

    def arm_sums(self, experiment_id: int) -> dict[str, ArmSums]:
        return dict(self.sums.get(experiment_id, {}))

    def sums_served_after(self, experiment_id: int, cutoff: datetime) -> dict[str, ArmSums]:
        """``late[experiment_id]``: what a test declares still immature / logged late."""
        return dict(self.late.get(experiment_id, {}))

    def unit_sums(self, experiment_id: int, cutoff: datetime | None) -> dict[str, ArmSums]:
        return dict(self.units.get(experiment_id, {}))

    def unit_covariate_sums(self, experiment_id: int, cutoff: datetime | None, *,
                            pre_from: datetime, pre_to: datetime, covariate: str
                            ) -> dict[str, CovariateSums]:
        return dict(self.covariates.get(experiment_id, {}))

    def guardrail_sums(self, experiment_id: int) -> dict[str, dict[str, ArmSums]]:
        return {m: dict(v) for m, v in self.guardrails.get(experiment_id, {}).items()}

    def guardrail_sums_served_after(self, experiment_id: int, cutoff: datetime
                                    ) -> dict[str, dict[str, ArmSums]]:
        return {m: dict(v) for m, v in self.guardrails_late.get(experiment_id, {}).items()}

    def unit_guardrail_sums(self, experiment_id: int, cutoff: datetime | None
                            ) -> dict[str, dict[str, UnitSums]]:
        return {m: dict(v) for m, v in self.guardrail_units.get(experiment_id, {}).items()}

    def latest_snapshot(self, experiment_id: int) -> AllocationSnapshot | None:
        return self.snapshots.get(experiment_id)

    def latest_policy_snapshot(self, experiment_id: int, policy_name: str
                               ) -> AllocationSnapshot | None:
        log = getattr(self, "snapshot_log", None)
        rows = log if log is not None else list(self.snapshots.values())
        mine = [s for s in rows
                if s.experiment_id == experiment_id and s.policy_name == policy_name]
        return mine[-1] if mine else None

    def latest_decisions(self, experiment_id: int) -> dict[str, Decision]:
        return {d.arm_key: d for d in self.decisions if d.experiment_id == experiment_id}

    def add_decision(self, new: NewDecision) -> None:
        row = decision_row(new)
        row.id = next(_ids)
        self.decisions.append(row)

    def add_snapshot(self, new: NewSnapshot) -> AllocationSnapshot:
        row = snapshot_row(new)
        row.id = next(_ids)
        self.snapshots[row.experiment_id] = row
        return row

    def interleaving_sums(self, experiment_id: int, aggregate: str
                          ) -> tuple[float, dict[tuple[str, str], tuple[float, float]]]:
        n, sums = self.interleaving.get(experiment_id, (0.0, {}))
        return n, dict(sums)

    def interleaving_tallies(self, experiment_id: int
                             ) -> dict[tuple[str, str], tuple[int, int, int, int, int]]:
        return dict(self.tallies.get(experiment_id, {}))

    def latest_look(self, experiment_id: int, row_key: str) -> Decision | None:
        rows = [d for d in self.decisions
                if d.experiment_id == experiment_id and d.arm_key == row_key]
        return rows[-1] if rows else None

    def logged_contexts(self, experiment_id: int, cutoff: datetime
                        ) -> list[tuple[str, float, float, dict[str, Any] | None]]:
        return [(a, r, p, c) for a, r, p, t, c in self.contexts.get(experiment_id, [])
                if t <= cutoff]

    def logged_unit_contexts(self, experiment_id: int, cutoff: datetime
                             ) -> list[tuple[str, tuple[str, float, float, dict[str, Any] | None]]]:
        """Rows of ``unit_contexts`` (unit, arm, reward, propensity, served, context); without
        them, every impression of ``contexts`` is its own unit."""
        rows = self.unit_contexts.get(experiment_id)
        if rows is None:
            rows = [(str(i), *row) for i, row in enumerate(self.contexts.get(experiment_id, []))]
        return [(u, (a, r, p, c)) for u, a, r, p, t, c in rows if t <= cutoff]


class FakeUnitOfWork:
    """Implements armlab.services.ports.UnitOfWorkPort (and ReadsUnitOfWork) in memory.
    ``commits`` counts commits; every flush bumps the version of experiments whose state
    changed, as the database does. ``with uow:`` returns it unchanged (one shared store)."""

    def __init__(self) -> None:
        self.experiments = FakeExperiments()
        self.audit = FakeAuditTrail()
        self.evidence = FakeEvidence()
        self.dashboard = FakeDashboardQueries()
        self.report = FakeReportQueries()
        self.impression_log = FakeImpressionLog()
        self.catalogs = FakeCatalogs()
        self.commits = 0
        self._seen: dict[int, tuple[Any, ...]] = {}

    def __enter__(self) -> FakeUnitOfWork:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

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


class FakeDashboardQueries:
    """What a test declares the dashboard reads (armlab.services.ports.DashboardQueries)."""

    def __init__(self) -> None:
        self.traffic: dict[int, int] = {}
        self.decisions: dict[int, dict[str, LatestDecision]] = {}
        self.snapshot_times: dict[int, datetime] = {}
        self.raw: dict[int, tuple[dict[str, ArmSums], dict[str, float]]] = {}
        self.positions: list[ConsumerPosition] = []
        self.dead_letters: list[tuple[datetime, str, int]] = []  # (bucket start, reason, n)
        self.counters: dict[str, int] = {}
        self.charts: dict[int, ChartSeries] = {}

    def impressions_by_experiment(self) -> dict[int, int]:
        return dict(self.traffic)

    def latest_decisions(self) -> dict[int, dict[str, LatestDecision]]:
        return {e: dict(d) for e, d in self.decisions.items()}

    def last_snapshot_times(self) -> dict[int, datetime]:
        return dict(self.snapshot_times)

    def raw_arm_sums(self, experiment_id: int, matured_before: datetime
                     ) -> tuple[dict[str, ArmSums], dict[str, float]]:
        return self.raw.get(experiment_id, ({}, {}))

    def consumer_positions(self) -> list[ConsumerPosition]:
        return sorted(self.positions, key=lambda c: (c.group, c.topic, c.partition))

    def dead_letters_since(self, since: datetime) -> dict[str, int]:
        out: dict[str, int] = {}
        for at, reason, n in self.dead_letters:
            if at >= since:
                out[reason] = out.get(reason, 0) + n
        return out

    def ingest_counters(self) -> dict[str, int]:
        return dict(self.counters)

    def chart_series(self, experiment_id: int, *, source: str, max_points: int,
                     sql_json: bool | None = None) -> ChartSeries:
        return self.charts.get(experiment_id) or ChartSeries()


class FakeReportQueries:
    """An experiment's history in memory (armlab.services.ports.ReportQueries); impressions are
    bucketed here as the database does it."""

    def __init__(self) -> None:
        self.snapshot_rows: dict[int, list[tuple[datetime, dict[str, float]]]] = {}
        self.impressions: dict[int, list[tuple[datetime, str, float]]] = {}
        self.decision_rows: dict[int, list[dict[str, Any]]] = {}

    def snapshots(self, experiment_id: int) -> list[tuple[datetime, dict[str, float]]]:
        return list(self.snapshot_rows.get(experiment_id, []))

    def reward_buckets(self, experiment_id: int, max_buckets: int
                       ) -> tuple[datetime | None, list[RewardBucket]]:
        rows = sorted(self.impressions.get(experiment_id, []), key=lambda r: r[0])
        if not rows:
            return None, []
        lo, hi = rows[0][0], rows[-1][0]
        width = max((hi - lo).total_seconds() / max_buckets, 1e-3)
        acc: dict[tuple[int, str], list[Any]] = {}
        for at, arm, reward in rows:
            b = acc.setdefault((math.floor(at.timestamp() / width), arm), [at, 0, 0.0])
            b[0], b[1], b[2] = max(b[0], at), b[1] + 1, b[2] + reward
        return lo, [(at, arm, n, r) for (_, arm), (at, n, r) in sorted(acc.items())]

    def decisions(self, experiment_id: int) -> list[dict[str, Any]]:
        return [dict(d) for d in self.decision_rows.get(experiment_id, [])]


class FakeImpressionLog:
    """Logged impressions in memory (armlab.services.ports.ImpressionLog)."""

    def __init__(self) -> None:
        self.rows: dict[int, list[LoggedRow]] = {}

    def logged(self, experiment_id: int) -> list[LoggedRow]:
        return sorted(self.rows.get(experiment_id, []), key=lambda r: r[3])


class FakeCatalogs:
    """Catalogs in memory (armlab.services.ports.CatalogStore)."""

    def __init__(self) -> None:
        self.infos: dict[str, CatalogInfo] = {}
        self.item_lists: dict[str, list[dict[str, Any]]] = {}
        self.version_reads = 0

    def get(self, name: str) -> CatalogInfo | None:
        return self.infos.get(name)

    def version(self, name: str) -> int | None:
        self.version_reads += 1
        info = self.infos.get(name)
        return None if info is None else info.version

    def items(self, name: str) -> list[dict[str, Any]]:
        items = sorted(self.item_lists.get(name, []), key=lambda it: it["id"])
        return [dict(it, popularity=float(it.get("popularity") or 0.0)) for it in items]

    def list_all(self) -> list[CatalogInfo]:
        return [self.infos[n] for n in sorted(self.infos)]

    def replace(self, info: CatalogInfo, items: list[dict[str, Any]]) -> None:
        self.infos[info.name] = info
        self.item_lists[info.name] = [dict(it) for it in items]
