"""What ``armlab demo`` prints at the end of stage 2 (the A/B test), and how it picks the arm
to ship from the always-valid evaluation."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from armlab.core.decisions import Decision, Evaluation


def choose_winner(seq: dict[str, Any] | None, control: str) -> tuple[str, str]:
    """(arm, why) from the sequential evaluation.

    The best-estimated arm among those the always-valid test found better than the control;
    otherwise the control: without evidence of an improvement the status quo ships (the
    registry's ship guard would refuse a treatment the test has not declared better).
    """
    breached = {str(g.get("arm")) for g in (seq or {}).get("guardrails") or []
                if g.get("state") == "breached"} | set((seq or {}).get("rolled_back") or {})
    arms = Evaluation.from_dict(seq or {}).arms
    better = [a for a in arms if a.decision == Decision.TREATMENT_BETTER
              and a.arm not in breached]
    if better:
        best = max(better, key=lambda a: (a.estimate or 0.0))
        p_adjusted = float("nan") if best.p_adjusted is None else best.p_adjusted
        return best.arm, (f"mSPRT: better than {control} (estimate "
                          f"{best.estimate or 0:+.3f}, adjusted always-valid p "
                          f"{p_adjusted:.3g})")
    decided = [a for a in arms if a.decision in (Decision.TREATMENT_WORSE, Decision.FUTILE,
                                                 Decision.INCONCLUSIVE)]
    if arms and len(decided) == len(arms):
        if any(a.decision == Decision.INCONCLUSIVE for a in arms):
            return control, ("the data cannot show a treatment better than the control: "
                             "inconclusive at the horizon; keeping the control")
        return control, "mSPRT: no treatment beat the control (all worse or futile)"
    return control, ("no treatment was shown better than the control by the always-valid "
                     "test within the budget; keeping the control")



def print_summary(console: Any, r: Any, *, control: str, why: str) -> None:
    if r.status == "skipped":
        console.print(f"[bold yellow]stage 2 skipped:[/] {r.why}")
        return
    by_arm = {a.arm: a for a in Evaluation.from_dict(r.sequential or {}).arms}
    t = Table(title=f"Stage 2 ({r.key}, unit user): {r.requests:,} requests, stopped "
                    f"because {r.stop_reason}")
    vs_col = "clicks per user vs control"  # the unit is the user: per-user totals compared
    for col in ("arm", "requests", "clicks", "click rate", "final weight", vs_col,
                "decision", "always-valid p"):
        t.add_column(col, justify="left" if col in ("arm", "decision", vs_col) else "right")
    for arm, tal in r.tallies.items():
        d = by_arm.get(arm)
        est, lo, hi = (None, None, None) if d is None else (d.estimate, d.ci_low, d.ci_high)
        vs = "control" if arm == control else (
            f"{est:+.3f} [{lo if lo is not None else float('-inf'):+.3f}, "
            f"{hi if hi is not None else float('inf'):+.3f}]" if est is not None else "—")
        name = f"[bold green]{arm} ★[/]" if arm == r.shipped else arm
        t.add_row(name, f"{tal.requests:,}", f"{tal.clicks:,}",
                  f"{tal.clicks / tal.requests:.3f}" if tal.requests else "—",
                  f"{r.weights.get(arm, 0.0):.3f}", vs,
                  ("control" if arm == control else "—") if d is None else d.decision.value,
                  f"{d.p_adjusted:.3g}" if d is not None and d.p_adjusted is not None else "—")
    console.print(t)
    for g in (r.sequential or {}).get("guardrails") or []:
        def f(x: Any) -> str:
            return "—" if x is None else f"{x:+.3f}"
        console.print(f"guardrail {g['metric']} on {g['arm']}: {g.get('state')} (excess harm "
                      f"{f(g.get('excess'))} [{f(g.get('excess_low'))}, "
                      f"{f(g.get('excess_high'))}])")
    print_cuped(console, (r.sequential or {}).get("cuped"))
    print_personalisation(console, getattr(r, "contextual", None))
    if r.shipped:
        console.print(f"[bold green]shipped[/] {r.shipped}: {why}")
    else:
        console.print(f"[bold yellow]{why}[/]")
    s = r.seconds
    console.print(
        f"model loading {s.get('model_load_s', 0):.0f} s, replay {s.get('replay_s', 0):.0f} s "
        f"({s.get('requests_per_s', 0):.1f} requests/s), total {s.get('total_s', 0):.0f} s"
    )
    if r.report_path:
        console.print(f"report: [bold]{r.report_path}[/]  (or GET /v1/experiments/{r.key}/report)")


def print_cuped(console: Any, block: dict[str, Any] | None) -> None:
    """CUPED (stage 2 after stage 1): the covariate, theta and the variance reduction."""
    if not block:
        return
    if not block.get("applied"):
        console.print(f"CUPED: not applied ({block.get('reason', '')})")
        return
    ratio = float(block.get("variance_ratio", 1.0))
    console.print(
        f"CUPED (X = each user's {block.get('covariate')} in the {block.get('pre_period_days')}"
        f" day(s) before stage 2, stage 1 included): {float(block.get('pre_units') or 0):,.0f}"
        f" of {float(block.get('units') or 0):,.0f} users seen before, theta "
        f"{float(block.get('theta', 0.0)):+.3f}, rho {float(block.get('rho', 0.0)):+.3f}: "
        f"variance x{ratio:.3f} ({1 - ratio:.1%} less, interval x{ratio ** 0.5:.3f})")


def print_personalisation(console: Any, block: dict[str, Any] | None) -> None:
    """``--contextual``: does serving by segment pay? The off-policy value of the learned
    policy against the best single arm with its confidence sequence, or why it is unknown."""
    if not block:
        return
    pers = block.get("personalisation") or {}
    if pers.get("available"):
        lo, hi = float(pers["cs_low"]), float(pers["cs_high"])
        verdict = ("personalisation pays" if lo > 0 else
                   "personalisation costs" if hi < 0 else
                   "the data cannot show whether personalisation pays")
        console.print(f"[bold]by segment:[/] {pers['summary']}: {verdict}")
    else:
        console.print(f"[bold]by segment:[/] no personalisation value yet: {pers.get('reason')}")
    for w in block.get("warnings") or []:
        console.print(f"  note: {w}")
