"""Test data builders: experiment registration bodies and specs, in one place.

``spec_body(key, **fields)`` is the smallest valid registration body (a popularity control
and one popularity treatment ``t1``); ``treatments=`` a sequence of treatment keys (or
``(key, variant)`` pairs) after the control; other keyword arguments replace top-level
fields (``arms=`` a whole arm list, ``sequential=`` the sequential design).
``experiment_spec`` validates it into :class:`ExperimentSpec`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from armlab.core.specs import ExperimentSpec

POPULARITY: dict[str, Any] = {"kind": "popularity"}
MINILM: dict[str, Any] = {"kind": "bi_encoder", "model": "all-MiniLM-L6-v2"}

ArmArg = str | tuple[str, dict[str, Any]]


def arm_list(treatments: Sequence[ArmArg] = ("t1",), *, control: str = "control",
             control_variant: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The control (popularity unless given) followed by the treatments."""
    out: list[dict[str, Any]] = [{"key": control, "control": True,
                                  "variant": dict(control_variant or POPULARITY)}]
    for t in treatments:
        key, variant = (t, POPULARITY) if isinstance(t, str) else t
        out.append({"key": key, "variant": dict(variant)})
    return out


def spec_body(key: str = "exp", *, treatments: Sequence[ArmArg] = ("t1",),
              **fields: Any) -> dict[str, Any]:
    """A registration body (a dict, as a client sends it). ``fields`` replace top-level
    fields last, ``arms`` (a list of arm dicts) included."""
    return {"key": key, "arms": arm_list(treatments), **fields}


def experiment_spec(key: str = "exp", *, treatments: Sequence[ArmArg] = ("t1",),
                    **fields: Any) -> ExperimentSpec:
    """:func:`spec_body` validated."""
    return ExperimentSpec.model_validate(spec_body(key, treatments=treatments, **fields))
