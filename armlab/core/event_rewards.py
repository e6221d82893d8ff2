"""How one feedback event inside the attribution window moves an impression's values and the
per-arm sums (old -> new, see :mod:`armlab.core.event_effects`): the primary reward
(:func:`feedback_moves_reward`) and the guardrail metrics it feeds
(:func:`feedback_moves_metrics`). Pure: they change only the impression state and the
:class:`~armlab.core.event_records.Effects` handed in."""

from __future__ import annotations

from armlab.core.event_records import Effects, ExperimentInfo, ImpressionState


def feedback_moves_metrics(fx: Effects, exp: ExperimentInfo, imp: ImpressionState, kind: str,
                           value: float, partition: int) -> None:
    """Move each guardrail metric fed by feedback of ``kind`` (old -> new in its sums)."""
    assert imp.metrics is not None
    for rule in exp.guardrails:
        cur = imp.metrics.get(rule.key) if rule.feedback == kind else None
        if cur is None:
            continue
        g_old, count = cur[0], int(cur[1])
        g_new = rule.update(g_old, count, value)
        imp.metrics[rule.key] = [g_new, count + 1]
        g = fx.gstat(exp.id, imp.arm_key, rule.key, partition)
        g.add_feedback()
        if g_new != g_old:
            g.add_reward_change(g_old, g_new, imp.propensity)


def feedback_moves_reward(fx: Effects, exp: ExperimentInfo, imp: ImpressionState,
                          value: float, partition: int) -> None:
    """The primary reward after one more feedback of its kind (old -> new in the sums)."""
    old = imp.reward
    if exp.reward_kind == "binary":
        new = 1.0 if (value > 0 or old >= 1.0) else old
    else:
        new = old + value
    sums = fx.stat(exp.id, imp.arm_key, partition)
    sums.add_feedback()
    if new != old:
        sums.add_reward_change(old, new, imp.propensity)
        imp.reward = new
