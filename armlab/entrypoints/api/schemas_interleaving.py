"""Response models of an interleaving experiment's results (``design: interleaving``): the
``interleaving`` block of :class:`armlab.entrypoints.api.schemas.ResultsOut`, as
:func:`armlab.services.interleaving_evaluation.shown_interleaving` builds it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Number = int | float


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PairResultOut(_Out):
    """One pair of rankers (a before b in arm order): the always-valid test of the mean
    per-unit preference of a over b (credit difference), and the live win tallies."""

    a: str
    b: str
    n_units: Number = Field(..., description="Units (users or requests) in the test.")
    estimate: float | None = Field(..., description="Mean preference of a over b per unit.")
    ci_low: float | None = Field(..., description="Confidence sequence (simultaneous over "
                                 "pairs, at cs_alpha); null = unbounded.")
    ci_high: float | None
    p_value: float = Field(..., description="Running always-valid p (H0: no preference).")
    p_adjusted: float = Field(..., description="Holm-adjusted over the pairs.")
    decision: Literal["a_better", "b_better", "undecided"]
    winner: str | None
    valid: bool
    reason: str
    compared: int = Field(..., description="Impressions that compared the pair.")
    a_wins: int
    b_wins: int
    a_clicks: int
    b_clicks: int
    win_rate_a: float | None = Field(..., description="a_wins / (a_wins + b_wins); ties "
                                     "left out; null before any decisive impression.")
    propensity: float | None = Field(None, description="P(pair compared) in the latest "
                                     "snapshot (1 when every ranker enters every request).")


class RankerChoiceOut(_Out):
    """Which rankers enter the requests (latest running snapshot): m per request and each
    ranker's probability of entering."""

    m: int | None = None
    enter: dict[str, float] = Field(default_factory=dict)


class InterleavingResultsOut(_Out):
    """The last recorded look of the interleaving test (``recorded``), or before the first
    one every pair undecided with p = 1."""

    rankers: list[str]
    units: Number = 0
    pairs: list[PairResultOut]
    condorcet_winner: str | None = Field(..., description="The ranker decided better than "
                                         "every other, if any.")
    stop: bool
    stop_reason: str
    alpha: float
    cs_alpha: float
    looks: int
    frozen: bool = False
    evaluated_at: str | None = None
    recorded: bool
    choice: RankerChoiceOut = Field(default_factory=RankerChoiceOut)
