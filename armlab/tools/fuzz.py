"""A seeded corpus of hostile records for the consumer (the fuzz test and ``armlab bench fuzz``).

:func:`fuzz_records` yields ``n`` records, each a :class:`FuzzRecord` with the topic it goes
to (``"impression"`` or ``"feedback"``), its raw bytes (or None: a tombstone) and the family
that made it:

* ``bytes``: arbitrary bytes (random length, sometimes valid UTF-8, sometimes not);
* ``json``: arbitrary JSON values (nested lists/objects of random scalars);
* ``extreme``: a valid-looking event with one number replaced by an extreme one (tiny and
  huge floats, subnormals, integers past 64 bits, NaN/Infinity tokens, 1e999);
* ``string``: one string field (or a context key/value, or an item) with control characters,
  NUL, a lone surrogate escape, whitespace, or past its length limit;
* ``nesting``: context nested up to 200 levels, or wide;
* ``swap``: one field's value replaced by a value of every other JSON type;
* ``size``: records from just under to well past the record-size limit (up to 900 KB);
* ``structure``: truncated, duplicated keys, wrong schema, missing or unknown fields,
  tombstones, the other topic's schema.

Every event-shaped record names ``experiment_key`` (a running experiment the caller
registered with arms ``arms``), so the records that happen to be valid are counted against it
and exercise the database path; ids are unique per record (``fz<i>...``) and feedback points
at impression ids that never arrive, so no fuzz record can join a good event. The caller
checks the accounting: every record is counted or dead-lettered.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

FAMILIES = ("bytes", "json", "extreme", "string", "nesting", "swap", "size", "structure")
#: Relative frequency of each family (oversized records are heavy, so they are rarer).
WEIGHTS = {"bytes": 1.0, "json": 1.0, "extreme": 2.0, "string": 2.0, "nesting": 0.5,
           "swap": 2.0, "size": 0.05, "structure": 1.0}

_EXTREME_NUMBERS: tuple[str, ...] = (
    "1e-300", "1e-160", "5e-324", "2.2250738585072014e-308", "1e-9", "9.99e-10", "1e308",
    "-1e308", "1e999", "-1e999", "NaN", "Infinity", "-Infinity", "0", "-0.0", "1", "1.0000001",
    "18446744073709551616", "-9223372036854775809", "9223372036854775807",
    "123456789012345678901234567890123456789", "1e12", "1.0000000001e12", "-1e12", "0.5",
)
_BAD_STRINGS: tuple[str, ...] = (
    "\\u0000", "a\\u0000b", "\\ud800", "x\\udfff", "\\ud83d", "tab\\there", "new\\nline",
    "sp ace", "\\u007f", "\\u001b[31m", "\\u2028", "\\ufeff", "", " ", "\\\\", "\\\"",
)


@dataclass(frozen=True, slots=True)
class FuzzRecord:
    topic: str  # "impression" | "feedback"
    value: bytes | None
    family: str


def _day() -> str:
    """Midnight UTC two days ago (ISO date): recent enough for a consumer's retention, the
    same on every call made on one day (the corpus stays deterministic)."""
    return (datetime.now(UTC) - timedelta(days=2)).date().isoformat()


def _impression(i: int, experiment_key: str, arm: str) -> dict[str, Any]:
    return {
        "schema": "impression.v1", "event_id": f"fz{i}e", "impression_id": f"fz{i}i",
        "experiment_key": experiment_key, "arm_key": arm, "unit_id": f"fz{i}u",
        "propensity": 0.5, "served_at": f"{_day()}T00:00:00+00:00",
        "items": ["m1", 2], "context": {"page": "home", "n": 1},
    }


def _feedback(i: int, experiment_key: str) -> dict[str, Any]:
    return {
        "schema": "feedback.v1", "event_id": f"fz{i}f", "impression_id": f"fz{i}never",
        "experiment_key": experiment_key, "kind": "click", "value": 1.0,
        "occurred_at": f"{_day()}T00:00:05+00:00",
    }


def _dump(d: dict[str, Any]) -> str:
    return json.dumps(d, separators=(",", ":"), ensure_ascii=False)


def _with_token(d: dict[str, Any], path: Sequence[str], token: str) -> bytes:
    """``d`` as JSON with the value at ``path`` replaced by a raw JSON token (so NaN, 1e999
    and 20-digit integers travel exactly as written)."""
    marker = "\u0001MARK\u0001"
    target = d
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = marker
    return _dump(d).replace(json.dumps(marker, ensure_ascii=False), token).encode(
        "utf-8", "surrogatepass")


def _random_scalar(rng: random.Random) -> Any:
    c = rng.randrange(7)
    if c == 0:
        return None
    if c == 1:
        return rng.random() < 0.5
    if c == 2:
        return rng.randrange(-(2**70), 2**70)
    if c == 3:
        return rng.uniform(-1e6, 1e6)
    if c == 4:
        return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(12)))
    if c == 5:
        return rng.choice(("impression.v1", "feedback.v1", "click", "2026-01-01T00:00:00Z"))
    return rng.random() * 10 ** rng.randrange(-300, 300)


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    if depth > 4 or rng.random() < 0.4:
        return _random_scalar(rng)
    if rng.random() < 0.5:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(5))]
    keys = ("schema", "event_id", "impression_id", "experiment_key", "arm_key", "unit_id",
            "propensity", "served_at", "kind", "value", "items", "context", "x")
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randrange(6))}


@dataclass(slots=True)
class _Draft:
    """A record in the making: the valid-looking event (``base``) a family then breaks, the
    topic it goes to and whether it is an impression."""

    family: str
    topic: str
    is_imp: bool
    base: dict[str, Any]

    def record(self, value: bytes | None, topic: str | None = None) -> FuzzRecord:
        return FuzzRecord(topic or self.topic, value, self.family)


def _bytes(d: _Draft, rng: random.Random) -> FuzzRecord:
    """Arbitrary bytes of a random length, sometimes wrapped in braces."""
    n = rng.choice((0, 1, 2, 8, 64, 512, 4096))
    raw = bytes(rng.randrange(256) for _ in range(n))
    if rng.random() < 0.3:
        raw = b"{" + raw + b"}"
    return d.record(raw)


def _json(d: _Draft, rng: random.Random) -> FuzzRecord:
    """An arbitrary JSON value, sometimes inside an object that names a schema."""
    value = _random_json(rng)
    if rng.random() < 0.5 and not isinstance(value, dict):
        value = {"schema": rng.choice(("impression.v1", "feedback.v1")), "v": value}
    return d.record(json.dumps(value).encode())


def _extreme(d: _Draft, rng: random.Random) -> FuzzRecord:
    """One number of the event (propensity, an item, a context value, the feedback value)
    replaced by an extreme token."""
    token = rng.choice(_EXTREME_NUMBERS)
    if d.is_imp:
        path = rng.choice((("propensity",), ("propensity",), ("items",), ("context", "n"),
                           ("context", "page")))
        if path == ("items",):
            return d.record(_dump(d.base).replace(
                '"items":["m1",2]', f'"items":["m1",{token}]').encode())
    else:
        path = ("value",)
    return d.record(_with_token(d.base, path, token))


def _string(d: _Draft, rng: random.Random) -> FuzzRecord:
    """One string (a field, a context key or value, an item) replaced by a bad or too long
    one."""
    base = d.base
    bad = rng.choice(_BAD_STRINGS)
    if rng.random() < 0.1:
        bad = "x" * rng.choice((64, 65, 128, 129, 1000))
    fields = [k for k, v in base.items() if isinstance(v, str) and k != "schema"]
    where = rng.choice([*fields, "context-key", "context-value", "item"] if d.is_imp
                       else fields)
    text: str
    if where == "context-key":
        text = _dump(base).replace('"page":', f'"{bad}":')
    elif where == "context-value":
        text = _dump(base).replace('"home"', f'"{bad}"')
    elif where == "item":
        text = _dump(base).replace('"m1"', f'"{bad}"')
    else:
        text = _with_token(base, (where,), f'"{bad}"').decode("utf-8", "surrogatepass")
    return d.record(text.encode("utf-8", "surrogatepass"))


def _nesting(d: _Draft, rng: random.Random) -> FuzzRecord:
    """Deeply nested lists in a value, or a context with many keys."""
    depth = rng.choice((15, 16, 17, 50, 200))
    nested = "[" * depth + "1" + "]" * depth
    if not d.is_imp:
        return d.record(_with_token(d.base, ("value",), nested))
    if rng.random() < 0.2:
        wide = "{" + ",".join(f'"k{j}":{j}' for j in range(rng.choice((64, 65, 500)))) + "}"
        return d.record(_with_token(d.base, ("context",), wide))
    return d.record(_with_token(d.base, ("context", "n"), nested))


def _swap(d: _Draft, rng: random.Random) -> FuzzRecord:
    """One field's value replaced by a value of another JSON type."""
    field = rng.choice(sorted(d.base))
    token = rng.choice(("null", "true", "false", "0", "1.5", '"s"', "[]", "{}",
                        "[1,2]", '{"a":1}', "99999999999999999999999", '"2026-01-01"'))
    return d.record(_with_token(d.base, (field,), token))


def _size(d: _Draft, rng: random.Random) -> FuzzRecord:
    """The event padded to just under, at or well past the record-size limit."""
    base = d.base
    size = rng.choice((60_000, 65_000, 65_600, 70_000))
    if rng.random() < 0.1:
        size = rng.choice((200_000, 900_000))
    pad = max(0, size - len(_dump(base)) - 20)
    if d.is_imp:
        base["context"]["pad"] = "x" * pad
    else:
        base["pad"] = "x" * pad
    return d.record(_dump(base).encode())


def _structure(d: _Draft, rng: random.Random) -> FuzzRecord:
    """Tombstones, truncation, duplicated, missing or unknown fields, a wrong schema, the other
    topic's schema, repeated records."""
    base = d.base
    c = rng.randrange(8)
    raw_s = _dump(base)
    if c == 0:
        return d.record(None)
    if c == 1:
        return d.record(raw_s[: rng.randrange(1, len(raw_s))].encode())
    if c == 2:
        return d.record(raw_s.replace("{", '{"schema":"impression.v1",', 1).encode())
    if c == 3:
        del base[rng.choice(sorted(base))]
        return d.record(_dump(base).encode())
    if c == 4:
        base["extra"] = 1
        return d.record(_dump(base).encode())
    if c == 5:  # the other topic's schema
        return d.record(raw_s.encode(), "feedback" if d.is_imp else "impression")
    if c == 6:
        base["schema"] = rng.choice(("impression.v2", "feedback", "", "IMPRESSION.V1"))
        return d.record(_dump(base).encode())
    return d.record((" " * rng.randrange(3) + raw_s + "\n").encode() * 2)


_MAKERS: dict[str, Callable[[_Draft, random.Random], FuzzRecord]] = {
    "bytes": _bytes, "json": _json, "extreme": _extreme, "string": _string,
    "nesting": _nesting, "swap": _swap, "size": _size, "structure": _structure,
}


def _one(i: int, family: str, rng: random.Random, experiment_key: str,
         arms: Sequence[str]) -> FuzzRecord:
    """Record ``i`` of ``family`` (an unknown family makes a ``structure`` record)."""
    is_imp = rng.random() < 0.6
    topic = "impression" if is_imp else "feedback"
    base = (_impression(i, experiment_key, rng.choice(arms)) if is_imp
            else _feedback(i, experiment_key))
    return _MAKERS.get(family, _structure)(_Draft(family, topic, is_imp, base), rng)


def fuzz_records(
    n: int, *, seed: int, experiment_key: str, arms: Sequence[str],
    families: Sequence[str] = FAMILIES,
) -> Iterator[FuzzRecord]:
    """``n`` hostile records, the same for the same arguments (module doc)."""
    rng = random.Random(seed)
    weights = [WEIGHTS.get(f, 1.0) for f in families]
    for i in range(n):
        family = rng.choices(families, weights)[0]
        yield _one(i, family, rng, experiment_key, arms)
