"""Rich tables for the command line: experiments, results, the sequential test, audit.

Stored text (names, descriptions, keys, reasons, variant configs, messages) is printed as
text, never parsed: every cell, title and line goes to Rich as a :class:`rich.text.Text`, and
the console is built with markup, emoji codes and highlighting off, so a name holding ``[/x]``
cannot crash the command and ``[link=...]`` or ``:smile:`` shows as typed.
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from armlab.core.decisions import Evaluation


def console() -> Console:
    return Console(soft_wrap=False, markup=False, emoji=False, highlight=False)


def _text(v: Any) -> Text:
    """``v`` formatted as plain text (a Text is never read as markup or emoji codes)."""
    return v if isinstance(v, Text) else Text(_fmt(v))


def _row(table: Table, *cells: Any) -> None:
    table.add_row(*(_text(c) for c in cells))


def _say(console: Console, *parts: Any) -> None:
    """Print one line made of ``parts`` as text (a ``(str, style)`` pair keeps its style)."""
    console.print(Text.assemble(*(p if isinstance(p, tuple) else _fmt(p) for p in parts)))


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"), default=str)
    return str(v)


def render_experiment_list(console: Console, exps: list[dict[str, Any]]) -> None:
    table = Table(title="experiments")
    for col in ("key", "status", "policy", "unit", "arms", "control", "shipped", "version"):
        table.add_column(col)
    for e in exps:
        _row(table, e["key"], e["status"], e["policy"], e["unit"], ", ".join(e["arms"]),
             e["control_arm_key"], e.get("shipped_arm"), str(e["version"]))
    console.print(table)
    if not exps:
        _say(console, "no experiments")


def render_experiment(console: Console, exp: dict[str, Any]) -> None:
    settings = Table(title=Text(f"experiment {exp['key']}"), show_header=False)
    settings.add_column("setting", style="bold")
    settings.add_column("value")
    for label, value in (
        ("name", exp["name"]),
        ("description", exp.get("description") or None),
        ("status", exp["status"]),
        ("unit", exp["unit"]),
        ("reward", f"{exp['reward']['kind']} ({exp['reward']['metric']})"),
        ("policy", f"{exp['policy']['name']} {_fmt(exp['policy'].get('params') or {})}"),
        ("exploration floor", exp["exploration_floor"]),
        ("burn-in", exp["burn_in"]),
        ("attribution window (s)", exp["attribution_window_s"]),
        ("sequential", exp["sequential"]),
        ("control arm", exp["control_arm_key"]),
        ("shipped arm", exp.get("shipped_arm")),
        ("guardrails", ", ".join(
            f"{g['key']} ({g['source'].get('feedback') or g['source'].get('impression_field')}"
            f" {g['aggregate']}, harm {g['harm']}, alpha {g['alpha']}, {g['on_breach']})"
            for g in exp.get("guardrails") or []) or None),
        ("rolled back", ", ".join(sorted(exp.get("rolled_back") or {})) or None),
        ("version", exp["version"]),
        ("started", exp.get("started_at")),
        ("ended", exp.get("ended_at")),
    ):
        _row(settings, label, value)
    console.print(settings)
    arms = Table(title="arms")
    for col in ("key", "control", "kind", "model", "variant"):
        arms.add_column(col)
    for a in exp["arms"]:
        v = a["variant"]
        rest = {k: x for k, x in v.items() if k not in ("kind", "model")}
        _row(arms, a["key"], "yes" if a["control"] else "", v.get("kind"), v.get("model"), rest)
    console.print(arms)


def render_results(console: Console, results: dict[str, Any]) -> None:
    """Per-arm evidence, then the sequential test's table."""
    table = Table(title=Text(f"results ({results['status']})"))
    for col in ("arm", "control", "impressions", "feedback", "reward sum", "mean", "weight"):
        table.add_column(col, justify="right" if col not in ("arm", "control") else "left")
    for a in results["arms"]:
        _row(table, a["key"], "yes" if a["control"] else "", str(a["impressions"]),
             str(a.get("feedback", 0)), float(a["reward_sum"]), a.get("mean"),
             f"{float(a['weight']):.3f}")
    console.print(table)
    snap = results.get("snapshot")
    if snap:
        _say(console, f"weights from snapshot #{snap['id']} at {snap.get('created_at')}")
    else:
        _say(console, "no allocation snapshot yet: weights shown are the uniform split")
    render_sequential(console, results.get("sequential"))
    render_guardrails(console, results.get("guardrails") or [])
    render_recommendation(console, results.get("recommendation"))


def render_guardrails(console: Console, rows: list[dict[str, Any]]) -> None:
    """Per guardrail and treatment arm: state, excess harm and its confidence sequence."""
    if not rows:
        return

    def f(x: Any, spec: str = ".4g") -> str:
        return "-" if x is None else format(float(x), spec)

    table = Table(title="guardrails (one-sided always-valid non-inferiority)")
    for col in ("guardrail", "arm", "state", "control mean", "treatment mean", "excess harm",
                "confidence sequence", "p", "alpha"):
        table.add_column(col)
    for g in rows:
        margin = f"{f(g.get('margin'))}{' rel' if g.get('relative') else ''}"
        _row(table, f"{g['metric']} ({g.get('harm')}, margin {margin})", str(g["arm"]),
             str(g.get("state")), f(g.get("control_mean")), f(g.get("treatment_mean")),
             f(g.get("excess"), "+.4g"),
             f"[{f(g.get('excess_low'))}, {f(g.get('excess_high'))}]",
             f(g.get("p_value")), f(g.get("alpha")))
    console.print(table)


def render_recommendation(console: Console, rec: dict[str, Any] | None) -> None:
    """The one recommendation (primary test and guardrails combined) and its reasons."""
    if not rec:
        return
    action = str(rec.get("action", "continue"))
    head = {"ship": f"ship {rec.get('arm')}", "keep_control": "keep control"}.get(
        action, "continue")
    _say(console, "recommendation: ", (head, "bold"))
    for r in rec.get("reasons", []):
        _say(console, f"  - {r}")


def render_audit(console: Console, key: str, rows: list[dict[str, Any]]) -> None:
    table = Table(title=Text(f"audit {key}"))
    for col in ("at", "actor", "action", "reason", "before", "after", "evidence"):
        table.add_column(col)
    for r in rows:
        _row(table, r["at"], r["actor"], r["action"], r["reason"], r["before"], r["after"],
             r["evidence"] or None)
    console.print(table)


def render_sequential(console: Console, seq: dict[str, Any] | None) -> None:
    """Rich table of the sequential evaluation for ``armlab experiments show``."""
    if not seq:
        return
    if "error" in seq:
        _say(console, f"sequential test unavailable: {seq['error']}")
        return

    def f(x: Any, spec: str = ".4g") -> str:
        return "-" if x is None else format(float(x), spec)

    ev = Evaluation.from_dict(seq)
    title = (f"sequential test ({ev.method}, alpha {ev.alpha}, {ev.correction}, "
             f"tau2 {f(ev.tau2)})")
    table = Table(title=Text(title))
    for col in ("arm", "decision", "estimate", "p (always-valid)", "p adjusted",
                "confidence sequence", "n control", "n treatment", "reason"):
        table.add_column(col)
    for a in ev.arms:
        lo = "-inf" if a.ci_low is None else f(a.ci_low)
        hi = "inf" if a.ci_high is None else f(a.ci_high)
        _row(table, a.arm, a.decision.value, f(a.estimate, "+.4g"), f(a.p_value),
             f(a.p_adjusted), f"[{lo}, {hi}]", f(a.n_control, ".0f"), f(a.n_treatment, ".0f"),
             a.reason)
    console.print(table)
    srm = ev.srm
    if srm.get("checked"):
        _say(console, f"SRM (always-valid, time-varying weights): p {f(srm.get('p_value'))}"
                      f"{'  MISMATCH' if srm.get('mismatch') else ''}")
    for w in ev.warnings:
        _say(console, f"warning: {w}")
