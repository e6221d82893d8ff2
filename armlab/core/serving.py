"""The serving rule: which arms serve an experiment in a given state, and with what weights.

* ``running`` (and ``draft``, for display): the latest allocation snapshot's weights,
  normalised; a uniform split before the first snapshot (or if a snapshot gives no arm any
  weight).
* ``stopped``: the control arm only (weight 1).
* ``shipped``: the shipped arm only (weight 1; the control if none was recorded).

The assigner serves by this rule, the results endpoint reports it and the allocator writes the
terminal snapshots from it, so the three always agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from armlab.core.status import ExperimentStatus


def fixed_arm(status: str, *, control: str, shipped: str | None) -> str | None:
    """The one arm a stopped or shipped experiment serves (propensity 1); None otherwise."""
    if status == ExperimentStatus.STOPPED:
        return control
    if status == ExperimentStatus.SHIPPED:
        return shipped or control
    return None


def served_weights(
    status: str,
    arm_keys: Sequence[str],
    *,
    control: str,
    shipped: str | None,
    snapshot: Mapping[str, float] | None,
) -> dict[str, float]:
    """Traffic share of each arm in ``arm_keys`` order (sums to 1 when there are arms)."""
    fixed = fixed_arm(status, control=control, shipped=shipped)
    if fixed is not None:
        return {k: 1.0 if k == fixed else 0.0 for k in arm_keys}
    raw = [max(float((snapshot or {}).get(k, 0.0)), 0.0) for k in arm_keys]
    total = sum(raw)
    if total <= 0.0:
        return {k: 1.0 / len(arm_keys) for k in arm_keys}
    return {k: w / total for k, w in zip(arm_keys, raw, strict=True)}
