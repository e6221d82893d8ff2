"""What an event may carry (the rules of :mod:`armlab.core.events`): the schema names, the
size limits, the feedback kinds, and the checks that every value fits the database (unit ids,
identifiers, JSON values: finite numbers, 64-bit integers, no NUL or lone surrogates, bounded
nesting). ``/assign`` and ``/recommend`` apply the same checks to what they accept."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from pydantic import ValidationInfo
from pydantic_core import PydanticCustomError

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
