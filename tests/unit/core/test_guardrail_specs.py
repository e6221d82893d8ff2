"""GuardrailSpec validation and its defaults (the registration's guardrails)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from armlab.core.specs import ExperimentSpec, GuardrailSpec

ARMS = [{"key": "a", "control": True, "variant": {"kind": "popularity"}},
        {"key": "b", "variant": {"kind": "popularity"}}]


def test_defaults_depend_on_the_source() -> None:
    fb = GuardrailSpec.model_validate({"key": "s", "source": {"feedback": "skip"},
                                       "harm": "increase"})
    assert fb.aggregate == "any" and fb.binary and fb.margin.value == 0.0
    assert not fb.margin.is_relative and fb.alpha == 0.05 and fb.on_breach == "rollback"
    field = GuardrailSpec.model_validate({"key": "l", "source": {"impression_field": "a.b"},
                                          "harm": "increase", "margin": {"relative": 0.2}})
    assert field.aggregate == "mean" and not field.binary
    assert field.margin.is_relative and field.margin.value == 0.2


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.7, -1.0, float("nan")])
def test_alpha_must_be_inside_0_half(alpha: float) -> None:
    with pytest.raises(ValidationError) as exc:
        GuardrailSpec.model_validate({"key": "s", "source": {"feedback": "skip"},
                                      "harm": "increase", "alpha": alpha})
    assert exc.value.errors()[0]["loc"][0] == "alpha"


def test_experiment_spec_rejects_duplicate_keys_and_keeps_order() -> None:
    g = {"key": "s", "source": {"feedback": "skip"}, "harm": "increase"}
    ok = ExperimentSpec.model_validate({"key": "e", "arms": ARMS,
                                        "guardrails": [g, {**g, "key": "t"}]})
    assert [x.key for x in ok.guardrails] == ["s", "t"]
    with pytest.raises(ValidationError, match="duplicate guardrail key"):
        ExperimentSpec.model_validate({"key": "e", "arms": ARMS, "guardrails": [g, g]})
    assert ExperimentSpec.model_validate({"key": "e", "arms": ARMS}).guardrails == []
