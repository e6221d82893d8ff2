"""Ingestion handlers: pure functions from a batch of decoded records (plus the database
state they touch) to effects. No I/O here: the runner prefetches the state, calls
:func:`handle_batch`, and writes the returned :class:`Effects` together with the next
offsets in one transaction.

Reward attribution (per experiment): only feedback whose ``kind`` equals the experiment's
reward metric changes an impression's reward. Binary rewards: the reward becomes 1 on the first
positive feedback of that kind (later ones change nothing). Continuous rewards: the reward is
the sum of the values. Feedback counts only inside the attribution window,
``0 <= occurred_at - served_at <= attribution_window_s``.

Guardrail metrics (the experiment's ``guardrails``, :class:`MetricRule` here): every impression
of an experiment with guardrails carries a value per metric (``ImpressionState.metrics``:
key -> [value, feedback events]). A feedback metric starts at 0 and feedback of its kind inside
the attribution window moves it: ``any`` 0 -> 1 on the first value > 0, ``first`` 0 -> 1 on the
first event of the kind whatever its value, ``sum`` adds the value, ``mean`` keeps the running
mean of the values. An impression-field metric is the finite number at the context path when
the impression is ingested; an impression without one (missing, null, a string, a boolean) is
*not observed* for that metric: it enters neither the metric's plain nor its IPW sums (never
dead-lettered: the primary reward still counts it); an observed value counts as one event
(``feedback_n``) for the test's information gate. Each metric's per-arm sums
(:class:`ArmSums`, "reward" = the metric value) change exactly like the primary reward's
(old -> new), in the same :class:`Effects`, so they are written in the same transaction.

Per-arm sufficient statistics (:class:`armlab.core.evidence.ArmSums`, sharded by the partition
of the record that caused them). Because a reward can change after the impression was counted,
a reward change r_old -> r_new adds (r_new - r_old) to the sums and (r_new^2 - r_old^2) to the
sums of squares, each divided by p or p^2 for the inverse-propensity-weighted forms.

Interleaving experiments (``design: interleaving``) add nothing to these sums: their
impressions and clicks go to the unit credits and pair tallies of
:mod:`armlab.core.interleaving.credits` (refusals, crediting), on the same dedupe, window and
pending-feedback path.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from armlab.core.clock import as_utc
from armlab.core.event_records import (
    MAX_DLQ_DETAIL,
    MAX_DLQ_RAW_BYTES,
    OK_OUTCOMES,
    OUT_APPLIED,
    OUT_DUPLICATE,
    OUT_IMPRESSION,
    OUT_PENDING,
    OUT_RESOLVED,
    BatchState,
    Effects,
    ExperimentInfo,
    ImpressionState,
    MetricRule,
    PendingFeedback,
    RecordLike,
    Reject,
    pending_raw,
    referenced_ids,
)
from armlab.core.event_rewards import feedback_moves_metrics, feedback_moves_reward
from armlab.core.events import DecodeFailure, Event, FeedbackV1, ImpressionV1
from armlab.core.interleaving import credits as interleaving

__all__ = [
    "OUT_IMPRESSION",
    "OUT_APPLIED",
    "OUT_PENDING",
    "OUT_RESOLVED",
    "OUT_DUPLICATE",
    "OK_OUTCOMES",
    "MAX_DLQ_RAW_BYTES",
    "MAX_DLQ_DETAIL",
    "RecordLike",
    "MetricRule",
    "ExperimentInfo",
    "ImpressionState",
    "PendingFeedback",
    "BatchState",
    "Reject",
    "Effects",
    "handle_batch",
    "pending_raw",
    "referenced_ids",
]


class _Batch:
    """Mutable working set while one batch is handled."""

    def __init__(
        self,
        experiments: dict[str, ExperimentInfo],
        state: BatchState,
        feedback_topic: str,
        horizon: datetime | None = None,
        latest: datetime | None = None,
    ) -> None:
        self.horizon = None if horizon is None else as_utc(horizon)
        self.latest = None if latest is None else as_utc(latest)
        self.experiments = experiments
        self.by_id = {e.id: e for e in experiments.values()}
        self.state = state
        self.fx = Effects()
        self.feedback_topic = feedback_topic
        self.new_ids: set[str] = set()

    def reject(
        self, reason: str, detail: str, rec: RecordLike | None, raw: bytes | None = None,
        partition: int = 0,
    ) -> None:
        if rec is not None:
            r = Reject(reason, detail, rec.topic, rec.partition, rec.offset, rec.value, rec.key)
        else:
            r = Reject(reason, detail, self.feedback_topic, partition, -1, raw)
        self.fx.rejects.append(r)
        self.fx.counters[(reason, r.partition)] += 1
        self.fx.outcomes[(r.topic, reason)] += 1

    def ok(self, outcome: str, topic: str, partition: int) -> None:
        self.fx.counters[(outcome, partition)] += 1
        self.fx.outcomes[(topic, outcome)] += 1

    # -- impressions -------------------------------------------------------------------
    def expired(self, at: datetime, what: str, rec: RecordLike) -> bool:
        """Refuse an event older than the retention horizon (its stored copy, if any, may
        have been dropped, so it could no longer be told from a duplicate)."""
        if self.horizon is None or as_utc(at) >= self.horizon:
            return False
        self.reject("expired", f"{what} {at.isoformat()} is older than the retention horizon "
                    f"{self.horizon.isoformat()}", rec)
        return True

    def from_future(self, at: datetime, what: str, rec: RecordLike) -> bool:
        """Refuse an event stamped after ``latest`` (the consumer's clock plus the allowed
        skew): a wrong clock or unit would otherwise put it in the statistics and, for an
        impression, open an attribution window in the future."""
        if self.latest is None or as_utc(at) <= self.latest:
            return False
        self.reject("from_future", f"{what} {at.isoformat()} is later than the consumer's "
                    f"clock allows ({self.latest.isoformat()}: now plus the allowed skew)", rec)
        return True

    def _impression_refused(self, ev: ImpressionV1, rec: RecordLike
                            ) -> ExperimentInfo | None:
        """The experiment of ``ev``, or None when the impression is refused (unknown
        experiment or arm, not running, outside the time bounds)."""
        exp = self.experiments.get(ev.experiment_key)
        if exp is None:
            self.reject(
                "unknown_experiment", f"experiment {ev.experiment_key!r} is not registered", rec
            )
            return None
        if ev.arm_key not in exp.arms:
            self.reject(
                "unknown_arm",
                f"arm {ev.arm_key!r} is not an arm of {exp.key!r} ({sorted(exp.arms)})",
                rec,
            )
            return None
        if exp.not_running_at(ev.served_at):
            self.reject(
                "experiment_not_running",
                f"experiment {exp.key!r} was not running at {ev.served_at.isoformat()} "
                f"(status {exp.status})", rec,
            )
            return None
        refused = interleaving.impression_refusal(exp, ev)  # (after: a stopped experiment
        if refused is not None:  # serves its fixed arm's own list, without interleaving)
            self.reject(*refused, rec)
            return None
        if self.expired(ev.served_at, "served_at", rec) or \
                self.from_future(ev.served_at, "served_at", rec):
            return None
        return exp

    def _impression_seen(self, exp: ExperimentInfo, ev: ImpressionV1, rec: RecordLike) -> bool:
        """True when a stored impression already answers for ``ev`` (its redelivery, a
        conflicting copy, or another event with the same impression id); counted here."""
        st = self.state
        if ev.event_id in st.impression_event_ids:
            stored = st.impressions.get(ev.impression_id)
            if stored is not None and stored.event_id == ev.event_id and (
                stored.experiment_id, stored.arm_key, stored.propensity,
                as_utc(stored.served_at),
            ) == (exp.id, ev.arm_key, ev.propensity, as_utc(ev.served_at)):
                self.ok(OUT_DUPLICATE, rec.topic, rec.partition)
            else:
                self.reject(
                    "conflicting_duplicate",
                    f"event_id {ev.event_id!r} was already stored with different content "
                    "(impression_id, experiment, arm, propensity or served_at)", rec,
                )
            return True
        if ev.impression_id in st.impressions:
            self.reject(
                "duplicate_impression",
                f"impression_id {ev.impression_id!r} already exists with another event_id",
                rec,
            )
            return True
        return False

    def _start_metrics(self, exp: ExperimentInfo, imp: ImpressionState, ev: ImpressionV1,
                       partition: int) -> None:
        """Each guardrail metric's starting value on a new impression, into its sums."""
        imp.metrics = {}
        for rule in exp.guardrails:
            start = 0.0 if rule.feedback is not None else rule.read(ev.context)
            if start is None:
                continue  # not observed for this metric
            observed = rule.feedback is None  # a field's value is one observation
            imp.metrics[rule.key] = [start, 1 if observed else 0]
            g = self.fx.gstat(exp.id, ev.arm_key, rule.key, partition)
            g.add_impression(ev.propensity)
            if observed:
                g.add_feedback()  # the information gate counts observed values
            if start != 0.0:
                g.add_reward_change(0.0, start, ev.propensity)

    def impression(self, ev: ImpressionV1, rec: RecordLike) -> None:
        exp = self._impression_refused(ev, rec)
        if exp is None or self._impression_seen(exp, ev, rec):
            return
        st = self.state
        imp = ImpressionState(
            impression_id=ev.impression_id,
            event_id=ev.event_id,
            experiment_id=exp.id,
            arm_key=ev.arm_key,
            propensity=ev.propensity,
            served_at=ev.served_at,
            partition=rec.partition,
        )
        st.impressions[ev.impression_id] = imp
        st.impression_event_ids.add(ev.event_id)
        self.new_ids.add(ev.impression_id)
        self.fx.new_impressions.append(imp)
        self.fx.new_impression_rows.append(ev)
        if ev.interleaving is not None:  # no A/B statistics: its own tables
            interleaving.start_impression(exp, imp, ev, self.fx)
        else:
            self.fx.stat(exp.id, ev.arm_key, rec.partition).add_impression(ev.propensity)
        if exp.guardrails:
            self._start_metrics(exp, imp, ev, rec.partition)
        self.ok(OUT_IMPRESSION, rec.topic, rec.partition)
        # Feedback that arrived first waits in the ledger: apply it now.
        for pf in st.pending.pop(ev.impression_id, ()):
            status = self.attribute(
                imp, pf.experiment_key, pf.kind, pf.value, pf.occurred_at, rec.partition,
                rec=None, raw=lambda pf=pf: pending_raw(pf), src_partition=pf.partition,
                item_id=pf.item_id,
            )
            self.fx.feedback_status[pf.event_id] = status
            if status == "applied":
                self.ok(OUT_RESOLVED, self.feedback_topic, rec.partition)

    # -- feedback ----------------------------------------------------------------------
    def feedback(self, ev: FeedbackV1, rec: RecordLike) -> None:
        if self.expired(ev.occurred_at, "occurred_at", rec) or \
                self.from_future(ev.occurred_at, "occurred_at", rec):
            return
        st = self.state
        item_id = None if ev.item_id is None else str(ev.item_id)
        content = (ev.impression_id, ev.experiment_key, ev.kind, ev.value,
                   as_utc(ev.occurred_at), item_id)
        if ev.event_id in st.feedback_event_ids:
            stored = st.feedback_content.get(ev.event_id)
            if stored is None or stored == content:
                self.ok(OUT_DUPLICATE, rec.topic, rec.partition)
            else:
                self.reject(
                    "conflicting_duplicate",
                    f"event_id {ev.event_id!r} was already stored with different content "
                    "(impression_id, experiment, kind, value, occurred_at or item_id)", rec,
                )
            return
        exp = self.experiments.get(ev.experiment_key)
        if exp is None:
            self.reject(
                "unknown_experiment", f"experiment {ev.experiment_key!r} is not registered", rec
            )
            return
        st.feedback_event_ids.add(ev.event_id)
        st.feedback_content[ev.event_id] = content
        imp = st.impressions.get(ev.impression_id)
        if imp is None:
            self.fx.feedback_rows.append((ev, rec.partition, "pending"))
            st.pending.setdefault(ev.impression_id, []).append(
                PendingFeedback(
                    ev.event_id, ev.impression_id, ev.experiment_key, ev.kind, ev.value,
                    ev.occurred_at, rec.partition, item_id,
                )
            )
            self.ok(OUT_PENDING, rec.topic, rec.partition)
            return
        status = self.attribute(
            imp, ev.experiment_key, ev.kind, ev.value, ev.occurred_at, rec.partition, rec=rec,
            item_id=item_id,
        )
        self.fx.feedback_rows.append((ev, rec.partition, status))
        if status == "applied":
            self.ok(OUT_APPLIED, rec.topic, rec.partition)

    def attribute(
        self,
        imp: ImpressionState,
        experiment_key: str,
        kind: str,
        value: float,
        occurred_at: datetime,
        partition: int,
        *,
        rec: RecordLike | None,
        raw: Any = None,
        src_partition: int = 0,
        item_id: str | None = None,
    ) -> str:
        """Join one feedback to its impression; returns the ledger status."""
        exp = self.by_id.get(imp.experiment_id)
        if exp is None or exp.key != experiment_key:
            self.reject(
                "experiment_mismatch",
                f"feedback names experiment {experiment_key!r} but impression "
                f"{imp.impression_id!r} belongs to {exp.key if exp else imp.experiment_id!r}",
                rec, raw() if raw else None, src_partition,
            )
            return "rejected"
        refused = self._outside_window(exp, imp, occurred_at, rec, raw, src_partition)
        if refused is not None:
            return refused
        if imp.interleaving is not None:
            bad = interleaving.feedback_refusal(exp, imp, kind, item_id)
            if bad is not None:
                self.reject(*bad, rec, raw() if raw else None, src_partition)
                return "rejected"
        imp.feedback_count += 1
        if imp.impression_id not in self.new_ids:
            self.fx.impression_updates[imp.impression_id] = imp
        if imp.interleaving is not None:
            interleaving.credit_click(exp, imp, kind, value, item_id, partition, self.fx)
            return "applied"
        if imp.metrics:
            feedback_moves_metrics(self.fx, exp, imp, kind, value, partition)
        if kind == exp.reward_metric:
            feedback_moves_reward(self.fx, exp, imp, value, partition)
        return "applied"

    def _outside_window(self, exp: ExperimentInfo, imp: ImpressionState,
                        occurred_at: datetime, rec: RecordLike | None, raw: Any,
                        src_partition: int) -> str | None:
        """The ledger status when the feedback falls outside the attribution window (it is
        dead-lettered as ``before_impression`` or ``late``); None inside it."""
        dt = (as_utc(occurred_at) - as_utc(imp.served_at)).total_seconds()
        if dt < 0:
            self.reject(
                "before_impression",
                f"feedback at {occurred_at.isoformat()} precedes its impression "
                f"({imp.served_at.isoformat()})",
                rec, raw() if raw else None, src_partition,
            )
            return "late"
        if dt > exp.window_s:
            self.reject(
                "late",
                f"feedback {dt:.0f}s after its impression; attribution window is "
                f"{exp.window_s:.0f}s",
                rec, raw() if raw else None, src_partition,
            )
            return "late"
        return None


def handle_batch(
    decoded: Sequence[tuple[RecordLike, Event | DecodeFailure]],
    experiments: dict[str, ExperimentInfo],
    state: BatchState,
    *,
    feedback_topic: str,
    horizon: datetime | None = None,
    latest: datetime | None = None,
) -> Effects:
    """Turn a batch of decoded records into effects. Pure: mutates only ``state``.

    Records are handled in order, so an impression and its feedback in the same batch join
    whichever comes first. ``state`` must hold every stored impression, impression event_id,
    feedback event_id and pending feedback row that the batch references. Events whose own
    time (``served_at`` / ``occurred_at``) is before ``horizon`` (the retention horizon; None:
    no retention) are rejected as ``expired``; events whose own time is after ``latest``
    (the consumer's clock plus the allowed skew; None: no bound) as ``from_future``.
    """
    b = _Batch(experiments, state, feedback_topic, horizon, latest)
    for rec, ev in decoded:
        if isinstance(ev, DecodeFailure):
            b.reject(ev.reason, ev.detail, rec)
        elif isinstance(ev, ImpressionV1):
            b.impression(ev, rec)
        else:
            b.feedback(ev, rec)
    return b.fx
