"""Which keys of a request's ``context`` a contextual policy reads, and how it encodes them.

A feature spec is a list of features, each one of

* ``{"name": "device", "kind": "categorical", "levels": ["mobile", "desktop"]}``: the value
  (a string, integer or boolean, compared as ``str(value)``) is one of the declared levels, or
  falls into one extra level, ``other``, that also takes undeclared values;
* ``{"name": "age", "kind": "numeric", "center": 35, "scale": 10}``: a finite number (or a
  boolean), encoded as ``(value - center) / scale``.

Missing values (the key absent, or ``null``) take the feature's ``default``: for a categorical
feature one of its levels, or ``null`` (the default) meaning the ``other`` level; for a numeric
feature a number, ``center`` unless set (so a missing numeric feature encodes as 0). A value
of the wrong type (a list for a categorical feature, a string or NaN for a numeric one) raises
:class:`PolicyError` naming the feature: a request whose context contradicts the experiment's
declared features is a client error, not something to guess at.

Two encodings:

* :meth:`ContextSpec.segment_index`: categorical features only, the mixed-radix index of the
  tuple of level indices (``other`` last), in ``[0, n_segments)``;
* :meth:`ContextSpec.encode`: ``[1 (intercept), numeric..., one-hot(levels + other)...]``, the
  design vector of the linear policy (the one-hot blocks are collinear with the intercept; the
  ridge prior makes the posterior proper anyway).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field, field_validator, model_validator

from armlab.core.policies.base import FloatArray, PolicyModel
from armlab.errors import PolicyError

#: Upper bound on the number of segments (the product of the categorical features' level counts,
#: ``other`` included): a segment table is a (segments, arms) array held per snapshot.
MAX_SEGMENTS = 10_000
OTHER = "other"
IntArray = npt.NDArray[np.int64]


class FeatureSpec(PolicyModel):
    """One context key a contextual policy reads (see the module docstring)."""

    name: str = Field(min_length=1, max_length=100)
    kind: Literal["categorical", "numeric"]
    levels: tuple[str, ...] = Field((), strict=False, max_length=1000)
    default: str | float | None = None
    center: float = 0.0
    scale: float = Field(1.0, gt=0.0)

    @model_validator(mode="after")
    def _check(self) -> FeatureSpec:
        if self.kind == "categorical":
            if not self.levels:
                raise ValueError(f"categorical feature {self.name!r} needs a non-empty 'levels'")
            if len(set(self.levels)) != len(self.levels) or OTHER in self.levels:
                raise ValueError(
                    f"levels of {self.name!r} must be distinct and must not use the reserved "
                    f"name {OTHER!r}, got {list(self.levels)}"
                )
            if self.default is not None and self.default not in self.levels:
                raise ValueError(
                    f"default of {self.name!r} must be one of its levels or null (other), "
                    f"got {self.default!r}"
                )
        else:
            if self.levels:
                raise ValueError(f"numeric feature {self.name!r} takes no 'levels'")
            if self.default is not None and (
                isinstance(self.default, str) or not math.isfinite(self.default)
            ):
                raise ValueError(
                    f"default of numeric feature {self.name!r} must be a finite number, "
                    f"got {self.default!r}"
                )
        return self

    @property
    def n_levels(self) -> int:
        """Levels including ``other`` (categorical); 0 for a numeric feature."""
        return len(self.levels) + 1 if self.kind == "categorical" else 0


def _feature(i: int, raw: Any) -> FeatureSpec:
    if isinstance(raw, FeatureSpec):
        return raw
    if not isinstance(raw, Mapping):
        raise ValueError(f"features[{i}] must be an object, got {type(raw).__name__}")
    try:
        return FeatureSpec(**raw)
    except PolicyError as exc:
        raise ValueError(f"features[{i}] ({raw.get('name', '?')!r}): {exc}") from None


class ContextParams(PolicyModel):
    """The ``features`` parameter every contextual policy shares."""

    features: tuple[FeatureSpec, ...] = Field(strict=False, min_length=1, max_length=100)

    @field_validator("features", mode="before")
    @classmethod
    def _parse_features(cls, value: Any) -> tuple[FeatureSpec, ...]:
        if not isinstance(value, Sequence) or isinstance(value, str | bytes):
            raise ValueError("features must be a list of feature objects")
        out = tuple(_feature(i, raw) for i, raw in enumerate(value))
        names = [f.name for f in out]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"feature names must be distinct, repeated: {', '.join(dup)}")
        return out


def _categorical_level(f: FeatureSpec, value: Any) -> int:
    if value is None:
        value = f.default
        if value is None:
            return len(f.levels)
    if isinstance(value, bool | int | str) and not isinstance(value, float):
        key = str(value).lower() if isinstance(value, bool) else str(value)
        try:
            return f.levels.index(key)
        except ValueError:
            return len(f.levels)
    raise PolicyError(
        f"context feature {f.name!r} is categorical: expected a string, integer or boolean, "
        f"got {type(value).__name__}",
        [(f"context.{f.name}", "expected a string, integer or boolean")],
    )


def numeric_value(f: FeatureSpec, value: Any) -> float:
    """The numeric feature's standardised value (its default, or its centre, when missing);
    PolicyError (422) on anything but a finite number."""
    if value is None:
        value = f.center if f.default is None else f.default
    if isinstance(value, bool | int | float) and math.isfinite(float(value)):
        return (float(value) - f.center) / f.scale
    raise PolicyError(
        f"context feature {f.name!r} is numeric: expected a finite number, got {value!r}",
        [(f"context.{f.name}", "expected a finite number")],
    )


class ContextSpec:
    """Encoder for a validated feature list; build once per experiment, reuse per request."""

    __slots__ = ("categorical", "dim", "features", "n_segments", "numeric", "radix")

    def __init__(self, features: Sequence[FeatureSpec]) -> None:
        self.features = tuple(features)
        self.categorical = tuple(f for f in self.features if f.kind == "categorical")
        self.numeric = tuple(f for f in self.features if f.kind == "numeric")
        self.radix = tuple(f.n_levels for f in self.categorical)
        self.n_segments = math.prod(self.radix)
        self.dim = 1 + len(self.numeric) + sum(self.radix)

    def require_categorical(self, policy: str) -> None:
        """Segment policies read categorical features only; at most MAX_SEGMENTS segments."""
        if self.numeric:
            names = ", ".join(repr(f.name) for f in self.numeric)
            raise PolicyError(
                f"{policy} segments on categorical features only; numeric: {names}",
                [("features", f"numeric features not allowed: {names}")],
            )
        if self.n_segments > MAX_SEGMENTS:
            raise PolicyError(
                f"{policy}: {self.n_segments} segments (levels x levels ...) exceed "
                f"{MAX_SEGMENTS}; declare fewer levels",
                [("features", f"too many segments ({self.n_segments})")],
            )

    def levels(self, context: Mapping[str, Any]) -> tuple[int, ...]:
        """Level index of each categorical feature (``other`` = its last index)."""
        return tuple(_categorical_level(f, context.get(f.name)) for f in self.categorical)

    def segment_index(self, context: Mapping[str, Any]) -> int:
        """Mixed-radix index of the context's segment, in [0, n_segments)."""
        idx = 0
        for lev, r in zip(self.levels(context), self.radix, strict=True):
            idx = idx * r + lev
        return idx

    def segment_label(self, index: int) -> dict[str, str]:
        """The feature -> level mapping of a segment index (for reports)."""
        out: dict[str, str] = {}
        for f, r in zip(reversed(self.categorical), reversed(self.radix), strict=True):
            index, lev = divmod(index, r)
            out[f.name] = f.levels[lev] if lev < len(f.levels) else OTHER
        return dict(reversed(out.items()))

    def encode(self, context: Mapping[str, Any]) -> FloatArray:
        """(dim,) design vector: intercept, numeric features, one-hot categorical blocks."""
        x = np.zeros(self.dim)
        x[0] = 1.0
        for j, f in enumerate(self.numeric, start=1):
            x[j] = numeric_value(f, context.get(f.name))
        off = 1 + len(self.numeric)
        for lev, r in zip(self.levels(context), self.radix, strict=True):
            x[off + lev] = 1.0
            off += r
        return x

    def encode_many(self, contexts: Sequence[Mapping[str, Any]]) -> FloatArray:
        """(N, dim) design matrix of ``contexts``."""
        if not contexts:
            return np.zeros((0, self.dim))
        return np.stack([self.encode(c) for c in contexts])

    def segment_indices(self, contexts: Sequence[Mapping[str, Any]]) -> IntArray:
        """(N,) segment index of each context."""
        return np.fromiter((self.segment_index(c) for c in contexts), dtype=np.int64,
                           count=len(contexts))


__all__ = ["MAX_SEGMENTS", "OTHER", "ContextParams", "ContextSpec", "FeatureSpec"]
