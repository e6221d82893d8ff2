"""Always-valid tests of interleaved (team-draft) comparisons: per pair of rankers, per unit.

The data: for every impression (request) and every pair (a, b) of rankers compared in it, the
team-draft outcome d = credit_a - credit_b (:mod:`armlab.core.interleaving`). The unit (a
request, or a user with many requests) is what the test counts: the unit's *preference*

    x_u = (1/n_u) sum_{t in u} w_t d_t          (``aggregate="mean"``, the default), or
    x_u = sum_{t in u} w_t d_t                  (``aggregate="sum"``),

where n_u is the unit's number of impressions and w_t = 1 when every impression compares the
pair, or w_t = 1{pair compared at t} / P(pair compared at t) when a dueling bandit
(:mod:`armlab.core.policies.dueling`) chooses which rankers enter each request: the inverse
propensity weight (Horvitz & Thompson 1952) makes E[w_t d_t | past] = E[d_t | compared, past]
whatever the bandit did, and 0 under H0 below. Aggregating per user makes the variance
cluster-robust: a user's requests share its click propensity and tastes.

H0 for a pair: no preference, E[x_u | past] = 0. It holds exactly when the two rankers are
exchangeable (identical lists: the random draft order makes d_t symmetric about 0 given
everything else), and on average when users disagree (some prefer a, others b).

The test (per pair): the one-sample normal-mixture mSPRT of :func:`armlab.core.stats.msprt.
mixture_test` on the per-unit preferences, D = mean of x_u over the n units so far and
V = s²/n with s² the realised (sample) variance of the x_u, after a minimum number of units.
tau² is set on the scale of the data: tau² = rho² s² with rho² tuned by Howard et al.'s rule
(:func:`armlab.core.stats.msprt.tau2_for_horizon`) for ``planned_units`` units of unit
variance. With that choice the mixture boundary is exactly the Lyapunov-type asymptotic
confidence sequence of Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas ("Time-uniform central
limit theory and asymptotic confidence sequences", 2021, Thm 2.5; see
:mod:`armlab.core.stats.adaptive` for the algebra), valid for martingale differences with a
consistent variance estimate, which is what the per-unit preferences are (also under the
bandit's adaptive choice, thanks to the weights). A fixed ``tau2`` may be given instead.

Several pairs: Holm (:func:`armlab.core.stats.msprt.holm_adjust`) over the pairs' running
always-valid p-values, confidence sequences at alpha / (number of pairs) (simultaneous,
Bonferroni). A pair is *decided* when its Holm-adjusted p is <= alpha; its direction is the
sign of the estimate at the look that reached its running minimum p (there the look's own
confidence interval at that level excludes 0 on that side), and once decided it never
flips. A ranker that is decided better than every other is the *Condorcet winner*.

Running state, as the A/B test's (:mod:`armlab.core.decisions`): the running p of a pair is
the minimum over looks, its confidence sequence the running intersection, a look before the
minimum number of units (or with zero variance) carries no evidence, and once the experiment
stops (:class:`InterleavingConfig.stop_on`) the result is frozen: later looks return it
unchanged.

What the platform keeps per pair, over units: n (units), the sum of x_u and the sum of x_u²
(:class:`PairSums`); for ``unit: user`` each user's running (count, sum of w d) per pair, so
that its x_u can be replaced when more of its requests arrive.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from itertools import combinations
from typing import Literal

import numpy as np
import numpy.typing as npt

from armlab.core.stats.interleaving_kernel import (
    Aggregate,
    PairSums,
    holm_adjust_many,
    preference_kernel,
    rho2_for_units,
    unit_preferences,
)
from armlab.core.stats.msprt import (
    MsprtResult,
    MsprtState,
    holm_adjust,
    mixture_test,
)
from armlab.errors import StatsError

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
StopOn = Literal["condorcet", "all_pairs", "never"]
Pair = tuple[str, str]

__all__ = ["Aggregate", "Decision", "InterleavingConfig", "InterleavingResult", "InterleavingState",
           "PairResult", "PairState", "PairSums", "StopOn", "condorcet_winner",
           "evaluate_preferences", "holm_adjust_many", "preference_kernel", "preference_test",
           "ranker_pairs", "rho2_for_units", "unit_preferences"]


# ---------------------------------------------------------------------------------------------
# One pair, one look


@dataclass(frozen=True)
class InterleavingConfig:
    """How the interleaving experiment is tested.

    alpha: family-wise error over the pairs; planned_units: the units the scale-free tau² is
    tuned for (the boundary is tightest there; valid before and after); tau2: a fixed tau²
    instead (in units of the preference squared); min_units: looks before this many units
    carry no evidence; aggregate: a unit's preference is the mean (default) or the sum of its
    impressions' outcomes; stop_on: ``condorcet`` (stop when one ranker is decided better
    than every other, or every pair is decided), ``all_pairs`` (when every pair is decided)
    or ``never`` (monitor only).
    """

    alpha: float = 0.05
    planned_units: int = 1000
    tau2: float | None = None
    min_units: int = 30
    aggregate: Aggregate = "mean"
    stop_on: StopOn = "condorcet"

    def __post_init__(self) -> None:
        if not (0.0 < self.alpha < 1.0):
            raise StatsError(f"alpha must lie in (0, 1), got {self.alpha!r}")
        if self.planned_units < 1:
            raise StatsError(f"planned_units must be >= 1, got {self.planned_units!r}")
        if self.tau2 is not None and not (self.tau2 > 0 and math.isfinite(self.tau2)):
            raise StatsError(f"tau2 must be positive and finite, got {self.tau2!r}")
        if self.min_units < 2:
            raise StatsError(f"min_units must be >= 2, got {self.min_units!r}")
        if self.aggregate not in ("mean", "sum"):
            raise StatsError(f"aggregate must be 'mean' or 'sum', got {self.aggregate!r}")
        if self.stop_on not in ("condorcet", "all_pairs", "never"):
            raise StatsError(f"stop_on must be condorcet, all_pairs or never, got "
                             f"{self.stop_on!r}")

    @cached_property
    def rho2(self) -> float:
        """rho² of the scale-free tau² (:func:`rho2_for_units`)."""
        return rho2_for_units(self.planned_units, self.alpha)


def preference_test(
    sums: PairSums,
    *,
    config: InterleavingConfig | None = None,
    alpha: float | None = None,
    state: MsprtState | None = None,
) -> MsprtResult:
    """One look of the always-valid test of one pair's mean preference (H0: 0).

    ``alpha`` sets the level of the confidence interval (default ``config.alpha``; the
    experiment-level :func:`evaluate_preferences` passes alpha / pairs); the p-value does
    not depend on it. Returns :class:`armlab.core.stats.msprt.MsprtResult` (estimate = mean
    preference of the first ranker over the second; running p and confidence sequence).
    """
    cfg = config or InterleavingConfig()
    d, v, t2, _, ok = preference_kernel(sums.n, sums.total, sums.sumsq, rho2=cfg.rho2,
                                        tau2=cfg.tau2, min_units=cfg.min_units)
    enough_units = sums.n >= max(cfg.min_units, 2)
    tau2 = float(t2) if bool(ok) else (cfg.tau2 or 1.0)  # unused when the look is void
    res = mixture_test(float(d), float(v) if bool(ok) else 0.0, tau2=tau2,
                       alpha=cfg.alpha if alpha is None else alpha, state=state,
                       enough_samples=enough_units)
    if not enough_units:
        res = replace(res, reason=f"fewer than {cfg.min_units} units")
    return res


# ---------------------------------------------------------------------------------------------
# All pairs: Holm, decisions, Condorcet winner, stopping


Decision = Literal["a_better", "b_better", "undecided"]


@dataclass(frozen=True)
class PairState:
    """What one pair carries from look to look: the test's running state, the direction at
    its running-minimum p (+1: a ahead, -1: b ahead, 0: none yet) and its decision."""

    msprt: MsprtState = field(default_factory=MsprtState)
    direction: int = 0
    decision: Decision = "undecided"


@dataclass(frozen=True)
class InterleavingState:
    """Resumable state of an interleaving experiment's test (store it with the evaluation).

    ``frozen`` holds the result at which the experiment stopped; while it is set, further
    looks return it unchanged (with this state).
    """

    pairs: Mapping[Pair, PairState] = field(default_factory=dict)
    looks: int = 0
    frozen: InterleavingResult | None = None


@dataclass(frozen=True)
class PairResult:
    """One pair at one look. estimate: mean preference of ``a`` over ``b`` per unit (credit
    difference); ci_low/ci_high: running confidence sequence at ``cs_alpha`` (simultaneous
    over pairs); p_value: running always-valid p; p_adjusted: Holm over pairs; decision and
    ``winner`` (the ranker decided better, or None)."""

    a: str
    b: str
    n_units: float
    estimate: float
    ci_low: float
    ci_high: float
    p_value: float
    p_adjusted: float
    decision: Decision
    winner: str | None
    valid: bool
    reason: str
    test: MsprtResult


@dataclass(frozen=True)
class InterleavingResult:
    """All pairs at one look, the Condorcet winner if one is decided, and whether to stop."""

    rankers: tuple[str, ...]
    pairs: tuple[PairResult, ...]
    condorcet_winner: str | None
    stop: bool
    stop_reason: str
    alpha: float
    cs_alpha: float
    looks: int
    state: InterleavingState

    def pair(self, a: str, b: str) -> PairResult:
        for p in self.pairs:
            if (p.a, p.b) == (a, b) or (p.a, p.b) == (b, a):
                return p
        raise StatsError(f"no pair ({a}, {b}) among {self.rankers}")


def ranker_pairs(rankers: Sequence[str]) -> list[Pair]:
    """The pairs (a, b), a before b in ``rankers``: the order of results and sums."""
    return list(combinations([str(r) for r in rankers], 2))


def condorcet_winner(rankers: Sequence[str], winners: Mapping[Pair, str | None]) -> str | None:
    """The ranker decided better than every other ranker, if any (at most one exists)."""
    for r in rankers:
        others = [o for o in rankers if o != r]
        if others and all(winners.get((r, o), winners.get((o, r))) == r for o in others):
            return r
    return None


def _pair_results(pairs: Sequence[Pair], tests: Sequence[MsprtResult],
                  prev_states: Sequence[PairState], adjusted: Sequence[float],
                  sums: Mapping[Pair, PairSums], alpha: float
                  ) -> tuple[list[PairResult], dict[Pair, PairState]]:
    """Each pair's result and next state: its direction at the running-minimum p, its
    decision once its Holm-adjusted p is <= alpha (never flipped afterwards)."""
    out: list[PairResult] = []
    new_states: dict[Pair, PairState] = {}
    for (a, b), t, ps, p_adj in zip(pairs, tests, prev_states, adjusted, strict=True):
        direction = ps.direction
        if t.valid and t.p_now < ps.msprt.p_value and t.estimate != 0.0:
            direction = 1 if t.estimate > 0 else -1
        decision: Decision = ps.decision
        if decision == "undecided" and p_adj <= alpha and direction != 0:
            decision = "a_better" if direction > 0 else "b_better"
        winner = a if decision == "a_better" else b if decision == "b_better" else None
        reason = (f"Holm-adjusted always-valid p {p_adj:.4g} <= alpha {alpha}"
                  if winner else (t.reason or "evidence not conclusive"))
        n_units = sums.get((a, b), PairSums()).n
        out.append(PairResult(a, b, n_units, t.estimate, t.ci_low, t.ci_high, t.p_value,
                              p_adj, decision, winner, t.valid, reason, t))
        new_states[(a, b)] = PairState(t.state, direction, decision)
    return out, new_states


def evaluate_preferences(
    rankers: Sequence[str],
    sums: Mapping[Pair, PairSums],
    *,
    config: InterleavingConfig | None = None,
    state: InterleavingState | None = None,
) -> InterleavingResult:
    """One look at every pair of an interleaving experiment (see the module doc).

    sums: per pair (a, b) with a before b in ``rankers``, the :class:`PairSums` of the units
    so far (a missing pair has no units yet). Pass the previous result's ``state`` to keep
    the running p-values, confidence sequences, directions and the freeze at stop.
    """
    cfg = config or InterleavingConfig()
    keys = tuple(str(r) for r in rankers)
    if len(set(keys)) != len(keys) or len(keys) < 2:
        raise StatsError(f"need two or more distinct rankers, got {list(keys)!r}")
    st = state or InterleavingState()
    if st.frozen is not None:
        return replace(st.frozen, state=st)
    pairs = ranker_pairs(keys)
    unknown = [p for p in sums if tuple(p) not in pairs]
    if unknown:
        raise StatsError(f"sums name pairs that are not (a, b) with a before b in the rankers: "
                         f"{unknown!r}")
    cs_alpha = cfg.alpha / len(pairs)
    tests: list[MsprtResult] = []
    prev_states: list[PairState] = []
    for p in pairs:
        ps = st.pairs.get(p, PairState())
        prev_states.append(ps)
        tests.append(preference_test(sums.get(p, PairSums()), config=cfg, alpha=cs_alpha,
                                     state=ps.msprt))
    adjusted = holm_adjust([t.p_value for t in tests])
    out, new_states = _pair_results(pairs, tests, prev_states, adjusted, sums, cfg.alpha)
    winners = {(r.a, r.b): r.winner for r in out}
    cw = condorcet_winner(keys, winners)
    all_decided = all(r.decision != "undecided" for r in out)
    stop, why = False, ""
    if cfg.stop_on == "condorcet" and cw is not None:
        stop, why = True, f"Condorcet winner: {cw} is decided better than every other ranker"
    elif cfg.stop_on in ("condorcet", "all_pairs") and all_decided:
        stop, why = True, "every pair is decided"
    looks = st.looks + 1
    result = InterleavingResult(keys, tuple(out), cw, stop, why, cfg.alpha, cs_alpha, looks,
                                InterleavingState(new_states, looks))
    if stop:
        result = replace(result, state=InterleavingState(new_states, looks, frozen=result))
    return result
