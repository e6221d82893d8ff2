"""The stored records the use cases read and write, as core types (not ORM classes).

Reads are protocols: whatever a storage port returns (an ORM row on the database, a plain
object in memory) only has to carry these attributes, so the service layer never imports the
database adapter. An experiment's lifecycle fields are settable (a transition changes them in
its unit of work); snapshots, decisions and audit rows are read-only once written.

Writes are frozen dataclasses (:class:`NewExperiment`, :class:`NewSnapshot`,
:class:`NewDecision`, :class:`NewAuditEntry`): a service builds one and hands it to its port,
which stores it (the database adapter maps it to its row; ids and defaults are the store's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

#: How long a dead-letter bucket is kept (seconds); the consumer's upkeep deletes older ones.
DEAD_LETTER_RETENTION_S = 24 * 3600
#: Ingest-lock keys older than this (seconds) are pruned by the consumer: a key only has to
#: outlive the transactions that touch it at the same moment.
INGEST_LOCK_RETENTION_S = 600


class ArmRecord(Protocol):
    """One arm of a stored experiment."""

    @property
    def key(self) -> str: ...
    @property
    def is_control(self) -> bool: ...
    @property
    def position(self) -> int: ...
    @property
    def variant(self) -> dict[str, Any]: ...


class ExperimentRecord(Protocol):
    """A stored experiment with its arms (see :class:`armlab.core.specs.ExperimentSpec` for
    what each field means)."""

    id: int
    key: str
    name: str
    description: str
    status: str
    unit: str
    design: str
    interleaving: dict[str, Any] | None
    reward_kind: str
    reward_metric: str
    policy_name: str
    policy_params: dict[str, Any]
    exploration_floor: float
    burn_in: int
    attribution_window_s: int
    control_arm_key: str
    sequential: dict[str, Any]
    salt: str
    shipped_arm_key: str | None
    guardrails: list[dict[str, Any]]
    rolled_back: dict[str, Any]
    version: int
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    ended_at: datetime | None

    @property
    def arms(self) -> Sequence[ArmRecord]: ...


class SnapshotRecord(Protocol):
    """A stored allocation snapshot: the weights a policy wrote at ``created_at``."""

    @property
    def id(self) -> int: ...
    @property
    def experiment_id(self) -> int: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def policy_name(self) -> str: ...
    @property
    def policy_version(self) -> str: ...
    @property
    def weights(self) -> dict[str, float]: ...
    @property
    def stats(self) -> dict[str, Any]: ...


class DecisionRecord(Protocol):
    """A stored look of the sequential test for one arm (or an interleaving look)."""

    @property
    def id(self) -> int: ...
    @property
    def experiment_id(self) -> int: ...
    @property
    def at(self) -> datetime: ...
    @property
    def arm_key(self) -> str: ...
    @property
    def decision(self) -> str: ...
    @property
    def estimate(self) -> float | None: ...
    @property
    def p_value(self) -> float | None: ...
    @property
    def ci_low(self) -> float | None: ...
    @property
    def ci_high(self) -> float | None: ...
    @property
    def n_control(self) -> float: ...
    @property
    def n_treatment(self) -> float: ...
    @property
    def evidence(self) -> dict[str, Any]: ...


class AuditRecord(Protocol):
    """A stored audit row: who changed what, when, why and on which evidence."""

    @property
    def experiment_id(self) -> int: ...
    @property
    def at(self) -> datetime: ...
    @property
    def actor(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def before(self) -> dict[str, Any]: ...
    @property
    def after(self) -> dict[str, Any]: ...
    @property
    def evidence(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class NewArm:
    key: str
    is_control: bool
    position: int
    variant: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NewExperiment:
    """A draft experiment to register (the store gives it its id and timestamps)."""

    key: str
    name: str
    description: str
    status: str
    unit: str
    design: str
    interleaving: dict[str, Any] | None
    reward_kind: str
    reward_metric: str
    policy_name: str
    policy_params: dict[str, Any]
    exploration_floor: float
    burn_in: int
    attribution_window_s: int
    control_arm_key: str
    sequential: dict[str, Any]
    salt: str
    guardrails: list[dict[str, Any]]
    rolled_back: dict[str, Any]
    arms: list[NewArm]


@dataclass(frozen=True)
class NewSnapshot:
    experiment_id: int
    created_at: datetime
    policy_name: str
    policy_version: str
    weights: dict[str, float]
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NewDecision:
    experiment_id: int
    at: datetime
    arm_key: str
    decision: str
    estimate: float | None = None
    p_value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n_control: float = 0.0
    n_treatment: float = 0.0
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NewAuditEntry:
    experiment_id: int
    at: datetime
    actor: str
    action: str
    reason: str
    before: dict[str, Any]
    after: dict[str, Any]
    evidence: dict[str, Any]
