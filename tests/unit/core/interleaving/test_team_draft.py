"""Team-draft interleaving and multileaving: exact probabilities on tiny examples (by
enumerating every draft order), the draft rules, credit edge cases, and properties."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from armlab.core.interleaving import (
    credit,
    draw_orders,
    pair_compared,
    pair_differences,
    pair_indices,
    team_credit_kernel,
    team_draft,
    team_draft_kernel,
)
from armlab.errors import ValidationFailed


def all_drafts(r: int, rounds: int) -> list[tuple[tuple[int, ...], ...]]:
    """Every draft order (one permutation per round), each of probability 1/(r!)^rounds."""
    perms = list(itertools.permutations(range(r)))
    return list(itertools.product(perms, repeat=rounds))


def distribution(rankings: dict[str, list[str]], k: int, rounds: int
                 ) -> dict[tuple[tuple[str, str], ...], Fraction]:
    """Exact distribution of (item, team) lists over the uniformly random draft."""
    drafts = all_drafts(len(rankings), rounds)
    out: Counter[tuple[tuple[str, str], ...]] = Counter()
    for d in drafts:
        il = team_draft(rankings, k, draft=d)
        out[tuple((it.item_id, it.team) for it in il.items)] += 1
    return {key: Fraction(n, len(drafts)) for key, n in out.items()}


def test_two_rankers_exact_probabilities() -> None:
    # Round 1: a fair coin says who drafts first; A takes a, B takes b (either order).
    # Round 2: the first drafter of the round takes the last slot: c (A) or d (B).
    dist = distribution({"A": ["a", "b", "c"], "B": ["b", "a", "d"]}, 3, rounds=2)
    q = Fraction(1, 4)
    assert dist == {
        (("a", "A"), ("b", "B"), ("c", "A")): q,
        (("a", "A"), ("b", "B"), ("d", "B")): q,
        (("b", "B"), ("a", "A"), ("c", "A")): q,
        (("b", "B"), ("a", "A"), ("d", "B")): q,
    }


def test_taken_top_item_drafts_the_next_unseen_one() -> None:
    # B's top item a is taken by A, so B drafts its next one, b; A then skips b for c.
    il = team_draft({"A": ["a", "b", "c"], "B": ["a", "b", "d"]}, 4, draft=[(0, 1), (0, 1)])
    assert [(it.item_id, it.team, it.source_rank) for it in il.items] == [
        ("a", "A", 0), ("b", "B", 1), ("c", "A", 2), ("d", "B", 2)]
    assert il.method == "team_draft" and il.team_sizes() == {"A": 2, "B": 2}


def test_random_clicks_give_equal_expected_credit() -> None:
    """Clicks that depend on positions only (any probabilities per position): each team's
    expected credit is the same, exactly, for two different full-length rankers."""
    rankings = {"A": ["a", "b", "c", "d"], "B": ["d", "c", "e", "f"]}
    ctr = [Fraction(1, 2), Fraction(1, 3), Fraction(1, 5), Fraction(1, 7)]
    drafts = all_drafts(2, 2)
    expected = dict.fromkeys(rankings, Fraction(0))
    for d in drafts:
        il = team_draft(rankings, 4, draft=d)
        for it in il.items:
            expected[it.team] += ctr[it.position] / len(drafts)
    assert expected["A"] == expected["B"] == sum(ctr) / 2


@pytest.mark.parametrize("r", [2, 3, 4])
def test_identical_rankers_are_exactly_exchangeable(r: int) -> None:
    """Identical lists: the merged list is that list and every position belongs to each
    team with probability exactly 1/r, so any click model on the shown list gives every
    pair a credit difference of mean exactly 0."""
    lst = ["a", "b", "c", "d", "e"]
    rankings = {f"R{i}": lst for i in range(r)}
    k = 5
    rounds = math.ceil(k / r)
    drafts = all_drafts(r, rounds)
    team_at = Counter()
    for d in drafts:
        il = team_draft(rankings, k, draft=d)
        assert il.item_ids == lst
        for it in il.items:
            team_at[(it.position, it.team)] += 1
    for pos in range(k):
        for key in rankings:
            assert Fraction(team_at[(pos, key)], len(drafts)) == Fraction(1, r)


def test_multileave_rounds_give_every_ranker_one_pick() -> None:
    il = team_draft({"A": ["a", "x"], "B": ["b", "y"], "C": ["c", "z"]}, 6,
                    draft=[(2, 0, 1), (1, 2, 0)])
    assert il.teams == ["C", "A", "B", "B", "C", "A"]
    assert il.item_ids == ["c", "a", "b", "y", "z", "x"]
    assert il.method == "team_draft_multileave"
    assert il.draft == ((2, 0, 1), (1, 2, 0))


def test_duplicates_short_lists_and_k_beyond_the_union() -> None:
    # duplicates inside a list count once; the union has 3 items, so k = 10 shows 3
    il = team_draft({"A": ["a", "a", "b"], "B": ["b", "c", "b"]}, 10,
                    rng=np.random.default_rng(0))
    assert sorted(il.item_ids) == ["a", "b", "c"] and len(il.items) == 3
    # an exhausted ranker is skipped; the other keeps drafting
    il = team_draft({"A": [], "B": ["x", "y", "z"]}, 2, draft=[(0, 1), (0, 1)])
    assert il.item_ids == ["x", "y"] and il.teams == ["B", "B"]
    # both lists empty: nothing to show
    assert team_draft({"A": [], "B": []}, 3, rng=np.random.default_rng(1)).items == ()


def test_replaying_the_logged_draft_reproduces_the_list() -> None:
    rankings = {"A": list("abcdef"), "B": list("fedcba"), "C": list("acegik")}
    il = team_draft(rankings, 7, rng=np.random.default_rng(3))
    again = team_draft(rankings, 7, draft=il.draft)
    assert again == il
    log = il.as_log()
    assert log["rankers"] == ["A", "B", "C"] and log["k"] == 7
    assert [x["item_id"] for x in log["items"]] == il.item_ids
    assert all(sorted(rnd) == ["A", "B", "C"] for rnd in log["draft"])
    with pytest.raises(ValidationFailed, match="too few rounds"):
        team_draft(rankings, 7, draft=il.draft[:1])
    with pytest.raises(ValidationFailed, match="every round"):
        team_draft(rankings, 7, draft=[(0, 0, 1)])
    with pytest.raises(ValidationFailed, match="k must be"):
        team_draft(rankings, 0, rng=np.random.default_rng(0))
    with pytest.raises(ValidationFailed, match="two or more rankers"):
        team_draft({"A": ["a"]}, 3, rng=np.random.default_rng(0))


def test_credit_by_item_and_position() -> None:
    il = team_draft({"A": ["a", "b"], "B": ["c", "d"], "C": ["e", "f"]}, 6,
                    draft=[(0, 1, 2), (2, 1, 0)])
    assert il.item_ids == ["a", "c", "e", "f", "d", "b"]
    # a (A) clicked by id and again by position (counted once); f (C) by position; an id
    # that was not shown is reported and ignored
    c = credit(il, clicked_items=["a", "zz"], clicked_positions=[0, 3])
    assert c.credits == {"A": 1.0, "B": 0.0, "C": 1.0}
    assert c.pairs == {("A", "B"): 1.0, ("A", "C"): 0.0, ("B", "C"): -1.0}
    assert c.clicks == 2 and c.unmatched == ("zz",)
    assert c.outcome("A", "B") == 1 and c.outcome("B", "A") == -1 and c.outcome("A", "C") == 0
    assert credit(il).pairs == dict.fromkeys(c.pairs, 0.0)
    with pytest.raises(ValidationFailed, match="outside the shown list"):
        credit(il, clicked_positions=[6])


def test_kernels_on_arrays() -> None:
    team = np.array([[0, 1, 1, -1], [2, 0, 1, 2]])
    clicks = np.array([[1, 1, 0, 1], [1, 0, 0, 1]])
    cred = team_credit_kernel(team, clicks, 3)
    assert cred.tolist() == [[1, 1, 0], [0, 0, 2]]
    assert pair_indices(3) == [(0, 1), (0, 2), (1, 2)]
    assert pair_differences(cred).tolist() == [[0, 1, 1], [0, -2, -2]]
    order = np.array([[[0, 2], [2, 0]], [[1, 2], [2, 1]]])
    assert pair_compared(order, 3).tolist() == [[False, True, False], [False, False, True]]
    o = draw_orders(np.random.default_rng(0), 50, 4, 3)
    assert o.shape == (50, 4, 3) and (np.sort(o, axis=2) == np.arange(3)).all()
    lists = np.array([[[0, 1, 2], [1, 3, -1]]])
    shown, tm, src, used = team_draft_kernel(lists, np.array([[[1, 0], [1, 0], [1, 0]]]), 5)
    assert shown.tolist() == [[1, 0, 3, 2, -1]] and tm.tolist() == [[1, 0, 1, 0, -1]]
    assert src.tolist() == [[0, 0, 1, 2, -1]] and used.tolist() == [2]


# ------------------------------------------------------------------------ properties

item = st.sampled_from(list("abcdefghij"))
ranking = st.lists(item, max_size=8)


@settings(max_examples=200, deadline=None)
@given(lists=st.lists(ranking, min_size=2, max_size=4), k=st.integers(1, 12),
       seed=st.integers(0, 2**32 - 1))
def test_properties(lists: list[list[str]], k: int, seed: int) -> None:
    rankings = {f"R{i}": lst for i, lst in enumerate(lists)}
    il = team_draft(rankings, k, rng=np.random.default_rng(seed))
    shown = il.item_ids
    union = set().union(*map(set, lists))
    assert set(shown) <= union  # every shown item comes from some ranker's list
    assert len(shown) == len(set(shown))  # no duplicates
    assert len(shown) == min(k, len(union))  # at most k, and as many as available
    deduped = {key: list(dict.fromkeys(lst)) for key, lst in rankings.items()}
    for it in il.items:  # the team's list holds the item at its source rank
        assert deduped[it.team][it.source_rank] == it.item_id
    # while every ranker still has unseen items, team sizes differ by at most one
    for p in range(len(shown) + 1):
        prefix = set(shown[:p])
        if all(set(lst) - prefix for lst in lists):
            sizes = Counter(il.teams[:p])
            counts = [sizes.get(key, 0) for key in rankings]
            assert max(counts) - min(counts) <= 1
    # the logged draft replays to the same list
    assert team_draft(rankings, k, draft=il.draft) == il
