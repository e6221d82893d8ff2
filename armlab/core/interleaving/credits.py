"""How the consumer handles the events of an interleaving experiment (``design: interleaving``):
which impressions it refuses, the state it keeps per interleaved impression, and how a click
is credited to the team (ranker) that placed the clicked item. Pure; called by
:mod:`armlab.core.event_effects`, which owns the batch (dedupe, locks, windows, ledger).

Refusals (dead-letter reasons) of an impression: ``not_interleaved`` (an interleaving
experiment's impression without ``interleaving``), ``unexpected_interleaving`` (an A/B
experiment's impression with it), ``unknown_arm`` (a ranker that is not an arm),
``bad_interleaving`` (a compared pair without a positive propensity, an item shown twice).
Refusals of reward-metric feedback: ``missing_item`` (no ``item_id``), ``item_not_shown``
(``str(item_id)`` is not one of the shown items).

A valid interleaved impression adds nothing to the A/B statistics. Its unit of analysis is
the impression's ``unit_id`` (``unit: user``) or the impression id (``unit: request``); it adds
1 to ``interleaving_units[(exp, unit)]`` and to the ``compared`` tally of every pair of its
rankers (a before b in the experiment's arm order). Its state (``ImpressionState.interleaving``,
stored in ``impressions.interleaving``) is ``{"unit", "teams": {item: ranker}, "pairs":
[[a, b, P(compared)], ...], "clicks": {ranker: credited clicks}, "credited": [items]}``.

A click (reward-metric feedback with a value > 0) on a shown item not yet credited credits
the item's team t once: for every stored pair (a, b, p) with t in it, the unit's credit
difference moves by +1/p (t = a) or -1/p (t = b), the team's click tally by 1 and the pair's
win tallies by the change of its outcome sign(clicks_a - clicks_b) (a win can become a tie).
"""

from __future__ import annotations

from typing import Any

from armlab.core.event_records import Effects, ExperimentInfo, ImpressionState
from armlab.core.events import ImpressionV1

INTERLEAVING = "interleaving"
# a pair's tallies in Effects.interleaving_pairs / the interleaving_pairs table
COMPARED, A_WINS, B_WINS, A_CLICKS, B_CLICKS = range(5)

Refusal = tuple[str, str]  # (dead-letter reason, detail)


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def ordered_rankers(exp: ExperimentInfo, rankers: list[str]) -> list[str]:
    """``rankers`` in the experiment's arm order (unknown ones last, as given)."""
    pos = {key: i for i, key in enumerate(exp.rankers)}
    return sorted(rankers, key=lambda r: pos.get(r, len(pos)))


def compared_pairs(exp: ExperimentInfo, ev: ImpressionV1) -> list[list[Any]]:
    """[[a, b, P(compared)], ...] for every pair of the impression's rankers, a before b in
    the experiment's arm order (a propensity of 0: a pair the log left out)."""
    assert ev.interleaving is not None
    il = ev.interleaving
    keys = ordered_rankers(exp, list(il.rankers))
    return [[a, b, il.pair_propensity(a, b)]
            for i, a in enumerate(keys) for b in keys[i + 1:]]


def impression_refusal(exp: ExperimentInfo, ev: ImpressionV1) -> Refusal | None:
    """Why ``ev`` cannot be an impression of ``exp`` as far as its design goes (None: it
    can). Checked after the experiment and ``arm_key`` are known."""
    il = ev.interleaving
    if exp.design != INTERLEAVING:
        if il is not None:
            return ("unexpected_interleaving",
                    f"experiment {exp.key!r} is an A/B experiment (design {exp.design!r}) "
                    "but the impression carries an interleaving log")
        return None
    if il is None:
        return ("not_interleaved",
                f"experiment {exp.key!r} is an interleaving experiment but the impression "
                "carries no interleaving log")
    unknown = sorted({*il.rankers, *il.teams} - exp.arms)
    if unknown:
        return ("unknown_arm", f"rankers {unknown} are not arms of {exp.key!r} "
                f"({sorted(exp.arms)})")
    shown = [str(item) for item in ev.items]
    if len(set(shown)) != len(shown):
        return ("bad_interleaving", "an item is shown twice (items compared as strings)")
    for a, b, p in compared_pairs(exp, ev):
        if not p > 0:
            return ("bad_interleaving", f"interleaving.pairs: the compared pair ({a}, {b}) "
                    "has no positive propensity (a logged pair list must name every pair of "
                    "the rankers)")
    return None


def start_impression(exp: ExperimentInfo, imp: ImpressionState, ev: ImpressionV1,
                     fx: Effects) -> None:
    """A new valid interleaved impression: its state on ``imp``, its unit and its compared
    pairs into ``fx`` (sharded by ``imp.partition``)."""
    assert ev.interleaving is not None
    unit = ev.unit_id if exp.unit == "user" else ev.impression_id
    pairs = compared_pairs(exp, ev)
    imp.interleaving = {
        "unit": unit,
        "teams": {str(item): team for item, team in
                  zip(ev.items, ev.interleaving.teams, strict=True)},
        "pairs": pairs,
        "clicks": {},
        "credited": [],
    }
    fx.interleaving_units[(exp.id, unit)] += 1
    for a, b, _ in pairs:
        _tally(fx, exp.id, a, b, imp.partition)[COMPARED] += 1


def _tally(fx: Effects, exp_id: int, a: str, b: str, partition: int) -> list[int]:
    key = (exp_id, a, b, partition)
    row = fx.interleaving_pairs.get(key)
    if row is None:
        row = fx.interleaving_pairs[key] = [0, 0, 0, 0, 0]
    return row


def feedback_refusal(exp: ExperimentInfo, imp: ImpressionState, kind: str,
                     item_id: str | int | None) -> Refusal | None:
    """Why feedback on the interleaved impression ``imp`` is dead-lettered (None: it is
    applied). Only reward-metric feedback must name a shown item."""
    if kind != exp.reward_metric:
        return None
    state = imp.interleaving
    assert state is not None
    if item_id is None:
        return ("missing_item", f"{kind!r} feedback on interleaved impression "
                f"{imp.impression_id!r} names no item_id (needed to credit a ranker)")
    if str(item_id) not in state["teams"]:
        return ("item_not_shown", f"item {str(item_id)!r} was not shown in impression "
                f"{imp.impression_id!r}")
    return None


def credit_click(exp: ExperimentInfo, imp: ImpressionState, kind: str, value: float,
                 item_id: str | int | None, partition: int, fx: Effects) -> bool:
    """Credit one applied feedback (already past :func:`feedback_refusal`) to the team of its
    item. True when it changed the impression's state (a first click on the item)."""
    state = imp.interleaving
    assert state is not None
    if kind != exp.reward_metric or not value > 0:
        return False
    item = str(item_id)
    if item in state["credited"]:
        return False  # each shown item is credited at most once
    team = state["teams"][item]
    clicks: dict[str, int] = state["clicks"]
    unit = str(state["unit"])
    for a, b, p in state["pairs"]:
        if team not in (a, b):
            continue
        before = _sign(clicks.get(a, 0) - clicks.get(b, 0))
        after = _sign(clicks.get(a, 0) - clicks.get(b, 0) + (1 if team == a else -1))
        key = (exp.id, unit, a, b)
        fx.interleaving_credits[key] = (fx.interleaving_credits.get(key, 0.0)
                                        + (1.0 if team == a else -1.0) / float(p))
        row = _tally(fx, exp.id, a, b, partition)
        row[A_WINS] += (after > 0) - (before > 0)
        row[B_WINS] += (after < 0) - (before < 0)
        row[A_CLICKS if team == a else B_CLICKS] += 1
    clicks[team] = clicks.get(team, 0) + 1
    state["credited"].append(item)
    return True
