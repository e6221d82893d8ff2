"""The report's charts, each a matplotlib figure rendered as inline SVG (no external assets).

* :func:`chart_weights`: allocation weights over time (allocation_snapshots);
* :func:`chart_reward`: cumulative reward per arm, with the running mean reward per arm beside
  it;
* :func:`chart_cs`: the always-valid confidence sequence of each treatment minus control over
  time, with the point where the sequential test stopped (:func:`stopping_point`);
* :func:`chart_guardrails`: each guardrail's excess harm and its confidence sequence.

Charts are drawn with matplotlib's object API (``Figure`` + Agg/SVG backends, never
``pyplot``), so rendering is thread-safe inside the API's worker threads.
:mod:`armlab.entrypoints.report` assembles them into the HTML page and re-exports them.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from armlab.core.clock import utcnow
from armlab.core.decisions import Decision
from armlab.services.report import ReportData

# Okabe-Ito colour-blind-safe palette; the control is always drawn in grey.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442",
           "#000000")
CONTROL_COLOUR = "#7f7f7f"
MAX_LEGEND_ARMS = 12



def _colours(arms: Sequence[str], control: str) -> dict[str, str]:
    out: dict[str, str] = {}
    i = 0
    for a in arms:
        if a == control:
            out[a] = CONTROL_COLOUR
        else:
            out[a] = PALETTE[i % len(PALETTE)]
            i += 1
    return out


def _origin(data: ReportData) -> datetime:
    times = [t for t, _ in data.snapshots] + [t for t, _, _, _ in data.impressions]
    times += [d["at"] for d in data.decisions]
    if data.first_impression_at is not None:
        times.append(data.first_impression_at)
    cands = [t for t in times if t is not None]
    if data.started_at is not None:
        cands.append(data.started_at)
    return min(cands) if cands else utcnow()


def _svg(fig: Any) -> str:
    from matplotlib.backends.backend_svg import FigureCanvasSVG

    FigureCanvasSVG(fig)
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    # Drop the XML prolog and DOCTYPE: inline SVG inside HTML starts at <svg.
    return text[text.index("<svg"):]


def _new_figure(w: float, h: float) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    fig.patch.set_facecolor("white")
    return fig


def _style(ax: Any) -> None:
    ax.grid(True, color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _scale(data: ReportData) -> tuple[datetime, float, str]:
    origin = _origin(data)
    ends = [t for t, _ in data.snapshots] + [t for t, _, _, _ in data.impressions]
    span = max(((t - origin).total_seconds() for t in ends), default=0.0)
    if span < 180:
        return origin, 1.0, "seconds since start"
    if span < 3 * 3600:
        return origin, 60.0, "minutes since start"
    if span < 3 * 86400:
        return origin, 3600.0, "hours since start"
    return origin, 86400.0, "days since start"


def chart_weights(data: ReportData) -> str:
    """Stacked allocation weights of every arm at each snapshot."""
    origin, div, unit = _scale(data)
    keys = [a["key"] for a in data.arms]
    colours = _colours(keys, data.control)
    fig = _new_figure(9, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    if data.snapshots:
        xs = [(t - origin).total_seconds() / div for t, _ in data.snapshots]
        ys = [[w.get(k, 0.0) for _, w in data.snapshots] for k in keys]
        if len(xs) == 1:  # one snapshot: show it as a flat band over a unit of time
            xs = [xs[0], xs[0] + 1.0 / div]
            ys = [y * 2 for y in ys]
        labels = keys if len(keys) <= MAX_LEGEND_ARMS else [""] * len(keys)
        ax.stackplot(xs, ys, labels=labels, colors=[colours[k] for k in keys], alpha=0.9,
                     step="post", edgecolor="white", linewidth=0.3)
        ax.set_xlim(xs[0], xs[-1])
    else:
        ax.text(0.5, 0.5, "no allocation snapshots yet", ha="center", va="center",
                transform=ax.transAxes, color="#666")
    ax.set_ylim(0, 1)
    ax.set_ylabel("traffic share")
    ax.set_xlabel(unit)
    ax.set_title("Allocation weights over time", loc="left", fontsize=12, fontweight="bold")
    _style(ax)
    if data.snapshots and len(keys) <= MAX_LEGEND_ARMS:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9)
    return _svg(fig)


def chart_reward(data: ReportData) -> str:
    """Cumulative reward per arm (left) and running mean reward per arm (right)."""
    origin, div, unit = _scale(data)
    keys = [a["key"] for a in data.arms]
    colours = _colours(keys, data.control)
    fig = _new_figure(11, 3.8)
    ax1 = fig.add_subplot(1, 2, 1)
    ax2 = fig.add_subplot(1, 2, 2)
    series: dict[str, tuple[list[float], list[float], list[float]]] = {
        k: ([], [], []) for k in keys
    }
    cum: dict[str, float] = dict.fromkeys(keys, 0.0)
    cnt: dict[str, int] = dict.fromkeys(keys, 0)
    skip: dict[str, int] = dict.fromkeys(keys, 0)  # points before the 21st impression
    for t, arm, n, r in data.impressions:
        if arm not in series:
            series[arm] = ([], [], [])
            cum[arm], cnt[arm], skip[arm] = 0.0, 0, 0
            colours.setdefault(arm, PALETTE[len(colours) % len(PALETTE)])
        cum[arm] += r
        cnt[arm] += n
        xs, cs, ms = series[arm]
        xs.append((t - origin).total_seconds() / div)
        cs.append(cum[arm])
        ms.append(cum[arm] / cnt[arm])
        if cnt[arm] <= 20:
            skip[arm] += 1
    few = len(series) <= MAX_LEGEND_ARMS
    for arm, (xs, cs, ms) in series.items():
        if not xs:
            continue
        label = f"{arm} ({cnt[arm]} imp.)" if few else None
        ax1.step(xs, cs, where="post", color=colours[arm], label=label, linewidth=1.6)
        start = min(len(ms) - 1, skip[arm])  # the means of the first 20 impressions are noise
        ax2.plot(xs[start:], ms[start:], color=colours[arm], linewidth=1.4)
    if not data.impressions:
        for ax in (ax1, ax2):
            ax.text(0.5, 0.5, "no impressions yet", ha="center", va="center",
                    transform=ax.transAxes, color="#666")
    ax1.set_title("Cumulative reward per arm", loc="left", fontsize=12, fontweight="bold")
    ax1.set_ylabel("cumulative reward")
    ax2.set_title("Running mean reward per arm", loc="left", fontsize=12, fontweight="bold")
    ax2.set_ylabel("reward per impression")
    for ax in (ax1, ax2):
        ax.set_xlabel(unit)
        _style(ax)
    if data.impressions and few:
        ax1.legend(loc="upper left", frameon=False, fontsize=9)
    fig.subplots_adjust(wspace=0.28)
    return _svg(fig)


def stopping_point(data: ReportData) -> dict[str, Any] | None:
    """The first decision that was not 'continue' (the sequential test's stopping point)."""
    for d in data.decisions:
        if d["decision"] and d["decision"] != Decision.CONTINUE:
            return d
    return None


def chart_cs(data: ReportData) -> str:
    """Confidence sequence of (treatment - control) per treatment arm, with the stop marked."""
    origin, div, unit = _scale(data)
    arms = [a["key"] for a in data.arms if not a["control"]]
    by_arm: dict[str, list[dict[str, Any]]] = {a: [] for a in arms}
    for d in data.decisions:
        by_arm.setdefault(d["arm"], []).append(d)
    shown = [a for a in by_arm if by_arm[a]] or arms[:1]
    colours = _colours([a["key"] for a in data.arms], data.control)
    ncols = 2 if len(shown) > 1 else 1
    nrows = max(1, (len(shown) + ncols - 1) // ncols)
    fig = _new_figure(11 if ncols == 2 else 9, 3.2 * nrows)
    stop = stopping_point(data)
    stop_x = (stop["at"] - origin).total_seconds() / div if stop else None
    alpha = data.sequential.get("alpha", 0.05)
    for i, arm in enumerate(shown):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        rows = [d for d in by_arm.get(arm, []) if d["ci_low"] is not None]
        c = colours.get(arm, PALETTE[0])
        if rows:
            xs = [(d["at"] - origin).total_seconds() / div for d in rows]
            lo = [max(d["ci_low"], -1e6) for d in rows]
            hi = [min(d["ci_high"], 1e6) for d in rows]
            est = [d["estimate"] if d["estimate"] is not None else float("nan") for d in rows]
            ax.fill_between(xs, lo, hi, step="post", color=c, alpha=0.25, linewidth=0,
                            label=f"{int(round((1 - alpha) * 100))}% confidence sequence")
            ax.step(xs, est, where="post", color=c, linewidth=1.6, label="estimate")
            finite = [v for v in lo + hi if abs(v) < 1e6]
            if finite:
                span = max(finite) - min(finite)
                ax.set_ylim(min(min(finite), 0) - 0.1 * span, max(max(finite), 0) + 0.1 * span)
        else:
            ax.text(0.5, 0.5, "no sequential-test decisions yet", ha="center", va="center",
                    transform=ax.transAxes, color="#666")
        ax.axhline(0.0, color="#333", linewidth=0.9, linestyle="--")
        if stop_x is not None:
            ax.axvline(stop_x, color="#D55E00", linewidth=1.4, linestyle=":")
            if stop and stop["arm"] == arm:
                y = stop["estimate"] if stop["estimate"] is not None else 0.0
                ax.plot([stop_x], [y], marker="o", color="#D55E00", markersize=7, zorder=5)
                ax.annotate(f"stop: {stop['decision']}", (stop_x, y), xytext=(-8, 10),
                            textcoords="offset points", color="#D55E00", fontsize=9,
                            fontweight="bold", ha="right",
                            bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none",
                                  "alpha": 0.85})
        ax.set_title(f"{arm} − {data.control}", loc="left", fontsize=11, fontweight="bold")
        ax.set_xlabel(unit)
        ax.set_ylabel("difference in mean reward")
        _style(ax)
        if rows and i == 0:
            ax.legend(loc="lower right", frameon=False, fontsize=8)
    height = 3.2 * nrows
    fig.subplots_adjust(hspace=0.55, wspace=0.25, top=1.0 - 0.75 / height)
    fig.suptitle("Always-valid confidence sequences, treatment − control", x=0.01, ha="left",
                 y=1.0 - 0.1 / height, fontsize=12, fontweight="bold")
    return _svg(fig)


def chart_guardrails(data: ReportData) -> str:
    """Per guardrail and treatment arm: the excess harm (harm beyond the tolerated margin)
    and its always-valid confidence sequence at every recorded look; above 0 is a breach."""
    origin, div, unit = _scale(data)
    series: dict[tuple[str, str], list[tuple[float, dict[str, Any]]]] = {}
    for d in data.decisions:
        x = (d["at"] - origin).total_seconds() / div
        for g in d.get("guardrails") or []:
            series.setdefault((str(g["metric"]), str(g["arm"])), []).append((x, g))
    if not series:
        return ""
    colours = _colours([a["key"] for a in data.arms], data.control)
    keys = sorted(series)
    ncols = 2 if len(keys) > 1 else 1
    nrows = (len(keys) + ncols - 1) // ncols
    fig = _new_figure(11 if ncols == 2 else 9, 3.0 * nrows)
    for i, (metric, arm) in enumerate(keys):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        pts = [(x, g) for x, g in series[(metric, arm)] if g.get("excess") is not None]
        c = colours.get(arm, PALETTE[0])
        if pts:
            xs = [x for x, _ in pts]
            lo = [max(float(g.get("excess_low") or -1e6), -1e6) for _, g in pts]
            hi = [min(float(g.get("excess_high") or 1e6), 1e6) for _, g in pts]
            ax.fill_between(xs, lo, hi, step="post", color=c, alpha=0.25, linewidth=0,
                            label="confidence sequence")
            ax.step(xs, [float(g["excess"]) for _, g in pts], where="post", color=c,
                    linewidth=1.6, label="excess harm")
            breach = next((x for x, g in pts if g.get("state") == "breached"), None)
            if breach is not None:
                ax.axvline(breach, color="#D55E00", linewidth=1.4, linestyle=":")
                ax.annotate("breach", (breach, 0), xytext=(4, 8), textcoords="offset points",
                            color="#D55E00", fontsize=9, fontweight="bold")
            finite = [v for v in lo + hi if abs(v) < 1e6]
            if finite:
                span = max(finite) - min(finite) or 1.0
                ax.set_ylim(min(min(finite), 0) - 0.1 * span, max(max(finite), 0) + 0.1 * span)
        else:
            ax.text(0.5, 0.5, "not informative yet", ha="center", va="center",
                    transform=ax.transAxes, color="#666")
        ax.axhline(0.0, color="#333", linewidth=0.9, linestyle="--")
        ax.set_title(f"{metric}: {arm} vs {data.control}", loc="left", fontsize=11,
                     fontweight="bold")
        ax.set_xlabel(unit)
        ax.set_ylabel("excess harm")
        _style(ax)
        if pts and i == 0:
            ax.legend(loc="upper left", frameon=False, fontsize=8)
    height = 3.0 * nrows
    fig.subplots_adjust(hspace=0.6, wspace=0.25, top=1.0 - 0.75 / height)
    fig.suptitle("Guardrails: excess harm beyond the margin (above 0 = harm shown)", x=0.01,
                 ha="left", y=1.0 - 0.1 / height, fontsize=12, fontweight="bold")
    return _svg(fig)
