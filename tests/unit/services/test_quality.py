"""The quality harness's honesty rules on synthetic scores: the user split is disjoint and
seeded, weights are tuned on validation users only, and both protocols are reported."""

from __future__ import annotations

import numpy as np
import pytest

from armlab.errors import ValidationFailed
from armlab.services import quality as q


def test_split_is_disjoint_seeded_and_covers_everyone() -> None:
    val, ev = q.split_users(100, 0.3, seed=0)
    assert len(val) == 30 and len(ev) == 70
    assert not set(val) & set(ev) and set(val) | set(ev) == set(range(100))
    again = q.split_users(100, 0.3, seed=0)
    assert (again[0] == val).all()
    assert not (q.split_users(100, 0.3, seed=1)[0] == val).all()
    with pytest.raises(ValidationFailed, match="val_share"):
        q.split_users(10, 1.0, seed=0)


def _data(n: int, val: np.ndarray, ev: np.ndarray) -> q._Data:
    cases = [q.Case(str(u), [], ["t", "a", "b"], ["a", "b", "c"]) for u in range(n)]
    return q._Data(cases, {}, {}, ["t", "a", "b", "c"], {"t": 0, "a": 1, "b": 2, "c": 3},
                   val, ev)


def test_weight_is_tuned_on_validation_users_only() -> None:
    """Validation users need a small weight to rank the target first, evaluation users a
    large one: the tuned weight must be the validation users' choice."""
    n = 20
    val, ev = np.arange(0, 10), np.arange(10, 20)
    d = _data(n, val, ev)
    own, prior = [], []
    for u in range(n):
        if u < 10:  # target wins on content, loses on the prior: small weight is best
            own.append(np.array([1.0, 0.9, 0.0]))
            prior.append(np.array([0.0, 1.0, 0.0]))
        else:       # target loses on content, wins on the prior: large weight is best
            own.append(np.array([0.0, 1.0, 0.0]))
            prior.append(np.array([1.0, 0.0, 0.0]))
    w, grid = q._tune(q._Scores(own, own), q._Scores(prior, prior), d, seed=0)
    assert w == min(q.WEIGHT_GRID)
    assert {g["weight"] for g in grid} == set(q.WEIGHT_GRID)
    assert all(g["users"] == 10 for g in grid)
    blended = q._Scores(own, own).blend(q._Scores(prior, prior), w)
    report = q._report({"kind": "bi_encoder"}, blended, d, seed=0)
    assert report["users"] == 10 and report["full"]["users"] == 10
    assert report["hr@10"] == 1.0  # 3 candidates: always in the top 10
    assert report["ndcg@10"] < 1.0  # but the evaluation users' target is not first


def test_unknown_preset_names_the_field() -> None:
    with pytest.raises(ValidationFailed, match="unknown quality preset") as info:
        q.run_quality(["nope"])
    assert info.value.field == "variants"


def test_every_preset_is_a_valid_variant_once_weights_are_filled() -> None:
    from armlab.core.variants import validate_variant

    for v in q.PRESETS.values():
        filled = q._with_weight(v, 0.1)
        assert "tune" not in repr(filled)
        validate_variant(filled)
