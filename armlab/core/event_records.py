"""The values a batch of events is handled with and produces: the experiment as ingestion
sees it (:class:`ExperimentInfo`, its guardrail :class:`MetricRule`), the stored state a batch
touches (:class:`BatchState`, :class:`ImpressionState`, :class:`PendingFeedback`), and what it
changes (:class:`Effects`, :class:`Reject` for a dead letter), with the ids a batch references
(:func:`referenced_ids`) and a pending feedback's wire form (:func:`pending_raw`).
:mod:`armlab.core.event_effects` computes them."""

from __future__ import annotations

import base64
import hashlib
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import orjson

from armlab.core.clock import as_utc, utcnow
from armlab.core.events import DecodeFailure, Event, FeedbackV1, ImpressionV1
from armlab.core.evidence import ArmSums
from armlab.core.status import ENDED, ExperimentStatus

# Outcomes that are not rejections (counted, never dead-lettered).
OUT_IMPRESSION = "impression"
OUT_APPLIED = "feedback_applied"
OUT_PENDING = "feedback_pending"
OUT_RESOLVED = "pending_resolved"
OUT_DUPLICATE = "duplicate"
OK_OUTCOMES = frozenset({OUT_IMPRESSION, OUT_APPLIED, OUT_PENDING, OUT_RESOLVED, OUT_DUPLICATE})

#: A dead letter carries at most this many bytes of the original record (base64-encoded);
#: longer records keep their first MAX_DLQ_RAW_BYTES plus ``raw_length`` and ``raw_sha256``,
#: so every dead letter fits the DLQ producer's request size (1 MiB, set explicitly).
MAX_DLQ_RAW_BYTES = 256 * 1024
MAX_DLQ_DETAIL = 2000


class RecordLike(Protocol):
    """The part of a Kafka record the handlers read (kafka-python's ConsumerRecord fits)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class MetricRule:
    """How one guardrail metric is computed per impression (see the module doc)."""

    key: str
    aggregate: str  # any | first | sum | mean
    feedback: str | None = None  # feedback kind, or
    field: tuple[str, ...] = ()  # the context path of an impression field

    @classmethod
    def from_spec(cls, g: dict[str, Any]) -> MetricRule:
        """From a stored guardrail spec (``GuardrailSpec.model_dump()``)."""
        src = g.get("source") or {}
        path = src.get("impression_field")
        return cls(key=str(g["key"]), aggregate=str(g.get("aggregate") or "any"),
                   feedback=src.get("feedback"),
                   field=tuple(str(path).split(".")) if path else ())

    def read(self, context: dict[str, Any]) -> float | None:
        """The finite number at this rule's context path (None: not observed)."""
        node: Any = context
        for part in self.field:
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        if isinstance(node, bool) or not isinstance(node, (int, float)):
            return None
        value = float(node)
        return value if math.isfinite(value) else None

    def update(self, old: float, count: int, value: float) -> float:
        """The metric's new value after one more feedback event of its kind."""
        if self.aggregate == "any":
            return 1.0 if (value > 0 or old >= 1.0) else old
        if self.aggregate == "first":
            return 1.0
        if self.aggregate == "sum":
            return old + value
        return (old * count + value) / (count + 1)  # mean


@dataclass(frozen=True, slots=True)
class ExperimentInfo:
    """What ingestion needs to know about an experiment (loaded from the registry)."""

    id: int
    key: str
    arms: frozenset[str]
    reward_kind: str  # binary | continuous
    reward_metric: str
    window_s: float
    status: str = ExperimentStatus.RUNNING
    ended_at: datetime | None = None
    guardrails: tuple[MetricRule, ...] = ()
    # "ab" or "interleaving"; the unit of analysis ("request" | "user"); the rankers (arm keys
    # in the experiment's arm order: a pair (a, b) is kept with a before b in it).
    design: str = "ab"
    unit: str = "request"
    rankers: tuple[str, ...] = ()

    def not_running_at(self, served_at: datetime) -> bool:
        """True for a draft, and for a stopped/shipped experiment after it ended: impressions
        served then are not part of the experiment (dead-lettered, not counted)."""
        if self.status == ExperimentStatus.DRAFT:
            return True
        return (self.status in ENDED and self.ended_at is not None
                and as_utc(served_at) > as_utc(self.ended_at))


@dataclass(slots=True)
class ImpressionState:
    """An impression as stored (or as about to be inserted by this batch)."""

    impression_id: str
    event_id: str
    experiment_id: int
    arm_key: str
    propensity: float
    served_at: datetime
    reward: float = 0.0
    feedback_count: int = 0
    partition: int = 0
    # guardrail metric key -> [value, feedback events]; None without guardrails
    metrics: dict[str, list[float]] | None = None
    # An interleaved impression's log as stored in ``impressions.interleaving``: {"unit": the
    # unit of analysis' id, "teams": {item id: ranker}, "pairs": [[a, b, P(compared)], ...]
    # (a before b in the experiment's arm order), "clicks": {ranker: credited clicks},
    # "credited": [item ids already credited]}; None for an A/B impression.
    interleaving: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class PendingFeedback:
    """A feedback ledger row in status ``pending`` (its impression had not arrived)."""

    event_id: str
    impression_id: str
    experiment_key: str
    kind: str
    value: float
    occurred_at: datetime
    partition: int
    item_id: str | None = None  # the feedback's item_id as a string (interleaving credit)


@dataclass(slots=True)
class BatchState:
    """Database state a batch touches, prefetched by the runner inside the transaction."""

    impressions: dict[str, ImpressionState] = field(default_factory=dict)  # by impression_id
    impression_event_ids: set[str] = field(default_factory=set)
    feedback_event_ids: set[str] = field(default_factory=set)
    pending: dict[str, list[PendingFeedback]] = field(default_factory=dict)  # by impression_id
    # stored feedback content by event_id (impression_id, experiment_key, kind, value,
    # occurred_at, item_id as a string or None), to tell a redelivery from a conflicting
    # duplicate; absent: not compared
    feedback_content: dict[str, tuple[str, str, str, float, datetime, str | None]] = field(
        default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reject:
    """A record that goes to the dead-letter topic (and is counted by reason)."""

    reason: str
    detail: str
    topic: str
    partition: int
    offset: int
    raw: bytes | None
    key: bytes | None = None

    def to_dlq(self, group: str) -> bytes:
        """The DLQ record: JSON {reason, detail, topic, partition, offset, raw (base64),
        raw_length, group, at}. A record longer than MAX_DLQ_RAW_BYTES is truncated to its
        first MAX_DLQ_RAW_BYTES (``raw_truncated``: true) and carries ``raw_sha256`` of the
        whole original, so a dead letter is never too large for the DLQ topic."""
        raw = self.raw
        out: dict[str, Any] = {
            "reason": self.reason,
            "detail": self.detail[:MAX_DLQ_DETAIL],
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "raw": None,
            "raw_length": None if raw is None else len(raw),
            "group": group,
            "at": utcnow().isoformat(),
        }
        if raw is not None:
            if len(raw) > MAX_DLQ_RAW_BYTES:
                out["raw_truncated"] = True
                out["raw_sha256"] = hashlib.sha256(raw).hexdigest()
                raw = raw[:MAX_DLQ_RAW_BYTES]
            out["raw"] = base64.b64encode(raw).decode()
        return orjson.dumps(out)


@dataclass(slots=True)
class Effects:
    """Everything one batch changes. Written by the store in one transaction."""

    new_impressions: list[ImpressionState] = field(default_factory=list)
    new_impression_rows: list[ImpressionV1] = field(default_factory=list)
    impression_updates: dict[str, ImpressionState] = field(default_factory=dict)
    feedback_rows: list[tuple[FeedbackV1, int, str]] = field(default_factory=list)
    feedback_status: dict[str, str] = field(default_factory=dict)  # pending -> new status
    stats: dict[tuple[int, str, int], ArmSums] = field(default_factory=dict)
    # guardrail metric sums by (experiment id, arm key, metric key, partition)
    guardrail_stats: dict[tuple[int, str, str, int], ArmSums] = field(default_factory=dict)
    # interleaving: impressions per (experiment id, unit id); IPW credit difference per
    # (experiment id, unit id, a, b); per (experiment id, a, b, partition) the increments of
    # [compared, a_wins, b_wins, a_clicks, b_clicks] (tables in models_interleaving)
    interleaving_units: Counter[tuple[int, str]] = field(default_factory=Counter)
    interleaving_credits: dict[tuple[int, str, str, str], float] = field(default_factory=dict)
    interleaving_pairs: dict[tuple[int, str, str, int], list[int]] = field(default_factory=dict)
    counters: Counter[tuple[str, int]] = field(default_factory=Counter)  # (reason, partition)
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (topic, outcome)
    rejects: list[Reject] = field(default_factory=list)

    def stat(self, experiment_id: int, arm_key: str, partition: int) -> ArmSums:
        """The statistics this batch adds for one (experiment, arm, partition) shard."""
        key = (experiment_id, arm_key, partition)
        sums = self.stats.get(key)
        if sums is None:
            sums = self.stats[key] = ArmSums()
        return sums

    def gstat(self, experiment_id: int, arm_key: str, metric: str, partition: int) -> ArmSums:
        """The statistics this batch adds for one guardrail metric's shard."""
        key = (experiment_id, arm_key, metric, partition)
        sums = self.guardrail_stats.get(key)
        if sums is None:
            sums = self.guardrail_stats[key] = ArmSums()
        return sums


def pending_raw(pf: PendingFeedback) -> bytes:
    """Reconstruct the wire form of a pending feedback event for the DLQ."""
    return orjson.dumps(
        {
            "schema": "feedback.v1",
            "event_id": pf.event_id,
            "impression_id": pf.impression_id,
            "experiment_key": pf.experiment_key,
            "kind": pf.kind,
            "value": pf.value,
            "occurred_at": as_utc(pf.occurred_at).isoformat(),
            **({} if pf.item_id is None else {"item_id": pf.item_id}),
        }
    )


def referenced_ids(
    decoded: Iterable[tuple[RecordLike, Event | DecodeFailure]],
) -> tuple[set[str], set[str], set[str], set[str]]:
    """Ids the runner must prefetch: (impression ids to load, impression event ids,
    feedback event ids, impression ids whose pending feedback to load)."""
    imp_ids: set[str] = set()
    imp_events: set[str] = set()
    fb_events: set[str] = set()
    arriving: set[str] = set()
    for _, ev in decoded:
        if isinstance(ev, ImpressionV1):
            imp_ids.add(ev.impression_id)
            imp_events.add(ev.event_id)
            arriving.add(ev.impression_id)
        elif isinstance(ev, FeedbackV1):
            imp_ids.add(ev.impression_id)
            fb_events.add(ev.event_id)
    return imp_ids, imp_events, fb_events, arriving
