"""Team-draft interleaving (two rankers) and team-draft multileaving (three or more).

References: Radlinski, Kurup & Joachims, "How does clickthrough data reflect retrieval
quality?", CIKM 2008 (team-draft interleaving, TDI); Schuth, Sietsma, Whiteson, Lefortier &
de Rijke, "Multileaved comparisons for fast online evaluation", CIKM 2014 (team-draft
multileaving, TDM); Chapelle, Joachims, Radlinski & Yue, "Large-scale validation and analysis
of interleaved search evaluation", ACM TOIS 30(1), 2012 (the credit and its aggregation).

The draft
---------
The merged list is built in *rounds*. At the start of every round the rankers taking part are
put in a uniformly random order (the *draft order* of that round, drawn per request); each in
turn adds its highest-ranked item that is not in the merged list yet, and that item joins the
ranker's *team*. A ranker whose list has no unseen item left is skipped; the others keep
drafting, so the merged list reaches ``min(k, |union of the lists|)`` items. For two rankers
this is TDI exactly (Radlinski et al. 2008, Algorithm: "if |Team A| < |Team B| or (equal and
a coin says A) then A picks"): every round starts with equal teams and a fair coin picks who
drafts first. For r rankers it is TDM (Schuth et al. 2014, Algorithm 1: the next pick goes to
a team of minimal size chosen at random), whose rounds are random permutations.

Properties (tested): every shown item comes from some ranker's list; no item is shown twice
(duplicates across rankers are drafted once, by whoever reaches them first; duplicates
inside one list are ignored); at most k items; as long as every ranker still has unseen
items, team sizes differ by at most one. Rankers whose lists are identical are exchangeable
under the draft (a uniformly random permutation per round), so any click model that depends
only on the shown list gives their credit difference mean exactly 0.

Credit
------
A click on a shown item is credited to the team that placed it. Per impression, each ranker's
credit is its team's number of clicks and, for every pair (a, b) of rankers in the list, the
pair's outcome is ``credit_a - credit_b`` (Chapelle et al. 2012 aggregate this difference, or
its sign, per query; :mod:`armlab.core.stats.interleaving` aggregates it per unit).

What to log per impression (:meth:`Interleaving.as_log`): the rankers, k, the shown items with
each item's position, team and rank in the team's list, and the draft order. With the
rankers' lists, the draft order reproduces the merged list exactly (:func:`team_draft` with
``draft=``); with the clicks, the credit (:func:`credit`).

Two layers: :func:`team_draft_kernel` and :func:`team_credit_kernel` work on integer arrays,
vectorised over many requests (the Monte Carlo simulator runs them); :func:`team_draft` and
:func:`credit` are the per-request API on item ids, built on the same kernels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from armlab.errors import ValidationFailed

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
Method = Literal["team_draft", "team_draft_multileave"]


# ---------------------------------------------------------------------------------------------
# Vectorised kernels


def draw_orders(rng: np.random.Generator, n: int, rounds: int, rankers: int) -> IntArray:
    """(n, rounds, rankers) draft orders: an independent uniform permutation per round."""
    return np.asarray(rng.random((n, rounds, rankers)).argsort(axis=2), dtype=np.int64)


def _checked_draft(lists: IntArray, order: IntArray, k: int, n_items: int | None
                   ) -> tuple[IntArray, IntArray, int]:
    """The kernel's inputs as int64 arrays, checked (ValidationFailed naming the field), and
    the item-code range (from the lists when not given)."""
    lists = np.asarray(lists, dtype=np.int64)
    order = np.asarray(order, dtype=np.int64)
    if lists.ndim != 3 or order.ndim != 3 or order.shape[0] != lists.shape[0]:
        raise ValidationFailed("lists must be (B, r, L) and order (B, R, s) with the same B",
                               field="lists")
    if k < 1:
        raise ValidationFailed(f"k must be >= 1, got {k}", field="k")
    if order.size and (order.max() >= lists.shape[1] or order.min() < -1):
        raise ValidationFailed("draft order names a ranker that has no list", field="draft")
    if n_items is None:
        n_items = int(lists.max()) + 1 if lists.size else 1
    return lists, order, n_items


def team_draft_kernel(
    lists: IntArray,
    order: IntArray,
    k: int,
    n_items: int | None = None,
) -> tuple[IntArray, IntArray, IntArray, IntArray]:
    """Team-draft merge of many requests at once.

    lists: (B, r, L) item codes in [0, n_items), ranker by ranker, best first; -1 pads a
    short list. order: (B, R, s) the draft order, per round the rankers (indices into the
    r of ``lists``) in the order they pick; -1 leaves a slot empty (a ranker not taking part,
    e.g. one the dueling bandit left out). k: the merged list's length.

    Returns (shown, team, source_rank, rounds_used): shown (B, k) item codes (-1 past the
    end), team (B, k) the ranker that placed each, source_rank (B, k) each item's rank in
    that ranker's list, rounds_used (B,) the rounds that drafted at least one item.
    """
    lists, order, n_items = _checked_draft(lists, order, k, n_items)
    b = lists.shape[0]
    shown = np.full((b, k), -1, dtype=np.int64)
    team = np.full((b, k), -1, dtype=np.int64)
    src = np.full((b, k), -1, dtype=np.int64)
    used = np.zeros(b, dtype=np.int64)
    seen = np.zeros((b, max(n_items, 1)), dtype=bool)
    filled = np.zeros(b, dtype=np.int64)
    live = np.ones(b, dtype=bool)  # not full and not exhausted
    for rd in range(order.shape[1]):
        picked_round = np.zeros(b, dtype=bool)
        for slot in range(order.shape[2]):
            t = order[:, rd, slot]
            rows = np.flatnonzero(live & (filled < k) & (t >= 0))
            if rows.size == 0:
                continue
            tt = t[rows]
            cand = lists[rows, tt]  # (n, L)
            valid = cand >= 0
            unseen = valid & ~seen[rows[:, None], np.where(valid, cand, 0)]
            has = unseen.any(axis=1)
            if not has.any():
                continue
            rows, tt, cand, unseen = rows[has], tt[has], cand[has], unseen[has]
            first = unseen.argmax(axis=1)
            item = cand[np.arange(rows.size), first]
            pos = filled[rows]
            shown[rows, pos] = item
            team[rows, pos] = tt
            src[rows, pos] = first
            seen[rows, item] = True
            filled[rows] += 1
            picked_round[rows] = True
        used += picked_round
        live &= picked_round & (filled < k)
        if not live.any():
            break
    return shown, team, src, used


def team_credit_kernel(team: IntArray, clicks: npt.ArrayLike, rankers: int) -> FloatArray:
    """(B, r) credit per ranker: the clicks (or click weights) on the items its team placed.

    team: (B, k) from :func:`team_draft_kernel` (-1 = no item); clicks: (B, k) booleans or
    weights per position.
    """
    c = np.asarray(clicks, dtype=np.float64)
    t = np.asarray(team, dtype=np.int64)
    if c.shape != t.shape:
        raise ValidationFailed(f"clicks {c.shape} and team {t.shape} must have one shape",
                               field="clicks")
    onehot = t[:, :, None] == np.arange(rankers)[None, None, :]
    return np.asarray((onehot * c[:, :, None]).sum(axis=1), dtype=np.float64)


def pair_indices(rankers: int) -> list[tuple[int, int]]:
    """The pairs (i, j), i < j, in lexicographic order: the column order of pair arrays."""
    return list(combinations(range(rankers), 2))


def pair_differences(credits: FloatArray, rankers: int | None = None) -> FloatArray:
    """(B, P) credit_i - credit_j for every pair i < j (:func:`pair_indices` order)."""
    c = np.asarray(credits, dtype=np.float64)
    pairs = pair_indices(c.shape[1] if rankers is None else rankers)
    if not pairs:
        return np.zeros((c.shape[0], 0))
    i, j = (np.asarray(x) for x in zip(*pairs, strict=True))
    return np.asarray(c[:, i] - c[:, j], dtype=np.float64)


def pair_compared(order: IntArray, rankers: int) -> BoolArray:
    """(B, P) whether both rankers of each pair took part in the draft (appear in ``order``)."""
    o = np.asarray(order, dtype=np.int64).reshape(order.shape[0], -1)
    part = (o[:, :, None] == np.arange(rankers)[None, None, :]).any(axis=1)
    pairs = pair_indices(rankers)
    if not pairs:
        return np.zeros((o.shape[0], 0), dtype=bool)
    i, j = (np.asarray(x) for x in zip(*pairs, strict=True))
    return np.asarray(part[:, i] & part[:, j], dtype=bool)


# ---------------------------------------------------------------------------------------------
# Per-request API


@dataclass(frozen=True)
class ShownItem:
    """One item of the merged list: its 0-based ``position``, the ``team`` (ranker key) that
    placed it and ``source_rank``, its 0-based rank in that ranker's list."""

    item_id: str
    position: int
    team: str
    source_rank: int


@dataclass(frozen=True)
class Interleaving:
    """A merged list with its teams and the draft order that produced it.

    rankers: the keys of the rankers that took part, in the order given (the draft order
    refers to them by index); items: the merged list; draft: per round, the indices of the
    rankers in the order they drafted (only rounds that drafted an item); method:
    ``team_draft`` for two rankers, ``team_draft_multileave`` for more.
    """

    rankers: tuple[str, ...]
    items: tuple[ShownItem, ...]
    draft: tuple[tuple[int, ...], ...]
    k: int
    method: Method

    @property
    def item_ids(self) -> list[str]:
        return [it.item_id for it in self.items]

    @property
    def teams(self) -> list[str]:
        """The team of each position."""
        return [it.team for it in self.items]

    def team_sizes(self) -> dict[str, int]:
        sizes = dict.fromkeys(self.rankers, 0)
        for it in self.items:
            sizes[it.team] += 1
        return sizes

    def as_log(self) -> dict[str, Any]:
        """What to log with the impression: enough to replay the merge and credit clicks."""
        return {
            "method": self.method,
            "k": self.k,
            "rankers": list(self.rankers),
            "items": [{"item_id": it.item_id, "position": it.position, "team": it.team,
                       "source_rank": it.source_rank} for it in self.items],
            "draft": [[self.rankers[i] for i in rnd] for rnd in self.draft],
        }


def _dedupe(items: Sequence[Any]) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for it in items:
        s = str(it)
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def team_draft(
    rankings: Mapping[str, Sequence[Any]],
    k: int,
    *,
    rng: np.random.Generator | None = None,
    draft: Sequence[Sequence[int]] | None = None,
) -> Interleaving:
    """Merge the rankers' ranked item lists by team draft (two) or team-draft multileaving.

    rankings: ranker key -> its ranked item ids, best first (any length, may overlap the
    others'; an id repeated within one list counts once). k: the merged length.
    rng: draws the draft order (one random permutation of the rankers per round); or
    ``draft``: the order to use instead, as logged by :meth:`Interleaving.as_log` but with
    ranker indices (replay), which must have enough rounds to finish the list.
    """
    keys = [str(x) for x in rankings]
    if len(keys) < 2:
        raise ValidationFailed(f"team draft needs two or more rankers, got {keys!r}",
                               field="rankings")
    if k < 1:
        raise ValidationFailed(f"k must be >= 1, got {k}", field="k")
    lists = [_dedupe(rankings[key]) for key in rankings]
    r = len(keys)
    vocab: dict[str, int] = {}
    for lst in lists:
        for it in lst:
            vocab.setdefault(it, len(vocab))
    names = list(vocab)
    width = max((len(lst) for lst in lists), default=0)
    arr = np.full((1, r, max(width, 1)), -1, dtype=np.int64)
    for i, lst in enumerate(lists):
        arr[0, i, : len(lst)] = [vocab[it] for it in lst]
    if draft is not None:
        rounds = [tuple(int(x) for x in rnd) for rnd in draft]
        if any(sorted(rnd) != list(range(r)) for rnd in rounds):
            raise ValidationFailed(f"every round of the draft must order all {r} rankers "
                                   f"(indices 0..{r - 1}), got {rounds!r}", field="draft")
        order = np.asarray(rounds, dtype=np.int64).reshape(1, len(rounds), r)
    else:
        gen = rng if rng is not None else np.random.default_rng()
        order = draw_orders(gen, 1, k, r)
    shown, team, src, used = team_draft_kernel(arr, order, k, n_items=len(vocab))
    n_shown = int((shown[0] >= 0).sum())
    if draft is not None and n_shown < min(k, len(vocab)):
        raise ValidationFailed(f"the draft has too few rounds ({len(rounds)}) to fill the list",
                               field="draft")
    items = tuple(ShownItem(names[int(shown[0, p])], p, keys[int(team[0, p])], int(src[0, p]))
                  for p in range(n_shown))
    rounds_used = tuple(tuple(int(x) for x in order[0, i]) for i in range(int(used[0])))
    return Interleaving(tuple(keys), items, rounds_used, k,
                        "team_draft" if r == 2 else "team_draft_multileave")


@dataclass(frozen=True)
class Credit:
    """The clicks of one impression credited to the teams.

    credits: ranker key -> clicks on its team's items; pairs: (a, b) -> credit_a - credit_b
    for every pair with a before b in ``rankers`` (the team-draft outcome of the impression);
    clicks: clicks on shown items (each item counted once); unmatched: clicked ids that were
    not shown (ignored).
    """

    rankers: tuple[str, ...]
    credits: dict[str, float]
    pairs: dict[tuple[str, str], float]
    clicks: int
    unmatched: tuple[str, ...] = ()

    def outcome(self, a: str, b: str) -> int:
        """+1 when a's team got more clicks than b's, -1 when fewer, 0 on a tie."""
        d = self.pairs[(a, b)] if (a, b) in self.pairs else -self.pairs[(b, a)]
        return int(math.copysign(1, d)) if d != 0 else 0


def credit(
    interleaving: Interleaving,
    clicked_items: Iterable[Any] = (),
    clicked_positions: Iterable[int] = (),
) -> Credit:
    """Credit clicks (by item id and/or 0-based position) to the teams of an impression."""
    pos_of = {it.item_id: it.position for it in interleaving.items}
    n = len(interleaving.items)
    hit: set[int] = set()
    unmatched: list[str] = []
    for item in clicked_items:
        p = pos_of.get(str(item))
        if p is None:
            unmatched.append(str(item))
        else:
            hit.add(p)
    for p in clicked_positions:
        if not (0 <= int(p) < n):
            raise ValidationFailed(f"clicked position {p} is outside the shown list (0..{n - 1})",
                                   field="clicked_positions")
        hit.add(int(p))
    idx = {key: i for i, key in enumerate(interleaving.rankers)}
    r = len(interleaving.rankers)
    team = np.asarray([[idx[it.team] for it in interleaving.items]], dtype=np.int64)
    clicks = np.asarray([[p in hit for p in range(n)]], dtype=np.float64)
    cred = team_credit_kernel(team.reshape(1, n), clicks.reshape(1, n), r)[0]
    diffs = pair_differences(cred[None, :], r)[0]
    keys = interleaving.rankers
    pairs = {(keys[i], keys[j]): float(diffs[c]) for c, (i, j) in enumerate(pair_indices(r))}
    return Credit(keys, {key: float(cred[i]) for i, key in enumerate(keys)}, pairs, len(hit),
                  tuple(unmatched))
