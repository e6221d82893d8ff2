"""The report's section for an interleaving experiment (``design: interleaving``).

``interleaving``: the Condorcet winner, the table per pair of rankers (units, mean preference
of a over b with its confidence sequence, always-valid p and Holm p, decision, compared
impressions, wins and clicks per side, win rate, P(compared)), the rankers' choice
probabilities, and ``chart-pairs``: each pair's confidence sequence over the recorded looks
(inline SVG, like the other charts)."""

from __future__ import annotations

from typing import Any

from armlab.entrypoints.report_charts import PALETTE, _new_figure, _scale, _style, _svg
from armlab.entrypoints.report_format import esc as _esc
from armlab.entrypoints.report_format import fmt as _fmt
from armlab.services.report import ReportData


def _bound(v: Any, inf: str) -> str:
    return inf if v is None else _fmt(v)


def _pair_row(p: dict[str, Any]) -> str:
    decided = f"{p['winner']} better" if p.get("winner") else "undecided"
    return (
        f"<tr class='pair-row' data-pair='{_esc(p['a'])}|{_esc(p['b'])}'>"
        f"<td><b>{_esc(p['a'])}</b> vs <b>{_esc(p['b'])}</b></td>"
        f"<td class='num'>{_fmt(p.get('n_units'), 0)}</td>"
        f"<td class='num'>{_fmt(p.get('estimate'))}</td>"
        f"<td>[{_bound(p.get('ci_low'), '-∞')}, {_bound(p.get('ci_high'), '∞')}]</td>"
        f"<td class='num'>{_fmt(p.get('p_value'))}</td>"
        f"<td class='num'>{_fmt(p.get('p_adjusted'))}</td>"
        f"<td title='{_esc(p.get('reason'))}'>{_esc(decided)}</td>"
        f"<td class='num'>{_fmt(p.get('compared'))}</td>"
        f"<td class='num'>{_fmt(p.get('a_wins'))} : {_fmt(p.get('b_wins'))}</td>"
        f"<td class='num'>{_fmt(p.get('win_rate_a'), 3)}</td>"
        f"<td class='num'>{_fmt(p.get('a_clicks'))} : {_fmt(p.get('b_clicks'))}</td>"
        f"<td class='num'>{_fmt(p.get('propensity'), 3)}</td></tr>")


def chart_pairs(data: ReportData) -> str:
    """Each pair's confidence sequence and estimate over the recorded looks."""
    looks = data.interleaving_looks
    pairs = [(p["a"], p["b"]) for p in (looks[-1][1] if looks else [])]
    if not pairs:
        return "<p>No recorded look of the interleaving test yet.</p>"
    origin, div, unit = _scale(data)
    ncols = 2 if len(pairs) > 1 else 1
    nrows = (len(pairs) + ncols - 1) // ncols
    fig = _new_figure(11 if ncols == 2 else 9, 3.0 * nrows)
    for i, (a, b) in enumerate(pairs):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        pts = [((at - origin).total_seconds() / div, q) for at, ps in looks for q in ps
               if (q["a"], q["b"]) == (a, b) and q.get("ci_low") is not None
               and q.get("ci_high") is not None]
        c = PALETTE[i % len(PALETTE)]
        if pts:
            xs = [x for x, _ in pts]
            ax.fill_between(xs, [q["ci_low"] for _, q in pts], [q["ci_high"] for _, q in pts],
                            step="post", color=c, alpha=0.25, linewidth=0,
                            label="confidence sequence")
            ax.step(xs, [q["estimate"] for _, q in pts], where="post", color=c,
                    linewidth=1.6, label="mean preference")
            if i == 0:
                ax.legend(loc="lower right", frameon=False, fontsize=8)
        else:
            ax.text(0.5, 0.5, "no informative look yet", ha="center", va="center",
                    transform=ax.transAxes, color="#666")
        ax.axhline(0.0, color="#333", linewidth=0.9, linestyle="--")
        ax.set_title(f"{a} vs {b} (> 0: {a} preferred)", loc="left", fontsize=11,
                     fontweight="bold")
        ax.set_xlabel(unit)
        _style(ax)
    fig.subplots_adjust(hspace=0.6, wspace=0.25)
    return _svg(fig)


def interleaving_section(data: ReportData) -> str:
    """The section (empty for an A/B experiment)."""
    il = data.results.get("interleaving") if isinstance(data.results, dict) else None
    if not il:
        return ""
    winner = il.get("condorcet_winner")
    head = (f"<p>Condorcet winner: <b id='condorcet-winner'>{_esc(winner)}</b>"
            if winner else "<p>Condorcet winner: none decided yet")
    head += (f" · {_fmt(il.get('units'), 0)} units · {il.get('looks', 0)} recorded looks · "
             f"alpha {_fmt(il.get('alpha'))} (Holm over pairs; confidence sequences at "
             f"{_fmt(il.get('cs_alpha'))} each)")
    if il.get("stop"):
        head += f"<br>Test decided: {_esc(il.get('stop_reason'))}"
    head += "</p>"
    choice = il.get("choice") or {}
    enter = ", ".join(f"{_esc(r)} {_fmt(p, 3)}" for r, p in (choice.get("enter") or {}).items())
    tail = (f"<p id='ranker-choice'>Rankers per request: {_esc(choice.get('m'))} · "
            f"P(ranker enters a request): {enter}</p>" if enter else "")
    table = (
        "<table id='pairs'><thead><tr><th>pair</th><th>units</th><th>preference of a</th>"
        "<th>confidence sequence</th><th>always-valid p</th><th>Holm p</th><th>decision</th>"
        "<th>compared</th><th>wins a : b</th><th>win rate a</th><th>clicks a : b</th>"
        "<th>P(compared)</th></tr></thead><tbody>"
        + "".join(_pair_row(p) for p in il.get("pairs") or []) + "</tbody></table>")
    return (f"<section id='interleaving'><h2>Interleaving: pairs of rankers</h2>{head}{table}"
            f"{tail}<figure id='chart-pairs'>{chart_pairs(data)}<figcaption>Each pair: the "
            "mean per-unit preference of the first ranker over the second (credit difference) "
            "and its always-valid confidence sequence at every recorded look; the dashed line "
            "is no preference.</figcaption></figure></section>")
