"""P(arm k has the largest of K <= 3 independent normals) in closed form
(:mod:`armlab.core.policies.normal_max`): against a fine quadrature on random and lopsided
rows, against Monte Carlo, row form against the one-row form, and the symmetric and
degenerate cases."""

from __future__ import annotations

import numpy as np
import pytest

from armlab.core.policies.normal_max import prob_best_one, prob_best_rows


def _quadrature(loc: np.ndarray, sd: np.ndarray, nodes: int = 20_001) -> np.ndarray:
    """P(k is the max) = integral phi_k(y) prod_{j != k} Phi_j(y) dy on a fine grid."""
    from scipy import special, stats

    lo = float(np.min(loc - 9 * sd))
    hi = float(np.max(loc + 9 * sd))
    y = np.linspace(lo, hi, nodes)
    cdf = special.ndtr((y[None, :] - loc[:, None]) / sd[:, None])
    out = []
    for k in range(loc.size):
        others = np.prod(np.delete(cdf, k, axis=0), axis=0)
        out.append(np.trapezoid(stats.norm.pdf(y, loc[k], sd[k]) * others, y))
    return np.array(out)


@pytest.mark.parametrize("k", [2, 3])
def test_the_closed_form_is_the_integral(k: int) -> None:
    rng = np.random.default_rng(k)
    for _ in range(200):
        loc = rng.normal(0.1, 0.05, k)
        sd = rng.uniform(0.005, 0.08, k) * rng.choice([1.0, 0.1, 10.0], k)
        p, err = prob_best_rows(loc, sd)
        assert err < 1e-12
        np.testing.assert_allclose(p, _quadrature(loc, sd), atol=2e-6)


def test_the_closed_form_is_the_frequency_of_the_maximum() -> None:
    rng = np.random.default_rng(0)
    loc, sd = np.array([0.05, 0.06, 0.055]), np.array([0.01, 0.012, 0.011])
    draws = rng.normal(loc, sd, size=(400_000, 3)).argmax(axis=1)
    freq = np.bincount(draws, minlength=3) / draws.size
    np.testing.assert_allclose(prob_best_rows(loc, sd)[0], freq, atol=4 * 0.0008)


def test_rows_and_one_row_agree_and_sum_to_one() -> None:
    rng = np.random.default_rng(5)
    for k in (1, 2, 3):
        loc = rng.normal(0.0, 1.0, (300, k))
        sd = rng.uniform(1e-6, 2.0, (300, k))
        rows, _ = prob_best_rows(loc, sd)
        np.testing.assert_allclose(rows.sum(axis=-1), 1.0, atol=1e-12)
        for i in range(300):
            np.testing.assert_allclose(prob_best_one(loc[i].tolist(), sd[i].tolist()), rows[i],
                                       atol=1e-13)


def test_symmetric_and_degenerate_rows() -> None:
    np.testing.assert_allclose(prob_best_one([0.0, 0.0, 0.0], [0.1, 0.1, 0.1]), [1 / 3] * 3,
                               atol=1e-15)
    np.testing.assert_allclose(prob_best_one([0.0, 0.0], [0.1, 0.3]), [0.5, 0.5], atol=1e-15)
    # point masses order the arms; a point mass against a spread arm is Phi of the gap
    assert prob_best_one([0.2, 0.1, 0.0], [0.0, 0.0, 0.0]) == pytest.approx([1, 0, 0], abs=1e-12)
    p = prob_best_one([0.1, 0.0, -5.0], [0.0, 0.1, 0.0])
    assert p == pytest.approx([0.8413447460685429, 0.15865525393145707, 0.0], abs=1e-9)
    with pytest.raises(ValueError):
        prob_best_rows(np.zeros(4), np.ones(4))
