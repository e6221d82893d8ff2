"""Interleaving settings of an experiment (``design: interleaving``; pydantic v2), part of
the registration body (:class:`armlab.core.specs.ExperimentSpec`, which re-exports it)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from armlab.core.spec_base import INT32_MAX, JSON_INT_MAX, StrictModel


class InterleavingSpec(StrictModel):
    """How an interleaving experiment (``design: interleaving``) merges and tests its rankers.

    Every arm is a ranker. Each request shows one list merged by team draft (two rankers) or
    team-draft multileaving (three or more; Schuth et al. 2014), the draft order drawn per
    request; a click is credited to the team of the clicked item. The test is per pair of
    rankers on the unit's mean (or summed) credit difference, always valid, Holm across pairs
    (:mod:`armlab.core.stats.interleaving`); ``sequential.alpha`` and ``sequential.auto_stop``
    apply. With ``rankers_per_request`` below the number of arms a multi-dueling Thompson
    bandit chooses the rankers of each request (:mod:`armlab.core.policies.dueling`) and every
    impression logs the probability of each pair being compared (the test weights by it)."""

    rankers_per_request: int | None = Field(
        None, ge=2, le=256,
        description="Rankers merged into each list; omitted = every arm. Below the number of "
        "arms a dueling bandit chooses them per request.")
    pair_floor: float = Field(
        0.02, gt=0, lt=1,
        description="Smallest probability of any pair being compared when the bandit chooses "
        "(must be reachable: at most m(m-1)/(K(K-1)) for m of K rankers).")
    aggregate: Literal["mean", "sum"] = Field(
        "mean", description="A unit's preference: the mean (default) or the sum of its "
        "impressions' credit differences.")
    planned_units: int = Field(
        1000, ge=1, le=JSON_INT_MAX,
        description="Units the confidence sequence is tuned for (valid before and after).")
    min_units: int = Field(30, ge=2, le=INT32_MAX,
                           description="Units before a look carries evidence.")
    stop_on: Literal["condorcet", "all_pairs", "never"] = Field(
        "condorcet", description="condorcet: one ranker decided better than every other (or "
        "every pair decided); all_pairs: every pair decided; never: monitor only. Applies "
        "with sequential.auto_stop.")
