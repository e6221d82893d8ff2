"""Why a raw record is not a valid event (:class:`DecodeFailure`): the stable reason codes that
label dead letters and ``ingest_counters`` rows, and how :func:`armlab.core.events.decode` maps
a size check or pydantic's first validation error to one of them."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from armlab.core.event_values import KNOWN_SCHEMAS, MAX_RECORD_BYTES


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
    "bad_interleaving": "bad_interleaving",
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
