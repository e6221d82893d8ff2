"""Variant validation (torch-free) and the MovieLens loader."""

from __future__ import annotations

import subprocess
import sys

import pytest

from armlab.core.variants import VariantConfig, parse_variant, validate_variant
from armlab.errors import ConfigurationError, ValidationFailed


@pytest.mark.parametrize(
    ("variant", "field", "match"),
    [
        ({}, "variant.kind", "valid kinds"),
        ({"kind": "gpt"}, "variant.kind", "unknown kind 'gpt'"),
        ({"kind": "bi_encoder", "max_length": 2}, "variant.max_length", "greater than"),
        ({"kind": "bi_encoder", "batch_size": 0}, "variant.batch_size", "greater than"),
        ({"kind": "bi_encoder", "pooling": "max"}, "variant.pooling", "mean"),
        ({"kind": "bi_encoder", "dtype": "float16"}, "variant.dtype", "bfloat16"),
        ({"kind": "bi_encoder", "bogus": 1}, "variant.bogus", "Extra inputs"),
        ({"kind": "bi_encoder", "user_template": "{foo}"}, "variant.user_template", "foo"),
        ({"kind": "bi_encoder", "item_template": "{title"}, "variant.item_template", "invalid"),
        ({"kind": "bi_encoder", "item_template": "{}"}, "variant.item_template", "positional"),
        ({"kind": "popularity", "model": "x"}, "variant.model", "no model"),
        ({"kind": "cross_encoder"}, "variant.model", "needs a model"),
        ({"kind": "lm_yes_no", "prompt_template": "{item} {user}"}, "variant.prompt_template",
         "before"),
        ({"kind": "lm_yes_no", "prompt_template": "{user} only"}, "variant.prompt_template",
         "must contain"),
        ({"kind": "lm_yes_no", "yes_token": "a", "no_token": "a"}, "variant.no_token", "differ"),
        ({"kind": "popularity", "candidates_from": {"kind": "bi_encoder"}},
         "variant.candidates_from", "does not rerank"),
        ({"kind": "bi_encoder", "candidates_from": {
            "kind": "bi_encoder", "candidates_from": {"kind": "popularity"}}},
         "variant.candidates_from", "one level"),
        ({"kind": "bi_encoder", "prior": {"weight": 0}}, "variant.prior", "must not be 0"),
        ({"kind": "bi_encoder", "prior": {"weight": float("nan")}}, "variant.prior.weight",
         "finite"),
        ({"kind": "bi_encoder", "prior": {"weight": 1e9}}, "variant.prior.weight", "less than"),
        ({"kind": "bi_encoder", "prior": {}}, "variant.prior.weight", "required"),
        ({"kind": "bi_encoder", "prior": {"weight": 1, "variant": {"kind": "lm_yes_no"}}},
         "variant.prior", "lm_yes_no"),
        ({"kind": "bi_encoder", "prior": {"weight": 1, "variant": {
            "kind": "bi_encoder", "prior": {"weight": 1}}}}, "variant.prior", "plain"),
        ({"kind": "popularity", "prior": {"weight": 1}}, "variant.prior", "no prior"),
        ({"kind": "lm_yes_no", "user_tower": "history_mean"}, "variant.user_tower", "bi_encoder"),
        ({"kind": "bi_encoder", "user_tower": "avg"}, "variant.user_tower", "history_mean"),
        ({"kind": "lm_yes_no", "candidates_from": {"kind": "lm_yes_no"}},
         "variant.candidates_from", "must not"),
        ({"kind": "lm_yes_no", "candidates_from": {"kind": "bi_encoder", "x": 1}},
         "variant.candidates_from.x", "Extra"),
    ],
)
def test_invalid_variants_name_the_field(variant: dict, field: str, match: str) -> None:
    with pytest.raises(ValidationFailed, match=match) as info:
        validate_variant(variant)
    assert info.value.field == field


def test_valid_variants_are_normalised_and_idempotent() -> None:
    out = validate_variant({"kind": "bi_encoder"})
    assert out["item_template"] == "{title}" and out["max_length"] == 128
    assert "prompt_template" not in out  # lm-only keys dropped for other kinds
    assert validate_variant(out) == out
    lm = validate_variant(
        {"kind": "lm_yes_no", "candidates_from": {"kind": "bi_encoder"}, "rerank_top": 5}
    )
    assert lm["candidates_from"]["kind"] == "bi_encoder"
    assert "prompt_template" not in lm["candidates_from"]
    assert validate_variant(lm) == lm
    assert validate_variant({"kind": "popularity"}) == {
        "kind": "popularity", **{k: v for k, v in out.items() if k != "kind"}
    }


def test_composed_variants_are_normalised() -> None:
    v = validate_variant({"kind": "bi_encoder", "user_tower": "history_mean",
                          "prior": {"weight": 0.1},
                          "candidates_from": {"kind": "popularity"}, "rerank_top": 50})
    assert v["prior"]["weight"] == 0.1 and v["prior"]["variant"]["kind"] == "popularity"
    assert v["candidates_from"]["kind"] == "popularity" and v["rerank_top"] == 50
    assert v["user_tower"] == "history_mean"
    assert validate_variant(v) == v
    plain = validate_variant({"kind": "bi_encoder"})
    assert "rerank_top" not in plain and "user_tower" not in plain and "prior" not in plain


def test_default_models_and_cache_key() -> None:
    assert parse_variant({"kind": "bi_encoder"}).model_name == "all-MiniLM-L6-v2"
    assert parse_variant({"kind": "lm_yes_no"}).model_name == "SmolLM2-135M-Instruct"
    a = VariantConfig(kind="bi_encoder")
    assert a.cache_key() == VariantConfig(kind="bi_encoder").cache_key()
    assert a.cache_key() != VariantConfig(kind="bi_encoder", max_length=64).cache_key()


def test_non_dict_variant_rejected() -> None:
    with pytest.raises(ValidationFailed, match="JSON object"):
        validate_variant(["bi_encoder"])  # type: ignore[arg-type]


def test_variants_module_does_not_import_torch() -> None:
    code = (
        "import sys, armlab.core.variants as v; v.validate_variant({'kind': 'bi_encoder'});"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_movielens_loads_from_recbole_files_without_importing_recbole() -> None:
    from armlab.adapters.data.movielens import load_movielens

    ml = load_movielens()
    assert (len(ml.movies), len(ml.users), ml.n_ratings) == (1682, 943, 100_000)
    toy = ml.movies["1"]
    assert toy.title == "Toy Story" and toy.year == "1995" and "Animation" in toy.genres
    hist = ml.user_history("1")
    assert len(hist) == 272
    times = [t for _, _, t in hist]
    assert times == sorted(times)
    assert "recbole" not in sys.modules
    assert ml.popularity()["50"] == 583  # Star Wars, the most rated movie in ml-100k


def test_movielens_missing_files_name_the_problem(tmp_path) -> None:
    from armlab.adapters.data.movielens import load_movielens

    with pytest.raises(ConfigurationError, match="ml-100k.inter"):
        load_movielens(tmp_path)
