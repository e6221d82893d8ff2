"""Event schemas shared by the producer SDK, the HTTP bridge and the consumers.

Two versioned JSON events travel on Kafka:

* ``impression.v1`` on ``armlab.impressions``: an arm served a unit, with the propensity the
  policy logged (needed for inverse-propensity weighting and off-policy evaluation).
* ``feedback.v1`` on ``armlab.feedback``: something the unit did after an impression
  (click, conversion, rating, dwell, purchase...), joined to its impression by impression_id.

Validation is strict (no silent coercions: ``"0.5"`` is not a propensity, ``1700000000`` is
not a timestamp) and bounded (record size, string lengths, item count) so a hostile or broken
producer cannot make a consumer allocate without limit. It is also the ONE rule for what can be
stored: every value of an accepted event fits the database (propensity at least
MIN_PROPENSITY so 1/p^2 stays finite, integers in the int64 range, finite numbers only, no NUL
or lone-surrogate characters in any string or key, JSON nesting at most MAX_JSON_DEPTH), so
what the SDK, ``POST /v1/events``, ``/assign`` and ``/recommend`` accept, the consumer accepts
and can write. :func:`decode` turns raw Kafka bytes
into an event or a :class:`DecodeFailure` with a stable machine-readable ``reason``; those
reasons label the dead-letter records and the ``ingest_counters`` rows.

Layout: the limits and the storable-value checks live in :mod:`armlab.core.event_values`, the
reason codes of a failed decode in :mod:`armlab.core.event_failures`; this module holds the
event models, :func:`decode`, :func:`parse_event` and the builders, and re-exports the rest.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from armlab.core.clock import utcnow
from armlab.core.event_failures import DecodeFailure, _classify, _json_failure, _precheck
from armlab.core.event_values import (
    _ID_PATTERN,
    FEEDBACK_KINDS,
    FEEDBACK_SCHEMA,
    IMPRESSION_SCHEMA,
    INT64_MAX,
    INT64_MIN,
    KNOWN_SCHEMAS,
    MAX_CONTEXT_KEYS,
    MAX_ID_LEN,
    MAX_ITEM_LEN,
    MAX_ITEMS,
    MAX_JSON_DEPTH,
    MAX_RECORD_BYTES,
    MAX_TIMESTAMP,
    MAX_UNIT_ID_LEN,
    MIN_PROPENSITY,
    MIN_TIMESTAMP,
    FeedbackKind,
    _check_items,
    _check_json,
    json_value_problem,
    unit_id_problem,
)
from armlab.errors import InvalidEvent

__all__ = [
    "FEEDBACK_KINDS", "FEEDBACK_SCHEMA", "IMPRESSION_SCHEMA", "INT64_MAX", "INT64_MIN",
    "KNOWN_SCHEMAS", "MAX_CONTEXT_KEYS", "MAX_ID_LEN", "MAX_ITEMS", "MAX_ITEM_LEN",
    "MAX_JSON_DEPTH", "MAX_RECORD_BYTES", "MAX_TIMESTAMP", "MAX_UNIT_ID_LEN", "MIN_PROPENSITY",
    "MIN_TIMESTAMP", "AnyEvent", "DecodeFailure", "Event", "FeedbackKind", "FeedbackV1",
    "ImpressionV1", "InterleavingLog", "PairPropensity", "decode", "json_value_problem",
    "make_feedback", "make_impression", "new_id", "parse_event", "unit_id_problem",
]


# (The pattern refuses NUL and control characters; pydantic refuses lone surrogates in a str
# field, and the JSON parser refuses them in the wire form.)
Ident = Annotated[
    str, Field(strict=True, min_length=1, max_length=MAX_ID_LEN, pattern=_ID_PATTERN)
]
UnitId = Annotated[
    str, Field(strict=True, min_length=1, max_length=MAX_UNIT_ID_LEN, pattern=_ID_PATTERN)
]
# Strict: JSON accepts only ISO-8601 strings (a bare number is ambiguous: s? ms?), Python
# only datetime objects; the range catches unit mistakes (ms vs s, zero dates).
Timestamp = Annotated[
    AwareDatetime, Field(strict=True, ge=MIN_TIMESTAMP, lt=MAX_TIMESTAMP)
]
# (int64 range and string content are checked by json_value_problem on the whole list)
ItemId = Annotated[str, Field(strict=True, min_length=1, max_length=MAX_ITEM_LEN)] | Annotated[
    int, Field(strict=True)
]


def new_id() -> str:
    """A fresh random identifier (UUID4 hex, 32 characters)."""
    return uuid.uuid4().hex


class _Event(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, allow_inf_nan=False, populate_by_name=True
    )

    def to_json(self) -> bytes:
        """The wire form: compact UTF-8 JSON with the ``schema`` field.

        Raises :class:`InvalidEvent` (``too_large``) past MAX_RECORD_BYTES: the consumer
        would dead-letter it anyway, so the producer refuses it up front."""
        raw = self.model_dump_json(by_alias=True, exclude_none=True).encode()
        if len(raw) > MAX_RECORD_BYTES:
            raise InvalidEvent(
                f"event is {len(raw)} bytes; at most {MAX_RECORD_BYTES}", reason="too_large"
            )
        return raw


def _bad(detail: str) -> PydanticCustomError:
    return PydanticCustomError("bad_interleaving", "{detail}", {"detail": detail})


class PairPropensity(BaseModel):
    """P(rankers ``a`` and ``b`` were both merged into this request's list) under the
    ranker choice that served it (1.0 when every ranker enters every request)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    a: Ident
    b: Ident
    propensity: Annotated[float, Field(strict=True, ge=MIN_PROPENSITY, le=1.0)]


class InterleavingLog(BaseModel):
    """What an interleaved impression logs (``design: interleaving``): the rankers merged
    into the list, the team (ranker) that placed each shown item (``teams[i]`` placed
    ``items[i]``, at position i), the draft order of the rounds, and the probability of each
    compared pair (omitted: every pair of ``rankers`` with probability 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    rankers: Annotated[list[Ident], Field(min_length=2, max_length=256)]
    teams: Annotated[list[Ident], Field(max_length=MAX_ITEMS)]
    draft: Annotated[list[list[Ident]], Field(max_length=MAX_ITEMS)] = Field(
        default_factory=list)
    pairs: Annotated[list[PairPropensity], Field(max_length=32_640)] = Field(
        default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> InterleavingLog:
        rankers = set(self.rankers)
        if len(rankers) != len(self.rankers):
            raise _bad("interleaving.rankers: a ranker is listed twice")
        for i, t in enumerate(self.teams):
            if t not in rankers:
                raise _bad(f"interleaving.teams.{i}: {t!r} is not one of the rankers")
        seen: set[frozenset[str]] = set()
        for i, p in enumerate(self.pairs):
            pair = frozenset((p.a, p.b))
            if p.a == p.b or not pair <= rankers or pair in seen:
                raise _bad(f"interleaving.pairs.{i}: a pair of two different rankers of "
                           "this list, each pair once")
            seen.add(pair)
        return self

    def pair_propensity(self, a: str, b: str) -> float:
        """P(a and b compared); 1.0 when no pairs are logged (every ranker entered)."""
        if not self.pairs:
            return 1.0
        for p in self.pairs:
            if {p.a, p.b} == {a, b}:
                return p.propensity
        return 0.0


class ImpressionV1(_Event):
    """An arm served a unit. ``propensity`` is P(this arm | context) logged at serve time.

    An interleaved impression (``design: interleaving``) also carries ``interleaving``; its
    ``arm_key`` is the ranker that placed the first item and ``propensity`` the probability
    of its set of rankers."""

    schema_: Literal["impression.v1"] = Field(alias="schema")
    event_id: Ident
    impression_id: Ident
    experiment_key: Ident
    arm_key: Ident
    unit_id: UnitId
    propensity: Annotated[float, Field(strict=True, ge=MIN_PROPENSITY, le=1.0)]
    served_at: Timestamp
    items: Annotated[
        list[ItemId], Field(max_length=MAX_ITEMS), AfterValidator(_check_items)
    ] = Field(default_factory=list)
    # Bytes are bounded by MAX_RECORD_BYTES for the whole record (checked before parsing,
    # and by make_impression for events built in Python).
    context: Annotated[dict[str, Any], Field(max_length=MAX_CONTEXT_KEYS)] = Field(
        default_factory=dict
    )

    interleaving: InterleavingLog | None = None

    @field_validator("context")
    @classmethod
    def _context_storable(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        return _check_json(v, info)

    @model_validator(mode="after")
    def _teams_match_items(self) -> ImpressionV1:
        il = self.interleaving
        if il is not None:
            if len(il.teams) != len(self.items):
                raise _bad(f"interleaving.teams: {len(il.teams)} teams for {len(self.items)} "
                           "items (one team per shown item)")
            if self.arm_key not in il.rankers:
                raise _bad(f"arm_key: {self.arm_key!r} is not one of interleaving.rankers")
        return self


class FeedbackV1(_Event):
    """A unit's reaction to an impression. ``value``: 1.0 for a click, a rating, seconds..."""

    schema_: Literal["feedback.v1"] = Field(alias="schema")
    event_id: Ident
    impression_id: Ident
    experiment_key: Ident
    kind: FeedbackKind
    value: Annotated[float, Field(strict=True, ge=-1e12, le=1e12)] = 1.0
    occurred_at: Timestamp
    # The shown item the feedback is about (optional; an interleaving experiment needs it to
    # credit a click to the ranker that placed the item).
    item_id: ItemId | None = None

    @field_validator("item_id")
    @classmethod
    def _item_storable(cls, v: str | int | None) -> str | int | None:
        return v if v is None else _check_items([v])[0]


Event = ImpressionV1 | FeedbackV1
AnyEvent = Annotated[ImpressionV1 | FeedbackV1, Field(discriminator="schema_")]
_ANY_ADAPTER: TypeAdapter[Event] = TypeAdapter(AnyEvent)


def decode(
    raw: bytes | None, expected: type[ImpressionV1] | type[FeedbackV1] | None = None
) -> Event | DecodeFailure:
    """Parse and validate one raw record. Never raises for bad input.

    ``expected`` pins the event type a topic carries (a feedback record on the impressions
    topic is ``wrong_topic``); ``None`` accepts either schema.
    """
    pre = _precheck(raw)
    if pre is not None:
        return pre
    assert raw is not None
    try:
        if expected is None:
            return _ANY_ADAPTER.validate_json(raw)
        return expected.model_validate_json(raw)
    except ValidationError as exc:
        failure = _json_failure(raw, exc)
        if expected is not None and failure.reason == "unknown_schema":
            # A valid event of the other type on this topic is a routing error, not garbage.
            other = decode(raw, None)
            if not isinstance(other, DecodeFailure):
                return DecodeFailure(
                    "wrong_topic", f"a {other.schema_} event on the {expected.__name__} topic",
                    "schema",
                )
        return failure


def parse_event(data: Mapping[str, Any] | bytes | str | _Event) -> Event:
    """Validate one event from a dict / JSON; raises :class:`InvalidEvent` naming the field."""
    if isinstance(data, (ImpressionV1, FeedbackV1)):
        return data
    raw = data.encode() if isinstance(data, str) else data
    if not isinstance(raw, bytes):
        # Dicts go through the JSON form so the rules are the wire rules (timestamps as
        # ISO strings, no coercions).
        try:
            raw = orjson.dumps(dict(raw))
        except TypeError as exc:
            raise InvalidEvent(
                f"event is not JSON-serialisable: {exc}", reason="wrong_type"
            ) from exc
    result = decode(raw)
    if isinstance(result, DecodeFailure):
        raise InvalidEvent(result.detail, reason=result.reason)
    return result


def make_impression(
    *,
    experiment_key: str,
    arm_key: str,
    unit_id: str,
    propensity: float,
    impression_id: str | None = None,
    event_id: str | None = None,
    served_at: datetime | None = None,
    items: list[str | int] | tuple[str | int, ...] = (),
    context: Mapping[str, Any] | None = None,
    interleaving: Mapping[str, Any] | InterleavingLog | None = None,
) -> ImpressionV1:
    """Build a validated impression, filling ids and ``served_at`` (now, UTC) when omitted."""
    if isinstance(propensity, float) and not math.isfinite(propensity):
        raise InvalidEvent(f"propensity: must be finite, got {propensity}", reason="non_finite")
    try:
        return ImpressionV1(
            schema_=IMPRESSION_SCHEMA,
            event_id=event_id or new_id(),
            impression_id=impression_id or new_id(),
            experiment_key=experiment_key,
            arm_key=arm_key,
            unit_id=unit_id,
            propensity=propensity,
            served_at=served_at or utcnow(),
            items=list(items),
            context=dict(context or {}),
            interleaving=(interleaving if interleaving is None
                          or isinstance(interleaving, InterleavingLog)
                          else InterleavingLog.model_validate(dict(interleaving))),
        )
    except ValidationError as exc:
        f = _classify(exc)
        raise InvalidEvent(f.detail, reason=f.reason) from None


def make_feedback(
    *,
    impression_id: str,
    experiment_key: str,
    kind: str,
    value: float = 1.0,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
    item_id: str | int | None = None,
) -> FeedbackV1:
    """Build a validated feedback event, filling ``event_id`` and ``occurred_at`` when omitted."""
    try:
        return FeedbackV1(
            schema_=FEEDBACK_SCHEMA,
            event_id=event_id or new_id(),
            impression_id=impression_id,
            experiment_key=experiment_key,
            kind=kind,
            value=value,
            occurred_at=occurred_at or utcnow(),
            item_id=item_id,
        )
    except ValidationError as exc:
        f = _classify(exc)
        raise InvalidEvent(f.detail, reason=f.reason) from None
