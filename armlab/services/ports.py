"""What the use cases need from storage, as protocols (the ports of the service layer).

:class:`armlab.adapters.db.uow.UnitOfWork` implements :class:`UnitOfWorkPort` on the database;
the test suite implements it in memory (``tests/fakes.py``) to test the use cases without one.
A unit of work is one transaction: the registry's functions flush; the use cases that own the
transaction (:class:`armlab.services.experiments.ExperimentUseCases`, the allocator, the
decision recorder) commit it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from armlab.core.catalog import CatalogInfo
from armlab.core.evidence import ArmSums
from armlab.core.readings import (
    ChartSeries,
    ConsumerPosition,
    LatestDecision,
    LoggedRow,
    RewardBucket,
)
from armlab.core.records import (
    AuditRecord,
    DecisionRecord,
    ExperimentRecord,
    NewAuditEntry,
    NewDecision,
    NewExperiment,
    NewSnapshot,
    SnapshotRecord,
)
from armlab.core.stats.cuped import CovariateSums
from armlab.core.stats.noninferiority_units import UnitSums
from armlab.core.stats.segments import ContextRow


class StorageFailures(Protocol):
    """How a store classifies its own failures, so the services can retry without knowing
    the storage library (:class:`armlab.adapters.db.retry.SqlFailures` on the database)."""

    def is_transient(self, exc: BaseException) -> bool:
        """True when trying the same work again later can succeed (a broken connection, a
        server restart, a lost serialisation race, a locked file)."""
    def is_data_error(self, exc: BaseException,
                      value_errors: tuple[type[BaseException], ...] = ()) -> bool:
        """True when the store refused the values it was given (or binding one raised one of
        ``value_errors``): the records written caused it."""


class Experiments(Protocol):
    def get(self, key: str, *, for_update: bool = False) -> ExperimentRecord | None: ...
    def list(self, status: str | None = None) -> Sequence[ExperimentRecord]: ...
    def add(self, experiment: NewExperiment) -> ExperimentRecord:
        """Store a new experiment with its arms; the stored record (its id set on flush)."""
    def keys_starting_with(self, prefix: str) -> set[str]: ...
    def unflushed_change(self, record: object, attribute: str) -> bool:
        """True when ``record`` (an experiment or arm this store handed out) had ``attribute``
        changed in memory and not flushed yet (the registry's guard on frozen variants and
        guardrails); False for a store without change tracking."""


class AuditTrail(Protocol):
    def add(self, row: NewAuditEntry) -> None: ...
    def for_experiment(self, experiment_id: int) -> Sequence[AuditRecord]: ...


class Evidence(Protocol):
    def arm_sums(self, experiment_id: int) -> dict[str, ArmSums]: ...
    def sums_served_after(self, experiment_id: int, cutoff: datetime
                          ) -> dict[str, ArmSums]: ...
    def unit_sums(self, experiment_id: int, cutoff: datetime | None) -> dict[str, ArmSums]: ...
    def unit_covariate_sums(self, experiment_id: int, cutoff: datetime | None, *,
                            pre_from: datetime, pre_to: datetime, covariate: str
                            ) -> dict[str, CovariateSums]:
        """CUPED's per-arm covariate sums of the units ``unit_sums`` analyses, X_u from the
        impressions of other experiments served in [pre_from, pre_to)."""
    def guardrail_sums(self, experiment_id: int) -> dict[str, dict[str, ArmSums]]: ...
    def guardrail_sums_served_after(self, experiment_id: int, cutoff: datetime
                                    ) -> dict[str, dict[str, ArmSums]]: ...
    def unit_guardrail_sums(self, experiment_id: int, cutoff: datetime | None
                            ) -> dict[str, dict[str, UnitSums]]:
        """Guardrail sums with one term per unit (``unit: user``): metric -> arm -> sums over
        the impressions served up to ``cutoff``."""
    def latest_snapshot(self, experiment_id: int) -> SnapshotRecord | None: ...
    def latest_policy_snapshot(self, experiment_id: int, policy_name: str
                               ) -> SnapshotRecord | None:
        """The newest snapshot the policy ``policy_name`` wrote (a stopped or shipped
        experiment's last learned allocation; its newest snapshot is the terminal one)."""
    def latest_decisions(self, experiment_id: int) -> Mapping[str, DecisionRecord]: ...
    def add_decision(self, row: NewDecision) -> None: ...
    def add_snapshot(self, row: NewSnapshot) -> None: ...
    def interleaving_sums(self, experiment_id: int, aggregate: str
                          ) -> tuple[float, dict[tuple[str, str], tuple[float, float]]]:
        """Interleaving: (units, {(a, b): (sum of x_u, sum of x_u²)}) (a before b in arm
        order; a pair without credits is absent)."""
    def interleaving_tallies(self, experiment_id: int
                             ) -> dict[tuple[str, str], tuple[int, int, int, int, int]]:
        """Interleaving: {(a, b): (compared, a_wins, b_wins, a_clicks, b_clicks)}."""
    def latest_look(self, experiment_id: int, row_key: str) -> DecisionRecord | None:
        """The newest decision row with arm key ``row_key`` (an interleaving look)."""
    def logged_contexts(self, experiment_id: int, cutoff: datetime) -> list[ContextRow]:
        """(arm, reward, propensity, context) of the impressions served at or before
        ``cutoff`` (contextual experiments: per-segment effects, personalisation value)."""
    def logged_unit_contexts(self, experiment_id: int, cutoff: datetime
                             ) -> list[tuple[str, ContextRow]]:
        """(unit id, (arm, reward, propensity, context)) of the same impressions, in serving
        order (``unit: user``: the per-user contextual analysis)."""


class UnitOfWorkPort(Protocol):
    """One transaction's repositories; ``flush`` surfaces conflicts, ``commit`` ends it."""

    @property
    def experiments(self) -> Experiments: ...
    @property
    def audit(self) -> AuditTrail: ...
    @property
    def evidence(self) -> Evidence: ...
    def flush(self) -> None: ...
    def commit(self) -> None: ...


class DashboardQueries(Protocol):
    """What the dashboard reads (:mod:`armlab.services.dashboard` shapes it)."""

    def impressions_by_experiment(self) -> dict[int, int]: ...
    def latest_decisions(self) -> dict[int, dict[str, LatestDecision]]: ...
    def last_snapshot_times(self) -> dict[int, datetime]: ...
    def raw_arm_sums(self, experiment_id: int, matured_before: datetime
                     ) -> tuple[dict[str, ArmSums], dict[str, float]]: ...
    def consumer_positions(self) -> list[ConsumerPosition]: ...
    def dead_letters_since(self, since: datetime) -> dict[str, int]: ...
    def ingest_counters(self) -> dict[str, int]: ...
    def chart_series(self, experiment_id: int, *, source: str, max_points: int,
                     sql_json: bool | None = None) -> ChartSeries: ...


class ReportQueries(Protocol):
    """An experiment's history as the report reads it (:mod:`armlab.services.report`)."""

    def snapshots(self, experiment_id: int) -> list[tuple[datetime, dict[str, float]]]: ...
    def reward_buckets(self, experiment_id: int, max_buckets: int
                       ) -> tuple[datetime | None, list[RewardBucket]]: ...
    def decisions(self, experiment_id: int) -> list[dict[str, Any]]: ...


class ImpressionLog(Protocol):
    """The logged impressions off-policy evaluation reads (:mod:`armlab.services.ope`)."""

    def logged(self, experiment_id: int) -> list[LoggedRow]: ...


class CatalogStore(Protocol):
    """Versioned item catalogs (:mod:`armlab.services.catalog`)."""

    def get(self, name: str) -> CatalogInfo | None: ...
    def version(self, name: str) -> int | None: ...
    def items(self, name: str) -> list[dict[str, Any]]: ...
    def list_all(self) -> list[CatalogInfo]: ...
    def replace(self, info: CatalogInfo, items: list[dict[str, Any]]) -> None: ...


class ReadsUnitOfWork(UnitOfWorkPort, Protocol):
    """A unit of work that also hands out the read ports of the dashboard, the report,
    off-policy evaluation and the catalogs."""

    @property
    def dashboard(self) -> DashboardQueries: ...
    @property
    def report(self) -> ReportQueries: ...
    @property
    def impression_log(self) -> ImpressionLog: ...
    @property
    def catalogs(self) -> CatalogStore: ...
