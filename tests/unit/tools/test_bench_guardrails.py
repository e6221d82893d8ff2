"""``run_guardrail_bench``: the figures depend on the seed only, not on the worker count."""

from __future__ import annotations

from armlab.tools.bench.guardrails import run_guardrail_bench


def _figures(out: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in out.items() if k in ("false_rollback_no_harm", "detection",
                                                   "regret")}


def test_same_seed_same_figures_whatever_the_workers() -> None:
    one = run_guardrail_bench(quick=True, reps=20, seed=9, workers=1)
    two = run_guardrail_bench(quick=True, reps=20, seed=9, workers=2)
    assert _figures(one) == _figures(two)
    other = run_guardrail_bench(quick=True, reps=20, seed=10, workers=1)
    assert _figures(other) != _figures(one)
