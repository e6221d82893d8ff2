"""CdfSampler: the per-request serving path draws arms with the snapshot's propensities."""

from __future__ import annotations

import numpy as np
import pytest

from armlab.core.policies import CdfSampler
from armlab.errors import PolicyError


def test_frequencies_match_weights_and_propensities_are_weights() -> None:
    w = [0.5, 0.0, 0.2, 0.3]
    sampler = CdfSampler(w)
    rng = np.random.default_rng(3)
    counts = np.zeros(len(w))
    for u in rng.random(40_000):
        i, p = sampler.pick(float(u))
        assert p == pytest.approx(w[i])
        counts[i] += 1
    freq = counts / counts.sum()
    assert counts[1] == 0  # a zero-weight arm is never served
    # 4 standard errors of a binomial proportion at n = 40,000
    assert np.all(np.abs(freq - np.array(w)) < 4 * np.sqrt(0.25 / 40_000))


def test_unnormalised_weights_give_normalised_propensities() -> None:
    i, p = CdfSampler([2.0, 2.0]).pick(0.75)
    assert (i, p) == (1, 0.5)


def test_edges() -> None:
    s = CdfSampler([0.0, 1.0, 0.0])
    assert s.pick(0.0) == (1, 1.0)
    assert s.pick(0.999999) == (1, 1.0)


@pytest.mark.parametrize("weights", [[], [0.0, 0.0], [1.0, -0.1], [float("nan"), 1.0]])
def test_bad_weights_are_refused(weights: list[float]) -> None:
    with pytest.raises(PolicyError, match="weights must be"):
        CdfSampler(weights)
