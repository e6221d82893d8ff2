"""OPE intervals: every estimator honours ``t_opt``, and intervals stay in the reward range."""

from __future__ import annotations

import numpy as np
import pytest

from armlab.core.stats import ope


def _log(n: int = 60, seed: int = 3) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A small, low-rate binary log: the CLT intervals reach below 0 unless clipped."""
    rng = np.random.default_rng(seed)
    log_p = np.array([0.8, 0.2])
    a = rng.choice(2, size=n, p=log_p)
    r = rng.binomial(1, np.array([0.03, 0.05])[a]).astype(float)
    r[:2] = 1.0  # at least a couple of clicks, so the estimates are not degenerate
    return [str(x) for x in a], r, log_p[a]


def test_snipw_confidence_sequence_uses_t_opt_like_ipw_and_dr() -> None:
    """evaluate_policy passed t_opt to IPW and DR but not to SNIPW, whose confidence sequence
    was then always tuned at DEFAULT_CS_HORIZON whatever the caller planned."""
    acts, r, p = _log(400)
    target = {"0": 0.3, "1": 0.7}
    tp = [target[a] for a in acts]
    t_opt = 50
    assert t_opt != ope.DEFAULT_CS_HORIZON
    res = ope.evaluate_policy(acts, r, p, target, t_opt=t_opt)
    alone = ope.snipw(r, p, tp, confidence_sequence=True, t_opt=t_opt)
    default = ope.snipw(r, p, tp, confidence_sequence=True)
    assert default.cs_high != pytest.approx(alone.cs_high)  # t_opt changes the boundary
    assert res["snipw"].cs_low == pytest.approx(alone.cs_low)
    assert res["snipw"].cs_high == pytest.approx(alone.cs_high)
    # the same horizon as the other estimators: their radii all follow cs_radius(..., t_opt)
    for name in ("ipw", "snipw", "dr"):
        e = res[name]
        assert e.cs_low is not None and e.cs_high is not None
        radius = (e.cs_high - e.cs_low) / 2
        sd = e.se * np.sqrt(e.n_events)
        assert radius == pytest.approx(ope.cs_radius(sd, e.n_events, 0.05, t_opt=t_opt)), name
