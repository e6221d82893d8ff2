"""Bandit simulation sanity: Thompson sampling beats uniform; CLI output and errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from armlab.core.policies.regret_simulation import parse_means, simulate_bandit
from armlab.errors import PolicyError

EASY = [0.10, 0.05, 0.05]


def test_thompson_regret_is_far_below_uniform_on_an_easy_problem() -> None:
    ts = simulate_bandit(EASY, policy="thompson", horizon=3000, seeds=20, seed=1)
    batched = simulate_bandit(
        EASY,
        policy="thompson",
        horizon=3000,
        seeds=20,
        batch_every=100,
        seed=2,
        params={"method": "monte_carlo", "n_draws": 500},
    )
    uni = simulate_bandit(EASY, policy="uniform", horizon=3000, seeds=20, batch_every=100, seed=3)
    # uniform's pseudo-regret is exactly 2/3 * 0.05 per round in expectation
    assert uni["regret_mean"] == pytest.approx(3000 * 0.05 * 2 / 3, rel=0.05)
    assert ts["regret_mean"] < 0.5 * uni["regret_mean"]
    assert batched["regret_mean"] < 0.6 * uni["regret_mean"]
    assert ts["best_arm_fraction"] > 0.7 > uni["best_arm_fraction"]


def test_simulation_is_reproducible_and_floor_is_respected() -> None:
    a = simulate_bandit(EASY, policy="epsilon_greedy", horizon=500, seeds=5, seed=4)
    b = simulate_bandit(EASY, policy="epsilon_greedy", horizon=500, seeds=5, seed=4)
    assert a["regret_mean"] == b["regret_mean"]
    # floor 0.3 on 3 arms leaves at most 0.4 for the best arm: best fraction ~ <= 0.4
    f = simulate_bandit(
        EASY,
        policy="thompson",
        horizon=2000,
        seeds=10,
        batch_every=50,
        floor=0.3,
        seed=5,
        params={"method": "monte_carlo", "n_draws": 200},
    )
    assert 0.3 <= f["best_arm_fraction"] <= 0.43


def test_online_thompson_with_floor_is_refused() -> None:
    with pytest.raises(PolicyError, match="batch-every"):
        simulate_bandit(EASY, policy="thompson", horizon=10, seeds=2, floor=0.1)


@pytest.mark.parametrize("text", ["0.1", "a,b", "0.5,1.5"])
def test_parse_means_rejects_bad_input(text: str) -> None:
    with pytest.raises(PolicyError, match="--means"):
        parse_means(text)


def test_cli_simulate_bandit_json() -> None:
    from armlab.entrypoints.cli.main import GROUPS, _register_all, app

    if "bandit" not in {c.name for c in GROUPS["simulate"].registered_commands}:
        _register_all()
    r = CliRunner().invoke(
        app,
        [
            "simulate",
            "bandit",
            "--policy",
            "thompson",
            "--means",
            "0.1,0.05",
            "--horizon",
            "500",
            "--seeds",
            "4",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert {"regret_mean", "regret_se", "best_arm_fraction"} <= set(out)
