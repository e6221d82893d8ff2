"""The assignment cache's entries: an immutable :class:`ExperimentView` per experiment (built
from the experiment and its latest allocation snapshot by :func:`build_view`), the
:class:`Assignment` it answers with, and :func:`unit_hash`, the sticky draw of ``unit: user``.
A ``design: interleaving`` view also holds its ranker-set distribution
(:class:`~armlab.services.interleave.RankerSets`, from the snapshot's ``stats.sets``), a
running contextual one its allocation (:mod:`armlab.services.contextual_serving`).
See :mod:`armlab.services.assignment` for the rules they serve.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from armlab.core.policies.base import CdfSampler
from armlab.core.records import ExperimentRecord, SnapshotRecord
from armlab.core.serving import fixed_arm, served_weights
from armlab.core.status import ExperimentStatus
from armlab.services.contextual_serving import ContextualServing, contextual_serving
from armlab.services.interleave import RankerSets, ranker_sets


@dataclass(frozen=True)
class Assignment:
    impression_id: str
    experiment_key: str
    arm_key: str
    variant: dict[str, Any]
    propensity: float
    served_at: datetime
    snapshot_id: int | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "impression_id": self.impression_id,
            "experiment_key": self.experiment_key,
            "arm": self.arm_key,
            "variant": self.variant,
            "propensity": self.propensity,
            "served_at": self.served_at.isoformat(),
            "snapshot_id": self.snapshot_id,
        }


@dataclass(frozen=True)
class ExperimentView:
    """Immutable snapshot of what assignment needs about one experiment."""

    id: int
    key: str
    status: str
    unit: str
    salt: str
    version: int
    arm_keys: tuple[str, ...]
    variants: dict[str, dict[str, Any]]
    weights: tuple[float, ...]
    sampler: CdfSampler  # precomputed CDF of ``weights``, built once per snapshot
    snapshot_id: int | None
    fixed_arm: str | None  # stopped -> control, shipped -> shipped arm
    control: str = ""
    rolled_back: frozenset[str] = frozenset()  # arms a guardrail breach took out
    design: str = "ab"  # "ab" or "interleaving"
    #: design interleaving: the ranker-set distribution of the latest snapshot (or uniform).
    ranker_sets: RankerSets | None = None
    #: a running contextual policy's allocation (:mod:`armlab.services.contextual_serving`)
    contextual: ContextualServing | None = None

    def pick(self, u: float, context: dict[str, Any] | None = None) -> tuple[str, float]:
        """Arm whose CDF interval contains u in [0, 1), and its weight: of the context's row
        for a contextual allocation (P(arm | context)), of the snapshot's weights otherwise."""
        if self.contextual is not None:
            return self.contextual.pick(u, context or {})
        i, p = self.sampler.pick(u)
        return self.arm_keys[i], p


def unit_hash(salt: str, unit_id: str) -> float:
    """Deterministic u in [0, 1) from the experiment salt and the unit id."""
    d = hashlib.blake2b(f"{salt}\x1f{unit_id}".encode(), digest_size=8).digest()
    return int.from_bytes(d, "big") / 2.0**64


def build_view(exp: ExperimentRecord, snapshot: SnapshotRecord | None) -> ExperimentView:
    arm_keys = tuple(a.key for a in exp.arms)
    design = exp.design or "ab"
    sets = (ranker_sets(arm_keys, exp.interleaving,
                        snapshot.stats if snapshot is not None else None)
            if design == "interleaving" and len(arm_keys) >= 2 else None)
    # Weights of a running experiment (the serving rule); stopped/shipped serve ``fixed``.
    served = served_weights(
        ExperimentStatus.RUNNING, arm_keys, control=exp.control_arm_key,
        shipped=exp.shipped_arm_key,
        snapshot=snapshot.weights if snapshot is not None else None,
    )
    weights = [served[k] for k in arm_keys]
    fixed = fixed_arm(exp.status, control=exp.control_arm_key, shipped=exp.shipped_arm_key)
    return ExperimentView(
        id=exp.id,
        key=exp.key,
        status=exp.status,
        unit=exp.unit,
        salt=exp.salt,
        version=exp.version,
        arm_keys=arm_keys,
        variants={a.key: dict(a.variant or {}) for a in exp.arms},
        weights=tuple(weights),
        sampler=CdfSampler(weights),
        # A stopped/shipped experiment serves its fixed arm under its terminal snapshot's id;
        # until the allocator has written that snapshot, under no id (never the last running
        # snapshot's, whose weights are no longer what is served).
        snapshot_id=(snapshot.id if snapshot is not None
                     and (fixed is None or snapshot.policy_name == exp.status) else None),
        fixed_arm=fixed,
        control=exp.control_arm_key,
        rolled_back=frozenset((exp.rolled_back or {}).keys()),
        design=design,
        ranker_sets=sets,
        contextual=contextual_serving(exp, snapshot),
    )
