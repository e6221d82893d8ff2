"""CUDA paths of the scorers (bf16, SDPA, torch.compile): ``make test-gpu`` on a machine with
a GPU. ``make test`` (and CI, which has no GPU) does not collect this folder; run here without
CUDA, every test fails with the reason instead of being skipped."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from armlab.adapters.scoring.scorers import UserContext, build_scorer
from armlab.adapters.scoring.tiny import make_tiny_model
from armlab.core.catalog import CatalogView

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_cuda() -> None:
    assert torch.cuda.is_available(), "the GPU suite needs CUDA (run it with `make test-gpu`)"

ITEMS = [{"id": str(i), "title": t} for i, t in enumerate(
    ["Star Wars", "Sense and Sensibility", "Toy Story", "Alien", "Emma", "Apollo 13"])]
USER = UserContext(text="space adventure")


def test_minilm_bf16_cuda_matches_float32_cpu() -> None:
    gpu = build_scorer({"kind": "bi_encoder"}, device="cuda")
    assert gpu.dtype == torch.bfloat16 and gpu.model.config._attn_implementation == "sdpa"
    cpu = build_scorer({"kind": "bi_encoder"}, device="cpu")
    a, b = gpu.score(USER, ITEMS), cpu.score(USER, ITEMS)
    np.testing.assert_allclose(a, b, atol=3e-2)
    assert np.argmax(a) == np.argmax(b) == 0


def test_catalog_on_gpu_and_padding_to_multiple_of_8() -> None:
    sc = build_scorer({"kind": "bi_encoder"}, device="cuda")
    assert sc._pad_len(13) == 16
    out = sc.rank_catalog(USER, CatalogView("g", 1, ITEMS), k=3)
    assert out[0]["item_id"] == "0" and len(out) == 3


def test_lm_shared_prefix_equals_pairs_on_gpu(tmp_path) -> None:
    path = make_tiny_model(tmp_path / "lm", "causal_lm")
    v = {"kind": "lm_yes_no", "model": str(path), "dtype": "float32",
         "prompt_template": "user likes {user} . would you enjoy {item} ? answer :"}
    a = build_scorer(v, device="cuda").score(USER, ITEMS)
    b = build_scorer(v, device="cuda", share_prefix=False).score(USER, ITEMS)
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_smollm2_bf16_scores_are_finite() -> None:
    sc = build_scorer({"kind": "lm_yes_no"}, device="cuda")
    s = sc.score(UserContext(history=[{"title": "Star Wars"}, {"title": "Alien"}]), ITEMS)
    assert np.isfinite(s).all() and s.shape == (len(ITEMS),)


def test_compiled_bi_encoder_matches_eager() -> None:
    eager = build_scorer({"kind": "bi_encoder"}, device="cuda")
    comp = build_scorer({"kind": "bi_encoder", "compile": True}, device="cuda")
    np.testing.assert_allclose(comp.score(USER, ITEMS), eager.score(USER, ITEMS), atol=2e-2)


def test_bench_quick_on_gpu_reports_mfu() -> None:
    from armlab.tools.bench.scoring import run_bench

    out = run_bench({"kind": "bi_encoder"}, device="cuda", quick=True, n_items=2048,
                    catalog_sizes=[100_000])
    assert out["mfu"] is not None and 0 < out["mfu"] < 1
    assert out["ratio"] > 1
