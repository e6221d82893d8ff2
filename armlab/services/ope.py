"""Off-policy evaluation of a candidate allocation on an experiment's logged impressions.

Every impression row carries the propensity with which its arm was served and the reward
attributed to it, which is exactly what :mod:`armlab.core.stats.ope` needs: a candidate traffic
split (for example "all traffic to arm X", or a different mix) is judged on traffic that
already happened, before it ever runs.

Assumptions stated up front (they are what makes the numbers meaningful):

- the logged propensities are the probabilities actually used (armlab's assignment logs
  them; a shipped experiment logs propensity 1 for the shipped arm);
- rewards are matured: impressions younger than the attribution window may still receive
  feedback, so by default they are left out (``matured_only``);
- the target is context-free, or stratified by one context field (``stratum_field``, e.g.
  ``position`` for the Open Bandit Dataset replay).

Intervals are clipped to the reward range the experiment declares: [0, 1] for binary
rewards. Continuous rewards (sums of feedback values) declare no range, so their intervals
are left as they are (see :mod:`armlab.core.stats.ope` for why the observed range is not used).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from armlab.core.clock import utcnow
from armlab.core.stats import ope
from armlab.errors import StatsError, ValidationFailed
from armlab.services.ports import ReadsUnitOfWork
from armlab.services.registry import get_experiment


@dataclass
class LoggedData:
    actions: list[str]
    rewards: list[float]
    propensities: list[float]
    strata: list[str] | None
    n_total: int
    n_immature: int


def reward_range_for(reward_kind: str) -> tuple[float, float] | None:
    """The range a reward of this kind can take: [0, 1] for binary; None (unknown) else."""
    return (0.0, 1.0) if reward_kind == "binary" else None


def parse_target(text: str, arms: list[str]) -> dict[str, float]:
    """``{"arm": weight, ...}`` JSON (or a bare arm key) -> a validated distribution.

    Weights must be >= 0 and are normalised to sum to 1; unknown arms are an error naming
    the valid ones.
    """
    text = text.strip()
    if text and not text.startswith("{"):
        raw: Any = {text: 1.0}
    else:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValidationFailed(f"--target-weights is not valid JSON: {exc.msg}",
                                   field="target_weights") from None
    if not isinstance(raw, dict) or not raw:
        raise ValidationFailed('--target-weights must be a JSON object like {"arm": 1.0}',
                               field="target_weights")
    out: dict[str, float] = {}
    for k, v in raw.items():
        if k not in arms:
            raise ValidationFailed(
                f"--target-weights names unknown arm {k!r}; arms are {', '.join(arms)}",
                field="target_weights",
            )
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
            raise ValidationFailed(f"--target-weights: weight of {k!r} must be a number >= 0",
                                   field="target_weights")
        out[k] = float(v)
    total = sum(out.values())
    if total <= 0:
        raise ValidationFailed("--target-weights: weights sum to 0", field="target_weights")
    return {k: v / total for k, v in out.items()}


def load_logged(
    uow: ReadsUnitOfWork,
    experiment_id: int,
    *,
    attribution_window_s: int,
    stratum_field: str | None = None,
    matured_only: bool = True,
    now: datetime | None = None,
) -> LoggedData:
    """The impressions of one experiment as OPE inputs (time order), read through the unit
    of work's ``impression_log``."""
    rows = uow.impression_log.logged(experiment_id)
    now = now or utcnow()
    cutoff = now - timedelta(seconds=attribution_window_s)
    acts: list[str] = []
    rew: list[float] = []
    prop: list[float] = []
    strata: list[str] = []
    immature = 0
    for arm, reward, p, served, ctx in rows:
        if matured_only and served > cutoff:
            immature += 1
            continue
        acts.append(arm)
        rew.append(reward)
        prop.append(p)
        if stratum_field is not None:
            strata.append(str((ctx or {}).get(stratum_field, "")))
    return LoggedData(acts, rew, prop, strata if stratum_field else None, len(rows), immature)


def evaluate_logged(
    data: LoggedData,
    *,
    target: Mapping[str, float] | None = None,
    target_by_stratum: Mapping[str, Mapping[str, float]] | None = None,
    alpha: float = 0.05,
    reward_range: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """IPW / SNIPW / DR of the target on ``data`` plus the logged policy's own mean reward;
    every interval clipped to ``reward_range`` when given (:func:`reward_range_for`)."""
    if not data.actions:
        raise StatsError(
            f"no matured impressions to evaluate ({data.n_total} logged, {data.n_immature} "
            "still inside the attribution window)"
        )
    res = ope.evaluate_policy(
        data.actions, data.rewards, data.propensities, target or {}, strata=data.strata,
        target_by_stratum=target_by_stratum, alpha=alpha, reward_range=reward_range,
    )
    logged = ope.on_policy_mean(data.rewards, alpha=alpha, reward_range=reward_range)
    return {
        "estimates": {k: v.as_dict() for k, v in res.items()},
        "logged": logged.as_dict(),
        "n_logged": data.n_total,
        "n_immature": data.n_immature,
        "alpha": alpha,
    }


def evaluate_experiment(
    uow: ReadsUnitOfWork,
    key: str,
    target_text: str,
    *,
    alpha: float = 0.05,
    matured_only: bool = True,
    now: datetime | None = None,
) -> dict[str, Any]:
    """``armlab ope``: evaluate a candidate allocation on experiment ``key``'s impressions."""
    exp = get_experiment(uow, key=key)
    arms = [a.key for a in exp.arms]
    target = parse_target(target_text, arms)
    data = load_logged(uow, exp.id, attribution_window_s=exp.attribution_window_s,
                       matured_only=matured_only, now=now)
    out = evaluate_logged(data, target=target, alpha=alpha,
                          reward_range=reward_range_for(exp.reward_kind))
    out.update({"experiment": key, "target": target})
    return out


def load_logged_by_key(
    uow_factory: Callable[[], AbstractContextManager[ReadsUnitOfWork]], key: str, *,
    attribution_window_s: int, stratum_field: str | None = None, matured_only: bool = True,
) -> LoggedData:
    """:func:`load_logged` for the experiment ``key``, in its own read-only unit of work
    (ExperimentNotFound if unknown)."""
    with uow_factory() as uow:
        exp = get_experiment(uow, key=key)
        return load_logged(uow, exp.id, attribution_window_s=attribution_window_s,
                           stratum_field=stratum_field, matured_only=matured_only)
