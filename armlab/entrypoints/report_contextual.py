"""The report's section for a contextual policy (``segment_thompson``, ``linear_thompson``).

``contextual``: the value of personalisation ("serving by segment gains +x [lo, hi] ..."), a
table per segment (impressions, share, the latest snapshot's weights, plain means, each
treatment's always-valid effect against the control with its confidence sequence and Holm p,
the segment's SRM check) and ``chart-segments``: the per-segment effects with their confidence
sequences (inline SVG, one row per segment and treatment)."""

from __future__ import annotations

import math
from typing import Any

from armlab.entrypoints.report_format import esc as _esc
from armlab.services.report import ReportData

ROW_H, WIDTH, LABEL_W, PAD = 22, 720, 220, 20


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:+.{digits}f}" if digits == 4 else f"{v:.{digits}f}"
    return str(v)


def _effect(r: dict[str, Any]) -> str:
    if r.get("estimate") is None:
        return f"<div><b>{_esc(r['arm'])}</b> <small>{_esc(r.get('reason'))}</small></div>"
    lo = "-∞" if r.get("ci_low") is None else _fmt(r["ci_low"])
    hi = "∞" if r.get("ci_high") is None else _fmt(r["ci_high"])
    sig = " <b>significant</b>" if r.get("significant") else ""
    return (f"<div data-arm='{_esc(r['arm'])}'><b>{_esc(r['arm'])}</b> {_fmt(r['estimate'])} "
            f"[{lo}, {hi}], Holm p {r['p_adjusted']:.3g}{sig}</div>")


def _segment_row(s: dict[str, Any], effects: list[dict[str, Any]],
                 srm: dict[str, Any] | None) -> str:
    w = ", ".join(f"{_esc(a)} {x:.3f}" for a, x in (s.get("weights") or {}).items()) or "—"
    means = ", ".join(f"{_esc(a)} {'—' if m is None else f'{m:.4f}'}"
                      for a, m in s["means"].items())
    source = f" <small>({_esc(s['source'])})</small>" if s.get("source") else ""
    if srm and srm.get("checked"):
        check = ("<b class='bad'>mismatch</b>" if srm["mismatch"] else "ok") + (
            f" <small>p {srm['p_adjusted']:.3g}</small>")
    else:
        check = "<small>not checked</small>"
    return (f"<tr class='segment-row' data-segment='{_esc(s['label'])}'>"
            f"<td>{_esc(s['label'])}{source}</td>"
            f"<td class='num'>{s['impressions']:,}</td><td class='num'>{s['share']:.3f}</td>"
            f"<td>{w}</td><td>{means}</td><td>{''.join(_effect(r) for r in effects)}</td>"
            f"<td>{check}</td></tr>")


def _chart(rows: list[dict[str, Any]], labels: dict[int, str]) -> str:
    """Per (segment, treatment) estimate with its confidence sequence, a zero line."""
    shown = [r for r in rows if r.get("estimate") is not None]
    if not shown:
        return "<p class='sub'>No segment has enough data for a test yet.</p>"
    finite = [v for r in shown for v in (r.get("ci_low"), r.get("ci_high"), r["estimate"])
              if v is not None and math.isfinite(v)]
    lo, hi = min([*finite, 0.0]), max([*finite, 0.0])
    span = (hi - lo) or 1.0
    lo, hi = lo - 0.05 * span, hi + 0.05 * span
    height = ROW_H * len(shown) + 2 * PAD

    def x(v: float | None, default: float) -> float:
        v = default if v is None else v
        return LABEL_W + (WIDTH - LABEL_W - PAD) * (v - lo) / (hi - lo)

    parts = [f"<line x1='{x(0.0, 0):.1f}' y1='{PAD / 2}' x2='{x(0.0, 0):.1f}' "
             f"y2='{height - PAD / 2}' stroke='#999' stroke-dasharray='3,3'/>"]
    for i, r in enumerate(shown):
        y = PAD + ROW_H * i + ROW_H / 2
        colour = "#1b7f3b" if r.get("significant") else "#3366aa"
        parts.append(
            f"<text x='4' y='{y + 4:.1f}' font-size='12'>{_esc(labels[r['segment_index']])}: "
            f"{_esc(r['arm'])}</text>"
            f"<line x1='{x(r.get('ci_low'), lo):.1f}' y1='{y:.1f}' "
            f"x2='{x(r.get('ci_high'), hi):.1f}' y2='{y:.1f}' stroke='{colour}' "
            f"stroke-width='2'/><circle cx='{x(r['estimate'], 0):.1f}' cy='{y:.1f}' r='4' "
            f"fill='{colour}'/>")
    parts.append(f"<text x='{LABEL_W}' y='{height - 2}' font-size='11'>{lo:+.3f}</text>"
                 f"<text x='{WIDTH - PAD - 40}' y='{height - 2}' font-size='11'>{hi:+.3f}</text>")
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{height}' "
            f"viewBox='0 0 {WIDTH} {height}' role='img'>{''.join(parts)}</svg>")


def contextual_section(data: ReportData) -> str:
    """The section ('' for a non-contextual experiment)."""
    cx = data.results.get("contextual") if isinstance(data.results, dict) else None
    if not cx:
        return ""
    if cx.get("error"):
        return f"<section id='contextual'><h2>Segments</h2><p>{_esc(cx['error'])}</p></section>"
    pz = cx.get("personalisation") or {}
    value = (f"<p id='personalisation'><b>{_esc(pz['summary'])}</b> (greedy learned policy "
             f"against the best single arm, off-policy on {pz['n']:,} matured impressions, "
             f"time-uniform {100 * (1 - pz['alpha']):.0f}% confidence sequence; the policy is "
             "evaluated on the data it learned from, so the estimate leans optimistic when "
             "segments barely differ)</p>" if pz.get("available") else
             f"<p id='personalisation'>Value of personalisation: {_esc(pz.get('reason'))}</p>")
    if not cx.get("segments"):
        return (f"<section id='contextual'><h2>Contextual policy</h2>{value}"
                "<p class='sub'>No categorical feature: no segments.</p></section>")
    eff = cx["effects"]
    srm = {s["segment_index"]: s for s in cx.get("srm") or []}
    body = "".join(_segment_row(s, [r for r in eff["rows"]
                                    if r["segment_index"] == s["segment_index"]],
                                srm.get(s["segment_index"])) for s in cx["segments"])
    labels = {s["segment_index"]: s["label"] for s in cx["segments"]}
    return f"""<section id="contextual"><h2>Contextual policy: segments</h2>{value}
<table><thead><tr><th>Segment</th><th>Impressions</th><th>Share</th>
<th>Weights (latest snapshot)</th><th>Mean reward</th>
<th>Effect vs control [confidence sequence]</th><th>SRM</th></tr></thead>
<tbody>{body}</tbody></table>
<figure id="chart-segments">{_chart(eff["rows"], labels)}
<figcaption>Each treatment's effect against the control in each segment: always-valid IPW test on
the segment's impressions with the logged P(arm | context); {eff['hypotheses']} hypotheses
(declared segments × treatments), p-values {_esc(eff['correction'])}-adjusted, confidence
sequences at {eff['cs_alpha']:.4f} each (green: significant).</figcaption></figure></section>"""
