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
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args

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
)
from pydantic_core import PydanticCustomError

from armlab.core.clock import utcnow
from armlab.errors import InvalidEvent

IMPRESSION_SCHEMA = "impression.v1"
FEEDBACK_SCHEMA = "feedback.v1"
KNOWN_SCHEMAS = (IMPRESSION_SCHEMA, FEEDBACK_SCHEMA)

# Size limits. A record larger than MAX_RECORD_BYTES is rejected before it is parsed.
MAX_RECORD_BYTES = 64 * 1024
MAX_ID_LEN = 64  # event_id, impression_id, experiment_key, arm_key (DB columns are 64)
MAX_UNIT_ID_LEN = 128
MAX_ITEMS = 1000
MAX_ITEM_LEN = 128
MAX_CONTEXT_KEYS = 64
#: Smallest propensity an event may carry: 1/p and 1/p^2 (the inverse-propensity weights the
#: statistics sum) stay far inside float64 and the database's double precision.
MIN_PROPENSITY = 1e-9
#: Deepest nesting of lists/objects inside ``context`` (the context object itself is depth 1).
MAX_JSON_DEPTH = 16
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# Timestamps outside this range are almost always unit mistakes (ms vs s, zero dates).
MIN_TIMESTAMP = datetime(2000, 1, 1, tzinfo=UTC)
MAX_TIMESTAMP = datetime(2200, 1, 1, tzinfo=UTC)

FeedbackKind = Literal[
    "click", "conversion", "rating", "dwell", "purchase", "add_to_cart", "like", "share",
    "skip", "custom",
]
FEEDBACK_KINDS: tuple[str, ...] = get_args(FeedbackKind)

# Identifiers: printable, no whitespace, control characters or lone surrogates.
_ID_PATTERN = r"^[^\s\x00-\x1f\x7f]+$"
_ID_RE = re.compile(r"^[^\s\x00-\x1f\x7f\ud800-\udfff]+$")


def unit_id_problem(unit_id: object) -> str | None:
    """Why ``unit_id`` is not a valid unit id (None when it is): the one rule shared by the
    event schema, ``/assign`` and ``/recommend`` (1-MAX_UNIT_ID_LEN characters, no
    whitespace, control characters or lone surrogates)."""
    if not isinstance(unit_id, str):
        return "must be a string"
    if not 1 <= len(unit_id) <= MAX_UNIT_ID_LEN:
        return f"must be 1-{MAX_UNIT_ID_LEN} characters, got {len(unit_id)}"
    if _ID_RE.match(unit_id) is None:
        return "must not contain whitespace or control characters"
    return None


def _bad_string(s: str) -> str | None:
    if "\x00" in s:
        return "contains a NUL character"
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            return "contains a lone surrogate (not valid UTF-8)"
    return None


def json_value_problem(value: object, path: str, depth: int = 1) -> tuple[str, str] | None:
    """(reason, detail) when ``value`` cannot be stored as JSON in the database, else None.

    Walks dicts (string keys), lists/tuples, strings, ints, floats, bools and None; rejects
    NaN/Infinity (``non_finite``), integers outside int64 (``out_of_range``), NUL or lone
    surrogates in strings and keys (``bad_string``), nesting deeper than MAX_JSON_DEPTH
    (``too_deep``) and any other type (``wrong_type``)."""
    stack: list[tuple[object, str, int]] = [(value, path, depth)]
    while stack:
        v, where, d = stack.pop()
        if v is None or isinstance(v, bool):
            continue
        if isinstance(v, str):
            bad = _bad_string(v)
            if bad:
                return "bad_string", f"{where}: string {bad}"
        elif isinstance(v, int):
            if not INT64_MIN <= v <= INT64_MAX:
                return "out_of_range", f"{where}: integer outside the 64-bit range"
        elif isinstance(v, float):
            if not math.isfinite(v):
                return "non_finite", f"{where}: {v} is not a finite number"
        elif isinstance(v, dict | list | tuple):
            if d > MAX_JSON_DEPTH:
                return "too_deep", f"{where}: nested deeper than {MAX_JSON_DEPTH} levels"
            if isinstance(v, dict):
                for k, item in v.items():
                    if not isinstance(k, str):
                        return "wrong_type", f"{where}: object keys must be strings"
                    bad = _bad_string(k)
                    if bad:
                        return "bad_string", f"{where}: a key {bad}"
                    stack.append((item, f"{where}.{k}", d + 1))
            else:
                stack.extend((item, f"{where}.{i}", d + 1) for i, item in enumerate(v))
        else:
            return "wrong_type", f"{where}: {type(v).__name__} is not a JSON value"
    return None


def _check_items(items: list[Any]) -> list[Any]:
    for i, x in enumerate(items):
        if type(x) is int:
            if not INT64_MIN <= x <= INT64_MAX:
                raise PydanticCustomError("out_of_range", "{detail}", {
                    "detail": f"items.{i}: integer outside the 64-bit range"})
        elif "\x00" in x:
            raise PydanticCustomError("bad_string", "{detail}", {
                "detail": f"items.{i}: string contains a NUL character"})
    return items


def _check_json(value: Any, info: ValidationInfo) -> Any:
    bad = json_value_problem(value, info.field_name or "value", 0)
    if bad is not None:
        raise PydanticCustomError(bad[0], "{detail}", {"detail": bad[1]})
    return value


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
        raw = self.model_dump_json(by_alias=True).encode()
        if len(raw) > MAX_RECORD_BYTES:
            raise InvalidEvent(
                f"event is {len(raw)} bytes; at most {MAX_RECORD_BYTES}", reason="too_large"
            )
        return raw


class ImpressionV1(_Event):
    """An arm served a unit. ``propensity`` is P(this arm | context) logged at serve time."""

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

    @field_validator("context")
    @classmethod
    def _context_storable(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        return _check_json(v, info)


class FeedbackV1(_Event):
    """A unit's reaction to an impression. ``value``: 1.0 for a click, a rating, seconds..."""

    schema_: Literal["feedback.v1"] = Field(alias="schema")
    event_id: Ident
    impression_id: Ident
    experiment_key: Ident
    kind: FeedbackKind
    value: Annotated[float, Field(strict=True, ge=-1e12, le=1e12)] = 1.0
    occurred_at: Timestamp


Event = ImpressionV1 | FeedbackV1
AnyEvent = Annotated[ImpressionV1 | FeedbackV1, Field(discriminator="schema_")]
_ANY_ADAPTER: TypeAdapter[Event] = TypeAdapter(AnyEvent)


@dataclass(frozen=True, slots=True)
class DecodeFailure:
    """Why a raw record is not a valid event: a stable ``reason`` code and a human ``detail``."""

    reason: str
    detail: str
    field: str | None = None


# pydantic error type -> reason code (first matching error wins; see _classify).
_TYPE_REASONS = {
    "missing": "missing_field",
    "extra_forbidden": "unknown_field",
    "finite_number": "non_finite",
    "timezone_aware": "bad_timestamp",
    "datetime_parsing": "bad_timestamp",
    "datetime_from_date_parsing": "bad_timestamp",
    "datetime_type": "bad_timestamp",
    "string_too_long": "too_long",
    "too_long": "too_long",
    "string_too_short": "empty_field",
    "string_pattern_mismatch": "bad_identifier",
    # json_value_problem's reasons (raised as custom errors with these types)
    "non_finite": "non_finite",
    "out_of_range": "out_of_range",
    "bad_string": "bad_string",
    "too_deep": "too_deep",
    "wrong_type": "wrong_type",
}


def _classify(exc: ValidationError) -> DecodeFailure:
    """Map pydantic's first error to one reason code, naming the field."""
    errors = exc.errors(include_url=False)
    # Prefer schema errors: an unknown version explains every later error.
    errors.sort(key=lambda e: 0 if e.get("loc", ("",))[:1] == ("schema",) else 1)
    e = errors[0]
    loc = tuple(str(p) for p in e.get("loc", ()))
    # Discriminated unions put the tag first in loc ("impression.v1", "field"): drop it.
    if loc and loc[0] in KNOWN_SCHEMAS:
        loc = loc[1:]
    # Union members add their type name to loc ("items.0.constrained-str"): keep the path.
    loc = tuple(p for p in loc if p not in ("constrained-str", "str", "int", "float"))
    field = ".".join(loc) or None
    etype = e.get("type", "")
    msg = e.get("msg", "invalid")
    top = loc[0] if loc else ""
    if etype == "json_invalid":
        return DecodeFailure("not_json", msg)
    if etype in ("model_type", "model_attributes_type", "dict_type") and not loc:
        return DecodeFailure("not_object", "the record is JSON but not an object")
    if top == "schema" or etype in ("union_tag_invalid", "union_tag_not_found"):
        if etype in ("missing", "union_tag_not_found"):
            return DecodeFailure("missing_field", "field 'schema' is required", "schema")
        return DecodeFailure(
            "unknown_schema", f"schema {e.get('input')!r} is not one of {KNOWN_SCHEMAS}", "schema"
        )
    if top in ("served_at", "occurred_at") and etype != "missing":
        reason = "bad_timestamp"
    elif top == "context" and etype == "too_long":
        reason = "too_large"
    elif etype in _TYPE_REASONS:
        reason = _TYPE_REASONS[etype]
    elif top == "propensity" and etype in ("greater_than", "greater_than_equal",
                                           "less_than_equal"):
        reason = "bad_propensity"
    elif top == "kind" and etype == "literal_error":
        reason = "unknown_kind"
    elif etype in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        reason = "out_of_range"
    else:
        reason = "wrong_type"
    return DecodeFailure(reason, f"{field or 'record'}: {msg}", field)


def _precheck(raw: bytes | None) -> DecodeFailure | None:
    if raw is None:
        return DecodeFailure("empty", "record has no value (tombstone)")
    if len(raw) > MAX_RECORD_BYTES:
        return DecodeFailure(
            "too_large", f"record is {len(raw)} bytes; at most {MAX_RECORD_BYTES}"
        )
    if not raw.strip():
        return DecodeFailure("not_json", "record is empty")
    return None


def _json_failure(raw: bytes, exc: ValidationError) -> DecodeFailure:
    failure = _classify(exc)
    if failure.reason == "not_json":
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as uexc:
            return DecodeFailure("bad_utf8", f"invalid UTF-8 at byte {uexc.start}")
    return failure


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
        )
    except ValidationError as exc:
        f = _classify(exc)
        raise InvalidEvent(f.detail, reason=f.reason) from None
