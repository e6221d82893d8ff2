"""A self-contained HTML report of one experiment: charts as inline SVG, no external assets.

Sections (each chart is a ``<figure id="chart-...">`` so tests and people can find it):

1. ``chart-weights``: allocation weights over time (allocation_snapshots);
2. ``chart-reward``: cumulative reward per arm (impressions with their attributed reward,
   summed per time bucket in the database), with the running mean reward per arm beside it;
3. ``chart-cs``: the always-valid confidence sequence of each treatment minus control over
   time (decisions table) with the point where the sequential test stopped;
4. ``interleaving`` (interleaving experiments, instead of 3): per pair of rankers the test,
   win tallies and confidence sequence over the looks
   (:mod:`armlab.entrypoints.report_interleaving`);
5. ``contextual`` (contextual policies): the value of personalisation, per-segment weights,
   effects and SRM, and ``chart-segments`` (:mod:`armlab.entrypoints.report_contextual`);
6. ``audit``: the audit trail (audit_log), with the evidence of every automated decision.

The charts are drawn in :mod:`armlab.entrypoints.report_charts` (re-exported here); this
module assembles the page (tables, captions, CSS) around them.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

from armlab.core.clock import utcnow
from armlab.entrypoints.report_charts import (
    CONTROL_COLOUR,
    MAX_LEGEND_ARMS,
    PALETTE,
    chart_cs,
    chart_guardrails,
    chart_reward,
    chart_weights,
    stopping_point,
)
from armlab.entrypoints.report_contextual import contextual_section
from armlab.entrypoints.report_format import esc as _esc
from armlab.entrypoints.report_format import fmt as _fmt
from armlab.entrypoints.report_interleaving import interleaving_section
from armlab.services.report import ReportData

__all__ = [
    "CONTROL_COLOUR", "CSS", "MAX_LEGEND_ARMS", "PALETTE", "build_report", "chart_cs",
    "chart_guardrails", "chart_reward", "chart_weights", "render_html", "stopping_point",
    "write_report",
]


def _recommendation_html(data: ReportData) -> str:
    rec = data.results.get("recommendation") if isinstance(data.results, dict) else None
    if not rec:
        return ""
    action = str(rec.get("action"))
    head = {"ship": f"ship {rec.get('arm')}", "keep_control": "keep control"}.get(
        action, "continue")
    items = "".join(f"<li>{_esc(r)}</li>" for r in rec.get("reasons", []))
    return f"<p>Recommendation: <b>{_esc(head)}</b></p><ul>{items}</ul>"


def _guardrails_table(data: ReportData) -> str:
    rows = []
    for g in (data.results.get("guardrails") or []) if isinstance(data.results, dict) else []:
        margin = f"{_fmt(g.get('margin'))}{' (relative)' if g.get('relative') else ''}"
        rows.append(
            f"<tr><td>{_esc(g['metric'])}</td><td>{_esc(g['arm'])}</td>"
            f"<td><b>{_esc(g.get('state'))}</b></td><td>{_esc(g.get('harm'))}, {margin}</td>"
            f"<td class='num'>{_fmt(g.get('control_mean'))}</td>"
            f"<td class='num'>{_fmt(g.get('treatment_mean'))}</td>"
            f"<td class='num'>{_fmt(g.get('excess'))}</td>"
            f"<td class='num'>[{_fmt(g.get('excess_low'))}, {_fmt(g.get('excess_high'))}]</td>"
            f"<td class='num'>{_fmt(g.get('p_value'))}</td>"
            f"<td class='num'>{_fmt(g.get('alpha'))}</td></tr>")
    if not rows:
        return ""
    return ("<table><thead><tr><th>guardrail</th><th>arm</th><th>state</th><th>harm, margin"
            "</th><th>control</th><th>treatment</th><th>excess harm</th><th>confidence "
            "sequence</th><th>p</th><th>alpha</th></tr></thead><tbody>" + "".join(rows)
            + "</tbody></table>")


def _guardrails_section(data: ReportData) -> str:
    table = _guardrails_table(data)
    rec = _recommendation_html(data)
    if not table and not rec:
        return ""
    chart = chart_guardrails(data) if table else ""
    return (f"<section id='guardrails'><h2>Recommendation and guardrails</h2>{rec}{table}"
            f"{chart}<p class='sub'>A breach (the one-sided always-valid test shows harm beyond"
            " the margin, at the guardrail's alpha divided by the number of treatments) takes "
            "the arm out of the allocation.</p></section>")


CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0;color:#1d1d1f;
background:#f6f7f9}
main{max-width:1120px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:26px;margin:6px 0 2px}h2{font-size:18px;margin:2px 0 10px}
.sub{color:#555;margin:0 0 14px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:14px 0}
.card{background:#fff;border:1px solid #e3e5e8;border-radius:8px;padding:10px 14px;min-width:140px}
.card b{display:block;font-size:18px}.card span{color:#666;font-size:12px}
section,figure{background:#fff;border:1px solid #e3e5e8;border-radius:8px;padding:14px;
margin:14px 0}
figure svg{max-width:100%;height:auto}
figcaption{color:#555;font-size:13px;margin-top:6px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eee;vertical-align:top}
th{background:#fafafa}td.num{text-align:right;font-variant-numeric:tabular-nums}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
pre{white-space:pre-wrap;max-height:260px;overflow:auto;background:#fafafa;padding:6px}
.shipped{color:#009E73;font-weight:bold}
"""


def _fmt_time(t: datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC") if t else "—"


def _arms_table(data: ReportData) -> str:
    res_arms = {a["key"]: a for a in data.results.get("arms", []) if isinstance(a, dict)}
    rows = []
    for a in data.arms:
        r = res_arms.get(a["key"], {})
        badge = " <span class='shipped'>★ shipped</span>" if a["key"] == data.shipped_arm else ""
        role = "control" if a["control"] else "treatment"
        variant = json.dumps(a["variant"], sort_keys=True)
        if len(variant) > 220:
            variant = variant[:217] + "..."
        rows.append(
            f"<tr><td><b>{_esc(a['key'])}</b>{badge}</td><td>{role}</td>"
            f"<td class='num'>{_fmt(r.get('impressions'))}</td>"
            f"<td class='num'>{_fmt(r.get('reward_sum'), 1)}</td>"
            f"<td class='num'>{_fmt(r.get('mean'))}</td>"
            f"<td class='num'>{_fmt(r.get('weight'), 3)}</td>"
            f"<td><code>{_esc(variant)}</code></td></tr>"
        )
    return (
        "<table><thead><tr><th>arm</th><th>role</th><th>impressions</th><th>reward</th>"
        "<th>mean</th><th>weight</th><th>variant</th></tr></thead><tbody>"
        + "".join(rows) + "</tbody></table>"
    )


def _audit_table(data: ReportData) -> str:
    rows = []
    for a in data.audit:
        before = a["before"].get("status", "") if isinstance(a["before"], dict) else ""
        after = a["after"].get("status", "") if isinstance(a["after"], dict) else ""
        change = f"{before} → {after}" if before or after else ""
        ev = a["evidence"] or {}
        evidence = (
            f"<details><summary>evidence</summary><pre>{_esc(json.dumps(ev, indent=1, default=str)[:4000])}</pre></details>"  # noqa: E501
            if ev else ""
        )
        rows.append(
            f"<tr><td>{_fmt_time(a['at'])}</td><td>{_esc(a['actor'])}</td>"
            f"<td><b>{_esc(a['action'])}</b></td><td>{_esc(change)}</td>"
            f"<td>{_esc(a['reason'])}{evidence}</td></tr>"
        )
    if not rows:
        rows.append("<tr><td colspan='5'>no audit entries</td></tr>")
    return (
        "<table><thead><tr><th>when</th><th>actor</th><th>action</th><th>state</th>"
        "<th>reason / evidence</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _stop_caption(data: ReportData) -> str:
    stop = stopping_point(data)
    if stop is None:
        return "The sequential test has not decided yet (every decision so far is 'continue')."
    return (
        f"Stopped at {_fmt_time(stop['at'])}: arm <b>{_esc(stop['arm'])}</b> "
        f"decision <b>{_esc(stop['decision'])}</b>, estimate {_fmt(stop['estimate'])}, "
        f"interval [{_fmt(stop['ci_low'])}, {_fmt(stop['ci_high'])}], always-valid p-value "
        f"{_fmt(stop['p_value'])} (n control {_fmt(stop['n_control'], 0)}, "
        f"n treatment {_fmt(stop['n_treatment'], 0)})."
    )


def _cs_figure(data: ReportData) -> str:
    if data.interleaving_looks or (isinstance(data.results, dict)
                                   and data.results.get("design") == "interleaving"):
        return ""  # the interleaving section shows each pair's confidence sequence
    return f"""<figure id="chart-cs">{chart_cs(data)}
<figcaption>Each panel: the sequential test's estimate of (treatment − control) and its
always-valid confidence sequence at every evaluation; the dashed line is zero, the dotted
orange line the stopping point. {_stop_caption(data)}</figcaption></figure>"""


def render_html(data: ReportData) -> str:
    """The full page as one string (inline SVG charts, inline CSS, no scripts)."""
    n_imp = sum(n for _, _, n, _ in data.impressions)
    total_reward = sum(r for _, _, _, r in data.impressions)
    cards = [
        ("status", data.status),
        ("shipped arm", data.shipped_arm or "—"),
        ("impressions", f"{n_imp:,}"),
        ("total reward", f"{total_reward:,.0f}"),
        ("policy", data.policy),
        ("decisions", f"{len(data.decisions):,}"),
    ]
    card_html = "".join(f"<div class='card'><span>{_esc(k)}</span><b>{_esc(v)}</b></div>"
                        for k, v in cards)
    seq = ", ".join(f"{k}={v}" for k, v in sorted(data.sequential.items()))
    extra = "".join(f"<section><h2>{_esc(t)}</h2>{body}</section>"
                    for t, body in data.extra_sections)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>armlab report: {_esc(data.key)}</title>
<style>{CSS}</style></head>
<body><main>
<h1>{_esc(data.name)} <small style="color:#888;font-weight:normal">({_esc(data.key)})</small></h1>
<p class="sub">{_esc(data.description)}</p>
<p class="sub">Created {_fmt_time(data.created_at)} · started {_fmt_time(data.started_at)} ·
ended {_fmt_time(data.ended_at)} · control <b>{_esc(data.control)}</b> ·
sequential test: <code>{_esc(seq)}</code></p>
<div class="cards">{card_html}</div>
<section id="arms"><h2>Arms</h2>{_arms_table(data)}</section>
{_guardrails_section(data)}
{interleaving_section(data)}
{contextual_section(data)}
<figure id="chart-weights">{chart_weights(data)}
<figcaption>Traffic share of each arm in every allocation snapshot the allocator wrote
({len(data.snapshots)} snapshots). Assignments draw arms from the latest snapshot and log
that probability as the impression's propensity.</figcaption></figure>
<figure id="chart-reward">{chart_reward(data)}
<figcaption>Reward attributed to each arm's impressions, accumulated in serving order
({n_imp:,} impressions). Arms with more traffic accumulate faster; the right panel shows the
mean per impression.</figcaption></figure>
{_cs_figure(data)}
{extra}
<section id="audit"><h2>Audit trail</h2>{_audit_table(data)}</section>
<p class="sub">Generated by armlab at {_fmt_time(utcnow())}.</p>
</main></body></html>
"""


def build_report(data: ReportData) -> str:
    """The HTML report of one experiment (``Services.reports.collect(key)`` reads it)."""
    return render_html(data)


_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def write_report(data: ReportData, out_dir: str | Path) -> Path:
    """Write ``<out_dir>/<key>.html`` and return its path."""
    page = build_report(data)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{_SAFE.sub('_', data.key)}.html"
    path.write_text(page, encoding="utf-8")
    return path
