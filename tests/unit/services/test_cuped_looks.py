"""CUPED across the allocator's looks (fake unit of work): the plan is frozen at the look gate
from the *adjusted* variance and later looks continue that state on adjusted sums; the
recorded evaluation (results, ship guard) carries the ``cuped`` block; an experiment without
``sequential.cuped`` is untouched."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from armlab.core.decisions import evaluate
from armlab.core.evidence import ArmSums
from armlab.core.specs import ExperimentSpec
from armlab.core.stats.cuped import CovariateSums, adjust_arms
from armlab.services import registry
from armlab.services.allocator import run_decisions
from armlab.services.decisions import design_of
from armlab.services.results import build_results
from tests.fakes import FakeUnitOfWork


def make(cuped: dict[str, Any] | None) -> tuple[FakeUnitOfWork, Any]:
    uow = FakeUnitOfWork()
    seq: dict[str, Any] = {"min_samples": 50, "min_events": 10}
    if cuped is not None:
        seq["cuped"] = cuped
    spec = ExperimentSpec.model_validate({
        "key": "exp", "unit": "user", "exploration_floor": 0.1, "sequential": seq,
        "arms": [{"key": "control", "control": True, "variant": {"kind": "popularity"}},
                 {"key": "t1", "variant": {"kind": "popularity"}}]})
    registry.create_experiment(uow, spec=spec, actor="ops")
    registry.start_experiment(uow, key="exp", actor="ops")
    return uow, registry.get_experiment(uow, key="exp")


def users(n: int, seed: int) -> tuple[dict[str, ArmSums], dict[str, CovariateSums]]:
    """Per arm the user sums and covariate sums of ``n`` users per arm whose pre-period clicks
    X predict their clicks Y (no effect), sticky propensities 0.5 / 0.5."""
    rng = np.random.default_rng(seed)
    sums, cov = {}, {}
    for k in ("control", "t1"):
        q = rng.beta(0.6, 5.4, n)
        x, y = rng.binomial(10, q).astype(float), rng.binomial(10, q).astype(float)
        p = 0.5
        sums[k] = ArmSums(n=n, reward_sum=y.sum(), reward_sumsq=(y**2).sum(), ipw_n=n / p,
                          ipw_sum=y.sum() / p, ipw_sumsq=(y**2).sum() / p**2,
                          ipw_n_sq=n / p**2, feedback_n=y.sum())
        cov[k] = CovariateSums(pre_units=float((x > 0).sum()), x=x.sum(), xx=(x**2).sum(),
                               xy=(x * y).sum(), ipw_x=x.sum() / p,
                               ipw_xx=(x**2).sum() / p**2, ipw_xy=(x * y).sum() / p**2)
    return sums, cov


def test_the_plan_is_frozen_from_the_adjusted_variance_and_kept_across_looks() -> None:
    uow, exp = make({"pre_period_days": 28})
    first, cov1 = users(200, 1)
    uow.evidence.units[exp.id], uow.evidence.covariates[exp.id] = first, cov1
    ev1 = run_decisions(uow, exp)
    adjusted, fit = adjust_arms(first, cov1)
    want = evaluate(design_of(exp), adjusted, {}, now=ev1["evaluated_at"])
    plain = evaluate(design_of(exp), first, {}, now=ev1["evaluated_at"])
    assert fit.variance_ratio < 0.8
    assert ev1["tau2_source"] == "horizon" and ev1["tau2"] == pytest.approx(want.tau2)
    assert want.tau2 is not None and plain.tau2 is not None and want.tau2 < plain.tau2
    assert ev1["arms"][0]["estimate"] == pytest.approx(want.arms[0].estimate)
    assert ev1["cuped"]["applied"] and ev1["cuped"]["theta"] == pytest.approx(fit.theta)
    # the arms' shown means are the plain clicks per user
    assert ev1["arms"][0]["mean_control"] == pytest.approx(first["control"].reward_sum / 200)
    # a later look on more users: the same test (frozen tau², the running state continued)
    later, cov2 = users(400, 2)
    uow.evidence.units[exp.id], uow.evidence.covariates[exp.id] = later, cov2
    ev2 = run_decisions(uow, exp)
    assert ev2["tau2_source"] == "frozen" and ev2["tau2"] == ev1["tau2"]
    assert ev2["arms"][0]["looks"] == ev1["arms"][0]["looks"] + 1
    assert ev2["cuped"]["units"] == 800
    # what the results endpoint shows is the recorded look, with its cuped block
    shown = build_results(uow, exp)["sequential"]
    assert shown["cuped"] == ev2["cuped"]


def test_without_cuped_the_look_is_untouched() -> None:
    uow, exp = make(None)
    first, cov = users(200, 1)
    uow.evidence.units[exp.id], uow.evidence.covariates[exp.id] = first, cov
    ev = run_decisions(uow, exp)
    assert "cuped" not in ev
    plain = evaluate(design_of(exp), first, {}, now=ev["evaluated_at"])
    assert ev["tau2"] == pytest.approx(plain.tau2)
