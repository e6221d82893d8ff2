"""In-memory stand-ins for the allocator's and the assignment cache's storage ports
(:mod:`armlab.services.ports_allocation`, :mod:`armlab.services.ports_assignment`), built on
the in-memory unit of work of ``tests/fakes.py``.

One :class:`MemoryUnitOfWork` is the whole database: experiments, audit rows, decisions,
snapshots (``tests/fakes.py``), plus what these ports read beyond it: the logged impressions
(served time, reward, propensity, context) and the stored sticky assignments.
:class:`MemoryAllocationStore` and :class:`MemoryAssignmentStore` are views on it, so a test
can run the allocator and then the assigner on the same state.

Fidelity to the database, where the services could tell the difference:

* :meth:`LoggedEvidence.log` adds an impression to the arm totals (as the consumer adds it to
  ``arm_stats``) and keeps the row (unit, propensity, reward, feedback events, context,
  guardrail values), from which the immature sums, the matured contexts,
  ``sums_served_after``, the per-unit sums (``unit: user``) and the guardrail sums served
  after the cutoff or per unit are computed as the SQL of :mod:`armlab.adapters.db.queries`
  does; the interleaving per-unit sums come from the stored units and credits;
* :meth:`MemoryAllocationStore.unit` is a transaction: leaving it without a commit (an error)
  restores the experiments' columns, the audit trail, the decisions and the snapshots;
* every change of an experiment's status, shipped arm or rolled-back arms bumps its version
  (the database's optimistic-locking column does; ``FakeUnitOfWork`` tracks the first two);
* :meth:`MemoryAssignmentStore.store_sticky` keeps the first arm stored for a unit
  (``ON CONFLICT DO NOTHING``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from armlab.adapters.db.models import AllocationSnapshot, Experiment
from armlab.core.evidence import FIELDS, ArmSums
from armlab.core.records import NewSnapshot
from armlab.core.stats.cuped import CovariateSums
from armlab.core.stats.noninferiority_units import UnitSums
from tests.fakes import FakeEvidence, FakeUnitOfWork

StickyRow = tuple[int, str, str, float]
_COLUMNS = [c.key for c in Experiment.__table__.columns]


@dataclass(frozen=True)
class LoggedImpression:
    """One served impression as the allocator's reads see it."""

    experiment_id: int
    arm_key: str
    served_at: datetime
    reward: float = 0.0
    propensity: float = 1.0
    context: dict[str, Any] = field(default_factory=dict)
    unit_id: str = ""  # "": a unit of its own
    feedback_count: int | None = None  # None: 1 when the reward is positive
    # guardrail metric key -> [value, feedback events] (``impressions.guardrail_values``)
    metrics: dict[str, list[float]] | None = None

    @property
    def feedback(self) -> int:
        return int(self.reward > 0) if self.feedback_count is None else self.feedback_count


def _add_term(s: ArmSums, y: float, p: float, feedback: float) -> None:
    s.add_impression(p)
    s.add_reward_change(0.0, y, p)
    s.feedback_n += feedback


def impression_sums(rows: Iterable[LoggedImpression]) -> dict[str, ArmSums]:
    """Per-arm :class:`ArmSums` of these impressions (the consumer's increments)."""
    out: dict[str, ArmSums] = {}
    for r in rows:
        _add_term(out.setdefault(r.arm_key, ArmSums()), r.reward, r.propensity, r.feedback)
    return out


def per_unit_sums(rows: Iterable[LoggedImpression]) -> dict[str, ArmSums]:
    """One term per (arm, unit): Y_u = the unit's total reward, p_u its largest propensity
    (as ``armlab.adapters.db.queries.unit_sums``)."""
    units: dict[tuple[str, str], list[float]] = {}
    for i, r in enumerate(rows):
        y, p, f = units.setdefault((r.arm_key, r.unit_id or f"#{i}"), [0.0, 0.0, 0.0])
        units[(r.arm_key, r.unit_id or f"#{i}")] = [y + r.reward, max(p, r.propensity),
                                                     f + r.feedback]
    out: dict[str, ArmSums] = {}
    for (arm, _), (y, p, f) in units.items():
        _add_term(out.setdefault(arm, ArmSums()), y, p, f)
    return out


def per_unit_covariate_sums(rows: Sequence[LoggedImpression], pre: Sequence[LoggedImpression],
                            covariate: str) -> dict[str, CovariateSums]:
    """Per arm the CUPED covariate sums of the units in ``rows`` (Y_u, p_u as
    :func:`per_unit_sums`), X_u over the unit's ``pre`` impressions (as
    ``armlab.adapters.db.queries.unit_covariate_sums``)."""
    xs: dict[str, float] = {}
    for r in pre:
        v = {"reward": r.reward, "feedback": float(r.feedback), "impressions": 1.0}[covariate]
        xs[r.unit_id] = xs.get(r.unit_id, 0.0) + v
    units: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        y, p = units.setdefault((r.arm_key, r.unit_id), [0.0, 0.0])
        units[(r.arm_key, r.unit_id)] = [y + r.reward, max(p, r.propensity)]
    acc: dict[str, list[float]] = {}
    for (arm, unit), (y, p) in units.items():
        x = xs.get(unit, 0.0)
        a = acc.setdefault(arm, [0.0] * 7)
        for j, v in enumerate((float(unit in xs), x, x * x, x * y, x / p, x * x / (p * p),
                               x * y / (p * p))):
            a[j] += v
    return {arm: CovariateSums(*a) for arm, a in acc.items()}


def _plus(a: ArmSums | None, b: ArmSums) -> ArmSums:
    if a is None:
        return copy.copy(b)
    return ArmSums(*(getattr(a, f) + getattr(b, f) for f in FIELDS))


class LoggedEvidence(FakeEvidence):
    """:class:`FakeEvidence` with a log of impressions and every snapshot written."""

    def __init__(self) -> None:
        super().__init__()
        self.impressions: list[LoggedImpression] = []
        self.snapshot_log: list[AllocationSnapshot] = []
        # interleaving, as the consumer stores it: impressions per (experiment, unit) and
        # the IPW credit per (experiment, unit, a, b)
        self.il_units: dict[tuple[int, str], int] = {}
        self.il_credits: dict[tuple[int, str, str, str], float] = {}

    def log(self, rows: Iterable[LoggedImpression]) -> None:
        """Serve these impressions: keep the rows, add them to the arm totals."""
        rows = list(rows)
        self.impressions += rows
        for exp_id in {r.experiment_id for r in rows}:
            totals = self.sums.setdefault(exp_id, {})
            for arm, s in impression_sums(r for r in rows if r.experiment_id == exp_id).items():
                totals[arm] = _plus(totals.get(arm), s)

    def served(self, experiment_id: int) -> list[LoggedImpression]:
        return [r for r in self.impressions if r.experiment_id == experiment_id]

    def sums_served_after(self, experiment_id: int, cutoff: datetime) -> dict[str, ArmSums]:
        """The logged impressions after ``cutoff``, plus what a test declares in ``late``."""
        out = impression_sums(r for r in self.served(experiment_id) if r.served_at > cutoff)
        for arm, s in self.late.get(experiment_id, {}).items():
            out[arm] = _plus(out.get(arm), s)
        return out

    def unit_sums(self, experiment_id: int, cutoff: datetime | None) -> dict[str, ArmSums]:
        """Per unit from the logged impressions served up to ``cutoff`` (what a test
        declares in ``units`` when none are logged)."""
        rows = self.served(experiment_id)
        if not rows:
            return super().unit_sums(experiment_id, cutoff)
        return per_unit_sums(r for r in rows if cutoff is None or r.served_at <= cutoff)

    def unit_covariate_sums(self, experiment_id: int, cutoff: datetime | None, *,
                            pre_from: datetime, pre_to: datetime, covariate: str
                            ) -> dict[str, CovariateSums]:
        """From the logged impressions: this experiment's up to ``cutoff``, the other
        experiments' in [pre_from, pre_to) (what a test declares in ``covariates`` when
        none are logged)."""
        rows = self.served(experiment_id)
        if not rows:
            return super().unit_covariate_sums(experiment_id, cutoff, pre_from=pre_from,
                                               pre_to=pre_to, covariate=covariate)
        pre = [r for r in self.impressions if r.experiment_id != experiment_id
               and pre_from <= r.served_at < pre_to]
        return per_unit_covariate_sums(
            [r for r in rows if cutoff is None or r.served_at <= cutoff], pre, covariate)

    def guardrail_sums_served_after(self, experiment_id: int, cutoff: datetime
                                    ) -> dict[str, dict[str, ArmSums]]:
        """From the logged impressions' metric values, plus ``guardrails_late``."""
        out = super().guardrail_sums_served_after(experiment_id, cutoff)
        for r in self.served(experiment_id):
            if r.served_at <= cutoff:
                continue
            for metric, (y, count) in (r.metrics or {}).items():
                s = out.setdefault(metric, {}).setdefault(r.arm_key, ArmSums())
                _add_term(s, float(y), r.propensity, float(count))
        return out

    def unit_guardrail_sums(self, experiment_id: int, cutoff: datetime | None
                            ) -> dict[str, dict[str, UnitSums]]:
        """Per unit from the logged impressions' metric values (as
        ``armlab.adapters.db.queries.unit_guardrail_sums``), or ``guardrail_units``."""
        rows = self.served(experiment_id)
        if not rows:
            return super().unit_guardrail_sums(experiment_id, cutoff)
        acc: dict[tuple[str, str, str], list[float]] = {}
        for i, r in enumerate(rows):
            if cutoff is not None and r.served_at > cutoff:
                continue
            for metric, (y, count) in (r.metrics or {}).items():
                a = acc.setdefault((metric, r.arm_key, r.unit_id or f"#{i}"), [0.0] * 5)
                a[:4] = [a[0] + 1, a[1] + float(y), a[2] + float(y) ** 2, a[3] + float(count)]
                a[4] = max(a[4], r.propensity)
        out: dict[str, dict[str, UnitSums]] = {}
        for (metric, arm, _), (n, y, ysq, events, p) in acc.items():
            out.setdefault(metric, {}).setdefault(arm, UnitSums()).add_unit(n, y, ysq, events, p)
        return out

    def add_snapshot(self, new: NewSnapshot) -> AllocationSnapshot:
        row = super().add_snapshot(new)
        self.snapshot_log.append(row)
        return row

    def interleaving_sums(self, experiment_id: int, aggregate: str
                          ) -> tuple[float, dict[tuple[str, str], tuple[float, float]]]:
        """From the stored units and credits (x_u = credit, / impressions for ``mean``, as
        the database sums them), or what a test declares in ``interleaving``."""
        units = {u: n for (e, u), n in self.il_units.items() if e == experiment_id}
        if not units:
            return super().interleaving_sums(experiment_id, aggregate)
        out: dict[tuple[str, str], tuple[float, float]] = {}
        for (e, u, a, b), c in self.il_credits.items():
            if e != experiment_id or units.get(u, 0) <= 0:
                continue
            x = c / units[u] if aggregate == "mean" else c
            s, q = out.get((a, b), (0.0, 0.0))
            out[(a, b)] = (s + x, q + x * x)
        return float(len(units)), out


class MemoryUnitOfWork(FakeUnitOfWork):
    """The in-memory database, and the allocator's unit of work on it
    (:class:`armlab.services.ports_allocation.AllocationUnit`)."""

    evidence: LoggedEvidence

    def __init__(self) -> None:
        super().__init__()
        self.evidence = LoggedEvidence()
        self.sticky: dict[tuple[int, str], tuple[str, float, datetime]] = {}

    def flush(self) -> None:
        for exp in self.experiments.by_key.values():
            state = (exp.status, exp.shipped_arm_key, sorted(exp.rolled_back or {}))
            before = self._seen.get(exp.id)
            if before is not None and before != state:
                exp.version += 1
            self._seen[exp.id] = state

    def by_id(self, experiment_id: int) -> Experiment | None:
        return next((e for e in self.experiments.by_key.values() if e.id == experiment_id),
                    None)

    # -- AllocationUnit
    def lock_experiment(self, experiment_id: int) -> Experiment | None:
        return self.by_id(experiment_id)  # one thread: nothing to lock

    def immature_sums(self, experiment_id: int, cutoff: datetime
                      ) -> dict[str, tuple[float, float, float]]:
        young = impression_sums(r for r in self.evidence.served(experiment_id)
                                if r.served_at > cutoff)
        return {k: (s.n, s.reward_sum, s.reward_sumsq) for k, s in young.items()}

    def matured_context_sums(self, experiment_id: int, cutoff: datetime,
                             arms: Sequence[str], features: Sequence[str]
                             ) -> Iterator[tuple[str, dict[str, Any], float, float]]:
        wanted = set(arms)
        for r in self.evidence.served(experiment_id):
            if r.arm_key in wanted and r.served_at <= cutoff:
                ctx = r.context if isinstance(r.context, dict) else {}
                yield r.arm_key, {n: ctx.get(n) for n in features}, 1.0, r.reward

    # -- transactions
    def checkpoint(self) -> dict[str, Any]:
        """What a rollback restores: the experiments' columns and the rows written since."""
        ev = self.evidence
        return {
            "experiments": {k: {c: copy.deepcopy(getattr(e, c)) for c in _COLUMNS}
                            for k, e in self.experiments.by_key.items()},
            "seen": dict(self._seen), "audit": len(self.audit.rows),
            "decisions": len(ev.decisions), "snapshots": dict(ev.snapshots),
            "snapshot_log": len(ev.snapshot_log),
        }

    def rollback(self, saved: dict[str, Any]) -> None:
        for key, columns in saved["experiments"].items():
            for c, value in columns.items():
                setattr(self.experiments.by_key[key], c, value)
        self._seen = saved["seen"]
        ev = self.evidence
        del self.audit.rows[saved["audit"]:]
        del ev.decisions[saved["decisions"]:]
        del ev.snapshot_log[saved["snapshot_log"]:]
        ev.snapshots = saved["snapshots"]


class MemoryAllocationStore:
    """:class:`armlab.services.ports_allocation.AllocationStore` on a :class:`MemoryUnitOfWork`;
    each unit is a transaction (rolled back unless committed)."""

    def is_transient(self, exc: BaseException) -> bool:
        return False  # memory does not fail over

    def is_data_error(self, exc: BaseException,
                      value_errors: tuple[type[BaseException], ...] = ()) -> bool:
        return False

    def __init__(self, db: MemoryUnitOfWork) -> None:
        self.db = db
        self.rollbacks = 0

    def active_experiment_ids(self, statuses: Sequence[str]) -> list[int]:
        wanted = {str(s) for s in statuses}
        return sorted(e.id for e in self.db.experiments.by_key.values() if e.status in wanted)

    @contextmanager
    def unit(self) -> Iterator[MemoryUnitOfWork]:
        saved, commits = self.db.checkpoint(), self.db.commits
        try:
            yield self.db
        finally:
            if self.db.commits == commits:
                self.db.rollback(saved)
                self.rollbacks += 1


class MemoryAssignmentReads:
    """:class:`armlab.services.ports_assignment.AssignmentReads` on a :class:`MemoryUnitOfWork`."""

    def __init__(self, db: MemoryUnitOfWork) -> None:
        self.db = db

    def experiment(self, key: str) -> Experiment | None:
        return self.db.experiments.by_key.get(key)

    def experiments(self, ids: Sequence[int]) -> list[Experiment]:
        return [e for e in self.db.experiments.by_key.values() if e.id in set(ids)]

    def heads(self) -> list[tuple[int, str, int]]:
        return [(e.id, e.key, e.version) for e in self.db.experiments.by_key.values()]

    def latest_snapshot(self, experiment_id: int) -> AllocationSnapshot | None:
        return self.db.evidence.latest_snapshot(experiment_id)

    def latest_snapshot_ids(self) -> dict[int, int]:
        return {e: s.id for e, s in self.db.evidence.snapshots.items()}

    def snapshots(self, ids: Sequence[int]) -> dict[int, AllocationSnapshot]:
        return {e: s for e, s in self.db.evidence.snapshots.items() if s.id in set(ids)}

    def sticky(self, experiment_ids: Sequence[int], *,
               since: datetime | None = None) -> Iterable[StickyRow]:
        return [(e, u, arm, p) for (e, u), (arm, p, at) in self.db.sticky.items()
                if e in set(experiment_ids) and (since is None or at >= since)]


class MemoryAssignmentStore:
    """:class:`armlab.services.ports_assignment.AssignmentStore` on a
    :class:`MemoryUnitOfWork`; ``writes`` counts the rows offered to :meth:`store_sticky`."""

    def is_transient(self, exc: BaseException) -> bool:
        return False  # memory does not fail over

    def is_data_error(self, exc: BaseException,
                      value_errors: tuple[type[BaseException], ...] = ()) -> bool:
        return False

    def __init__(self, db: MemoryUnitOfWork) -> None:
        self.db = db
        self.writes = 0

    @contextmanager
    def reads(self) -> Iterator[MemoryAssignmentReads]:
        yield MemoryAssignmentReads(self.db)

    def store_sticky(self, rows: list[dict[str, Any]]) -> None:
        self.writes += len(rows)
        for r in rows:  # first writer wins
            self.db.sticky.setdefault((int(r["experiment_id"]), str(r["unit_id"])),
                                      (str(r["arm_key"]), float(r["propensity"]),
                                       r["assigned_at"]))
