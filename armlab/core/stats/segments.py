"""Per-segment effects and sample-ratio checks of a contextual experiment, valid under the
contextual allocation that produced the data.

Segments are the combinations of levels of the policy's categorical features
(``ContextSpec`` of :mod:`armlab.core.policies.context_features`, ``other`` included); a policy with
no categorical feature has one segment (everything) and no per-segment analysis.

Why the IPW test stays valid per segment. A contextual policy serves arm k to a request with
context x with a propensity p_t(k | x_t) that is fixed before the arm is drawn, and logs it.
For the impressions of segment g (x_t in g),

    Z_t = 1{A_t = b} R_t / p_t(b | x_t) - 1{A_t = a} R_t / p_t(a | x_t)

has conditional mean mu_b(x_t) - mu_a(x_t) given the past and x_t, so with contexts drawn
i.i.d. (the users arriving are not chosen by the policy) the running sum over the segment's
impressions, minus t_g times the segment's average effect delta_g = E[mu_b(x) - mu_a(x) | x in
g], is a martingale; the exploration floor bounds its increments. The platform's IPW test
(:func:`armlab.core.stats.adaptive.ipw_msprt`, the kernel with its control variate and robust
variance) therefore applies to the segment's own per-arm sums with t = the segment's
impressions. The same argument makes the per-arm test of :mod:`armlab.core.decisions` valid
under a contextual policy: the propensities it sums are the ones given the context.

Multiplicity: m = (declared segments) x (treatments) hypotheses, fixed by the features before
any data. p-values are Holm-adjusted (or Bonferroni) over all m (a segment without data counts
with p = 1); the confidence sequences are at alpha / m (Bonferroni), so they cover every
segment's effect simultaneously.

tau² per segment: Howard et al.'s horizon rule (:func:`armlab.core.stats.adaptive.
planned_variance`) at the segment's share of the planned horizon, from the segment's pooled
variance, recomputed at every look (the analysis is stateless: what the results page shows is
this look's always-valid p-value and confidence sequence, not a running minimum). Both inputs
converge as data accrue; the validity grid (:mod:`armlab.core.contextual_validity`) runs
exactly this rule at every look and counts a false positive if ANY look rejects.

SRM per segment: :func:`armlab.core.stats.adaptive.srm_check` on the segment's sums (observed
arm counts against the sum of logged propensities), Bonferroni over the declared segments.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from armlab.core.evidence import ArmSums
from armlab.core.stats.adaptive import informative, ipw_msprt, planned_variance, srm_check
from armlab.core.stats.msprt import bonferroni_adjust, holm_adjust, log_lambda, tau2_for_horizon
from armlab.errors import ArmlabError, StatsError

#: alpha of the per-segment SRM check (as the experiment-level one), before Bonferroni.
SEGMENT_SRM_ALPHA = 0.001
#: (arm, reward, propensity, context) of one matured impression.
ContextRow = tuple[str, float, float, Mapping[str, Any] | None]


class Segmenter(Protocol):
    """What the analysis needs of the policy's feature encoder
    (:class:`armlab.core.policies.context_features.ContextSpec` is one; statistics do not import
    policies)."""

    @property
    def n_segments(self) -> int: ...
    def segment_index(self, context: Mapping[str, Any]) -> int: ...
    def segment_label(self, index: int) -> dict[str, str]: ...


@dataclass(frozen=True)
class SegmentTable:
    """Per-segment, per-arm IPW sums: ``sums[g][arm]``; ``labels[g]`` the feature -> level
    mapping of segment g; ``skipped`` rows whose arm is unknown or whose context the features
    cannot read."""

    labels: tuple[dict[str, str], ...]
    sums: tuple[dict[str, ArmSums], ...]
    skipped: int = 0

    @property
    def impressions(self) -> list[float]:
        return [sum(s.n for s in seg.values()) for seg in self.sums]


def segment_label_text(label: Mapping[str, str]) -> str:
    """``device=mobile, country=de`` (``all`` for the empty label)."""
    return ", ".join(f"{k}={v}" for k, v in label.items()) or "all"


def segment_indices(spec: Segmenter, contexts: Sequence[Mapping[str, Any] | None]
                    ) -> npt.NDArray[np.int64]:
    """Each context's segment index; -1 where the features cannot read it."""
    out = np.empty(len(contexts), dtype=np.int64)
    for i, ctx in enumerate(contexts):
        try:
            out[i] = spec.segment_index(ctx or {})
        except ArmlabError:
            out[i] = -1
    return out


def segment_table(spec: Segmenter, arms: Sequence[str], rows: Sequence[ContextRow],
                  indices: npt.NDArray[np.int64] | None = None) -> SegmentTable:
    """The per-segment sums of ``rows`` (every impression counted once, its reward as
    attributed; the propensity is P(arm | context) as logged). ``indices``: the rows' segment
    indices when the caller has them (:func:`segment_indices`). Rows of an unknown arm, with a
    propensity outside (0, 1] or an unreadable context are skipped (and counted)."""
    g_n, k_n = spec.n_segments, len(arms)
    pos = {a: i for i, a in enumerate(arms)}
    a_idx = np.fromiter((pos.get(r[0], -1) for r in rows), dtype=np.int64, count=len(rows))
    p = np.fromiter((r[2] for r in rows), dtype=np.float64, count=len(rows))
    r = np.fromiter((r[1] for r in rows), dtype=np.float64, count=len(rows))
    g = segment_indices(spec, [row[3] for row in rows]) if indices is None else indices
    ok = (a_idx >= 0) & (g >= 0) & (p > 0) & (p <= 1)
    flat, p, r = g[ok] * k_n + a_idx[ok], p[ok], r[ok]
    one = np.ones_like(p)
    values = {"n": one, "reward_sum": r, "reward_sumsq": r * r, "ipw_n": 1 / p,
              "ipw_sum": r / p, "ipw_sumsq": r * r / (p * p), "ipw_n_sq": 1 / (p * p),
              # continuous rewards count their non-zero values as events
              "feedback_n": (r != 0).astype(np.float64)}
    cols = {f: np.bincount(flat, weights=v, minlength=g_n * k_n).reshape(g_n, k_n)
            for f, v in values.items()}
    sums = tuple({a: ArmSums(**{f: float(c[gi, ki]) for f, c in cols.items()})
                  for ki, a in enumerate(arms)} for gi in range(g_n))
    labels = tuple(spec.segment_label(gi) for gi in range(g_n))
    return SegmentTable(labels, sums, int((~ok).sum()))


def pooled_variance(sums: Sequence[ArmSums], binary: bool) -> float:
    """The pooled reward variance of the segment (p(1 - p) for binary rewards)."""
    n = sum(s.n for s in sums)
    if n < 2:
        return 0.0
    mean = sum(s.reward_sum for s in sums) / n
    if binary:
        return mean * (1.0 - mean)
    return max(sum(s.reward_sumsq for s in sums) / n - mean * mean, 0.0) * n / (n - 1)


def segment_tau2(sigma2: float, share: float, horizon: float, k: int, floor: float,
                 alpha: float) -> float:
    """tau² of a segment's test: the horizon rule at Var(D) the segment reaches with ``share``
    of ``horizon`` impressions (see the module doc)."""
    v = planned_variance(sigma2, max(horizon * share, 1.0), k, method="ipw", floor=floor)
    return tau2_for_horizon(v, alpha)


@dataclass(frozen=True)
class SegmentDesign:
    """What the per-segment analysis needs of the experiment."""

    control: str
    treatments: tuple[str, ...]
    alpha: float = 0.05
    binary: bool = True
    min_samples: int = 100
    min_events: int = 30
    horizon: float = 20_000.0
    floor: float = 0.05
    correction: str = "holm"


def _effect_row(d: SegmentDesign, g: int, arm: str, seg: Mapping[str, ArmSums],
                share: float, cs_alpha: float) -> dict[str, Any]:
    """One (segment, treatment) test at this look (p = 1 and no interval without data)."""
    a, b = seg[d.control], seg[arm]
    t = sum(s.n for s in seg.values())
    row: dict[str, Any] = {
        "segment_index": g, "arm": arm, "n_control": a.n, "n_treatment": b.n,
        "mean_control": a.mean, "mean_treatment": b.mean, "estimate": None,
        "p_value": 1.0, "ci_low": None, "ci_high": None, "valid": False,
        "reason": "too few samples",
    }
    sigma2 = pooled_variance(list(seg.values()), d.binary)
    k = len(d.treatments) + 1
    if not (sigma2 > 0 and t >= 2 and informative(a, b, binary=d.binary,
                                                  min_samples=d.min_samples,
                                                  min_events=d.min_events)):
        return row
    try:
        tau2 = segment_tau2(sigma2, share, d.horizon, k, d.floor, d.alpha)
        r = ipw_msprt(t, a, b, tau2=tau2, alpha=cs_alpha, binary=d.binary,
                      min_samples=d.min_samples, min_events=d.min_events)
    except StatsError as exc:
        return {**row, "reason": exc.message}
    row.update(estimate=r.estimate, p_value=r.p_now, valid=r.valid, reason=r.reason,
               ci_low=r.ci_low_now if math.isfinite(r.ci_low_now) else None,
               ci_high=r.ci_high_now if math.isfinite(r.ci_high_now) else None)
    return row


def segment_effects(table: SegmentTable, d: SegmentDesign) -> dict[str, Any]:
    """Every (segment, treatment) effect against the control with multiplicity control over
    all declared segments x treatments (module doc). Rows only for segments with data."""
    g_n = len(table.sums)
    m = g_n * max(len(d.treatments), 1)
    cs_alpha = d.alpha / m
    imps = table.impressions
    total = sum(imps)
    rows = [
        _effect_row(d, g, arm, table.sums[g], imps[g] / total if total else 0.0, cs_alpha)
        for g in range(g_n) if imps[g] > 0 for arm in d.treatments
    ]
    raw = [r["p_value"] for r in rows] + [1.0] * (m - len(rows))
    adjust = holm_adjust if d.correction == "holm" else bonferroni_adjust
    adjusted = adjust(raw) if raw else []
    for r, p_adj in zip(rows, adjusted, strict=False):
        r["segment"] = table.labels[r["segment_index"]]
        r["p_adjusted"] = p_adj
        r["significant"] = bool(p_adj <= d.alpha)
    return {"hypotheses": m, "cs_alpha": cs_alpha, "correction": d.correction, "rows": rows}


def segment_srm(table: SegmentTable, *, min_samples: int = 100,
                alpha: float = SEGMENT_SRM_ALPHA) -> list[dict[str, Any]]:
    """The always-valid SRM check of every segment with data; ``p_adjusted`` Bonferroni over
    the declared segments, ``mismatch`` = p_adjusted <= alpha."""
    g_n = len(table.sums)
    out: list[dict[str, Any]] = []
    for g, seg in enumerate(table.sums):
        if not any(s.n > 0 for s in seg.values()):
            continue
        res = srm_check({k: s.n for k, s in seg.items()}, {k: s.ipw_n for k, s in seg.items()},
                        {k: s.ipw_n_sq for k, s in seg.items()}, alpha=alpha,
                        min_samples=min_samples)
        p_adj = min(1.0, g_n * res.p_value)
        out.append({
            "segment_index": g, "segment": table.labels[g], "checked": res.checked,
            "reason": res.reason, "p_value": res.p_value, "p_adjusted": p_adj,
            "mismatch": bool(res.checked and p_adj <= alpha),
            "observed": res.observed, "expected": res.expected,
        })
    return out


def segment_srm_p(n: Any, ipw_n: Any, ipw_n_sq: Any, tau2: float, min_samples: int) -> Any:
    """Vectorised :func:`srm_check` p-value (Bonferroni over arms) for arrays (..., K) of one
    segment's per-arm n, ipw_n, ipw_n_sq: the validity grid's copy of the platform's check."""
    t = n.sum(axis=-1, keepdims=True)
    ok = t >= max(min_samples, 2)
    tt = np.where(ok, t, 1.0)
    mean = ipw_n / tt - 1.0
    sigma2 = np.maximum((ipw_n_sq - 2.0 * ipw_n + tt) / tt - mean * mean, 0.0)
    good = ok & (sigma2 > 0)
    llr = np.where(good, log_lambda(mean, np.where(good, sigma2 / tt, 1.0), tau2), 0.0)
    p = np.where(good, np.minimum(1.0, np.exp(-np.maximum(llr, 0.0))), 1.0)
    return np.minimum(1.0, n.shape[-1] * p.min(axis=-1))


__all__ = [
    "SEGMENT_SRM_ALPHA", "ContextRow", "SegmentDesign", "SegmentTable", "Segmenter",
    "pooled_variance", "segment_effects", "segment_label_text", "segment_srm",
    "segment_indices", "segment_srm_p", "segment_table", "segment_tau2",
]
