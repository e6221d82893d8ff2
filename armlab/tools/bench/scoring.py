"""``armlab bench scoring``: throughput, latency and MFU of a variant beside a naive baseline.

Every figure is measured in the same process against a naive baseline: float32, batch 1,
padding to ``max_length``, no embedding cache, no prefix sharing. Inputs are synthetic token
sequences of exactly the stated length (random ids from the vocabulary, special tokens kept),
so "sequence 128" means 128 tokens. Catalog-size tests use random unit vectors as cached item
embeddings (what matters there is the (d) x (d, N) product and top-k, not the item text).

FLOPs (forward, multiply-add = 2): ``2 * P * T + 4 * L * T^2 * d`` per sequence of T tokens,
with P the non-embedding parameters, L layers, d the hidden size (the attention term counts
QK^T and AV; Kaplan et al. 2020, "Scaling laws", sec. 2.1). For the LM, only the last position
goes through the vocabulary projection (+ 2 * d * V). MFU = achieved FLOP/s / peak; peaks are
dense bf16 tensor-core figures from the vendor datasheets (H100 SXM 989 TFLOP/s), and on CPU
the peak is a float32 matmul measured in the same run.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from armlab.adapters.scoring.checkpoints import resolve_device
from armlab.adapters.scoring.scorers import (
    BiEncoderScorer,
    LMYesNoScorer,
    UserContext,
    build_scorer,
)
from armlab.core.catalog import CatalogView
from armlab.core.variants import parse_variant

GPU_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak(device: str) -> tuple[float | None, str]:
    import torch

    if device.startswith("cuda"):
        name = torch.cuda.get_device_name()
        for key, val in GPU_PEAK_BF16.items():
            if key in name:
                return val, f"{name}: dense bf16 datasheet peak"
        return None, f"{name}: unknown peak"
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 0.5:
        a @ b
        reps += 1
    dt = time.perf_counter() - t0
    return 2 * n**3 * reps / dt, "measured float32 1024x1024 matmul on this CPU"


def _arch(model: Any) -> tuple[int, int, int, int]:
    """(non-embedding params, layers, hidden, vocab)."""
    cfg = model.config
    p = sum(
        t.numel() for n, t in model.named_parameters()
        if "embed" not in n and "lm_head" not in n
    )
    return p, cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size


def encoder_flops(model: Any, t: int) -> float:
    p, layers, d, _ = _arch(model)
    return 2.0 * p * t + 4.0 * layers * t * t * d


def lm_flops(model: Any, t: int, context: int | None = None) -> float:
    """t new tokens attending to ``context`` total positions (default t) + last-position head."""
    p, layers, d, v = _arch(model)
    ctx = context or t
    return 2.0 * p * t + 4.0 * layers * t * ctx * d + 2.0 * d * v


def _random_seqs(tok: Any, n: int, length: int, rng: np.random.Generator,
                 specials: bool) -> list[list[int]]:
    lo = max(int(getattr(tok, "pad_token_id", 0) or 0), 1000 if len(tok) > 5000 else 6)
    body = length - 2 if specials else length
    ids = rng.integers(lo, len(tok) - 1, size=(n, body))
    if specials:
        return [[tok.cls_token_id, *row.tolist(), tok.sep_token_id] for row in ids]
    return [row.tolist() for row in ids]


def _rate(fn: Any, n: int, device: str, min_s: float = 0.0) -> float:
    """Items/s of ``fn()`` which processes ``n`` items (repeated until ``min_s`` elapsed)."""
    fn()  # warm-up (allocator, kernels, torch.compile)
    _sync(device)
    reps, t0 = 0, time.perf_counter()
    while True:
        fn()
        reps += 1
        _sync(device)
        if time.perf_counter() - t0 >= min_s:
            break
    return n * reps / (time.perf_counter() - t0)


def _latency(fn: Any, reps: int, device: str) -> dict[str, float]:
    fn()
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
            "requests": reps}


def _bi_scorers(v: Any, device: str) -> tuple[BiEncoderScorer, BiEncoderScorer]:
    """(the optimised scorer, the naive baseline: float32, batch 1, padded to 128, eager)."""
    cuda = device.startswith("cuda")
    opt = build_scorer(v.model_copy(update={"max_length": 128}), device=device,
                       batch_size=(v.batch_size if v.batch_size > 64 else 512) if cuda else 32)
    base = build_scorer(v.model_copy(update={"max_length": 128, "dtype": "float32",
                                             "compile": False}),
                        device=device, batch_size=1, bucketing=False, pad_to_max=True)
    assert isinstance(opt, BiEncoderScorer) and isinstance(base, BiEncoderScorer)
    return opt, base


def _bi_encode(opt: BiEncoderScorer, base: BiEncoderScorer, rng: np.random.Generator, *,
               n: int, nb: int, device: str, peak: float | None) -> dict[str, Any]:
    """Item encodes/s at sequence 64 and 128, against the baseline on ``nb`` items."""
    min_s = 2.0 if device.startswith("cuda") else 0.0
    out: dict[str, Any] = {}
    for seq in (64, 128):
        seqs = _random_seqs(opt.tok, n, seq, rng, specials=True)
        flops = encoder_flops(opt.model, seq)
        r_opt = _rate(lambda s=seqs: opt.encode_ids(s), n, device, min_s)
        r_base = _rate(lambda s=seqs[:nb]: base.encode_ids(s), nb, device, min_s)
        out[f"seq{seq}"] = {
            "items_per_s": r_opt, "baseline_items_per_s": r_base, "ratio": r_opt / r_base,
            "flops_per_item": flops, "achieved_flops": r_opt * flops,
            "mfu": r_opt * flops / peak if peak else None,
            "batch_size": opt.batch_size, "items": n, "baseline_items": nb,
            "baseline_padded_to": 128,
        }
    return out


def _bi_rank100(opt: BiEncoderScorer, base: BiEncoderScorer, rng: np.random.Generator,
                user: UserContext, *, device: str, quick: bool) -> dict[str, Any]:
    """Ranking 100 candidates with cached embeddings vs the naive scorer (no cache, batch 1).
    A quick CPU run times the naive path on 10 candidates and scales it to 100 (stated)."""
    cuda = device.startswith("cuda")
    cands = [{"id": str(i), "title": f"movie number {i} " + "word " * int(rng.integers(2, 12))}
             for i in range(100)]
    opt.score(user, cands)  # fills the text cache
    lat = _latency(lambda: opt.score(user, cands), 50 if cuda or not quick else 10, device)
    base_cands = cands[:10] if quick and not cuda else cands
    scale = len(cands) / len(base_cands)

    def naive() -> None:
        base._text_cache.clear()  # the naive path encodes every candidate every request
        base.score(user, base_cands)

    blat = _latency(naive, 10 if cuda or not quick else 1, device)
    return {**lat, "baseline_p50_ms": blat["p50_ms"] * scale,
            "baseline_p99_ms": blat["p99_ms"] * scale,
            "baseline_candidates_timed": len(base_cands),
            "ratio_p50": blat["p50_ms"] * scale / lat["p50_ms"],
            "note": "cached candidate embeddings + 1 user encode + matmul; baseline "
                    "encodes the candidates each request (float32, batch 1, pad 128)"}


def _bi_catalog(opt: BiEncoderScorer, base: BiEncoderScorer, user: UserContext, size: int, *,
                device: str, quick: bool) -> dict[str, Any]:
    """User requests against a big cached catalog (random unit embeddings, model dtype)."""
    import torch

    cuda = device.startswith("cuda")
    dim = opt.model.config.hidden_size
    emb = torch.nn.functional.normalize(torch.randn(size, dim, device=device), dim=-1)
    view = CatalogView(f"bench{size}", 1, [{"id": str(i)} for i in range(size)])
    opt.put_catalog_embeddings(view.name, 1, emb.to(opt.dtype))
    base.put_catalog_embeddings(view.name, 1, emb.float())
    reps = 100 if cuda else (3 if quick else 20)
    lat = _latency(lambda vw=view: opt.rank_catalog(user, vw, 10), reps, device)
    blat = _latency(lambda vw=view: base.rank_catalog(user, vw, 10), max(2, reps // 5),
                    device)
    users = [UserContext(text=f"user {i} likes space adventure") for i in range(32)]
    t0 = time.perf_counter()
    opt.rank_catalog_many(users, view, [10] * 32, [set()] * 32)
    _sync(device)
    batched = 32 / (time.perf_counter() - t0)
    del emb
    opt._catalogs.clear()
    base._catalogs.clear()
    return {
        "requests_per_s": 1000 / lat["p50_ms"], "p50_ms": lat["p50_ms"],
        "p99_ms": lat["p99_ms"], "batched32_requests_per_s": batched,
        "baseline_requests_per_s": 1000 / blat["p50_ms"],
        "ratio": blat["p50_ms"] / lat["p50_ms"],
        "note": "random unit-vector item embeddings; one user encode + matmul + top-10",
    }


def _bench_bi_encoder(v: Any, device: str, quick: bool, n_items: int,
                      catalog_sizes: list[int], peak: float | None) -> dict[str, Any]:
    cuda = device.startswith("cuda")
    rng = np.random.default_rng(0)
    opt, base = _bi_scorers(v, device)
    n = n_items or (50_000 if cuda else (32 if quick else 256))
    nb = max(8, n // 50) if cuda else (4 if quick else 32)
    out: dict[str, Any] = {
        "encode": _bi_encode(opt, base, rng, n=n, nb=nb, device=device, peak=peak)}
    user = UserContext(text="a space adventure with robots and a farm boy")
    out["rank100"] = _bi_rank100(opt, base, rng, user, device=device, quick=quick)
    out["catalog"] = {str(size): _bi_catalog(opt, base, user, size, device=device, quick=quick)
                      for size in catalog_sizes}
    head = out["encode"]["seq128"]
    return {"items_per_s": head["items_per_s"], "baseline_items_per_s":
            head["baseline_items_per_s"], "ratio": head["ratio"], "mfu": head["mfu"],
            "flops_per_item": head["flops_per_item"], "headline": "item encodes/s at seq 128",
            "sections": out, "params_non_embedding": _arch(opt.model)[0]}


def _bench_lm(v: Any, device: str, quick: bool, n_items: int, peak: float | None
              ) -> dict[str, Any]:
    cuda = device.startswith("cuda")
    rng = np.random.default_rng(0)
    v128 = v.model_copy(update={"max_length": 128, "candidates_from": None})
    opt = build_scorer(v128, device=device, share_prefix=False,
                       batch_size=(v.batch_size if v.batch_size > 64 else 256) if cuda else 8)
    shared = build_scorer(v128, device=device, share_prefix=True,
                          batch_size=(v.batch_size if v.batch_size > 64 else 256) if cuda else 8)
    base = build_scorer(v128.model_copy(update={"dtype": "float32", "compile": False}),
                        device=device, share_prefix=False, batch_size=1, bucketing=False,
                        pad_to_max=True)
    assert isinstance(opt, LMYesNoScorer) and isinstance(base, LMYesNoScorer)
    n = n_items or (20_000 if cuda else (8 if quick else 32))
    nb = 64 if cuda else (2 if quick else 4)
    min_s = 2.0 if cuda else 0.0
    seqs = _random_seqs(opt.tok, n, 128, rng, specials=False)
    f_pair = lm_flops(opt.model, 128)
    r_opt = _rate(lambda: opt.score_pairs(seqs), n, device, min_s)
    r_base = _rate(lambda: base.score_pairs(seqs[:nb]), nb, device, min_s)
    # Shared prefix: one user (~100-token prefix) and 100 candidates of ~28 tokens each.
    prefix = _random_seqs(opt.tok, 1, 100, rng, specials=False)[0]
    conts = _random_seqs(opt.tok, 100 if (cuda or not quick) else 16, 28, rng, specials=False)
    r_shared = _rate(lambda: shared._score_shared(prefix, conts), len(conts), device, min_s)
    f_shared = (lm_flops(opt.model, 100) - 2.0 * opt.model.config.hidden_size
                * opt.model.config.vocab_size) / len(conts) + lm_flops(opt.model, 28, 128)
    lat = _latency(lambda: shared._score_shared(prefix, conts), 20 if cuda else 2, device)
    return {
        "items_per_s": r_opt, "baseline_items_per_s": r_base, "ratio": r_opt / r_base,
        "mfu": r_opt * f_pair / peak if peak else None, "flops_per_item": f_pair,
        "headline": "yes/no pairs/s at 128 tokens (batched pairs, no prefix sharing)",
        "params_non_embedding": _arch(opt.model)[0],
        "sections": {
            "pairs128": {"items_per_s": r_opt, "baseline_items_per_s": r_base,
                         "ratio": r_opt / r_base, "items": n, "baseline_items": nb,
                         "batch_size": opt.batch_size},
            "shared_prefix": {"pairs_per_s": r_shared, "ratio_vs_baseline": r_shared / r_base,
                              "candidates": len(conts), "prefix_tokens": 100,
                              "candidate_tokens": 28, "flops_per_pair_executed": f_shared,
                              "mfu": r_shared * f_shared / peak if peak else None,
                              "latency": lat},
        },
    }


def run_bench(variant: dict[str, Any], *, device: str = "auto", quick: bool = False,
              n_items: int = 0, catalog_sizes: list[int] | None = None,
              compile_model: bool = False) -> dict[str, Any]:
    """Run the benchmark for one variant; returns the JSON-able result."""
    import torch

    dev = resolve_device(device)
    v = parse_variant(variant)
    if compile_model:
        v = v.model_copy(update={"compile": True})
    peak, peak_src = _peak(dev)
    sizes = catalog_sizes if catalog_sizes is not None else [100_000, 1_000_000]
    if quick and not dev.startswith("cuda"):
        sizes = [s for s in sizes if s <= 100_000] or sizes[:1]
    t0 = time.perf_counter()
    if v.kind == "bi_encoder":
        res = _bench_bi_encoder(v, dev, quick, n_items, sizes, peak)
    elif v.kind == "lm_yes_no":
        res = _bench_lm(v, dev, quick, n_items, peak)
    elif v.kind == "popularity":
        sc = build_scorer(v)
        items = [{"id": str(i), "popularity": i} for i in range(100_000)]
        r = _rate(lambda: sc.score(UserContext(text="x"), items), len(items), "cpu")
        res = {"items_per_s": r, "baseline_items_per_s": r, "ratio": 1.0, "mfu": None,
               "flops_per_item": 0, "headline": "popularity lookups/s (no model)"}
    else:
        sc = build_scorer(v, device=dev)
        b = build_scorer(v.model_copy(update={"dtype": "float32"}), device=dev, batch_size=1,
                         bucketing=False, pad_to_max=True)
        items = [{"id": str(i), "title": "word " * 20} for i in range(64 if quick else 256)]
        user = UserContext(text="space adventure")
        r = _rate(lambda: sc.score(user, items), len(items), dev)
        rb = _rate(lambda: b.score(user, items[:8]), 8, dev)
        fl = encoder_flops(sc.model, 32)
        res = {"items_per_s": r, "baseline_items_per_s": rb, "ratio": r / rb,
               "mfu": r * fl / peak if peak else None, "flops_per_item": fl,
               "headline": "cross-encoder pairs/s (~32 tokens)"}
    achieved = res["items_per_s"] * res["flops_per_item"]
    return {
        "variant": v.kind, "model": v.model_name, "device": dev,
        "device_name": torch.cuda.get_device_name() if dev.startswith("cuda") else "cpu",
        "cpu_threads": torch.get_num_threads(),
        "dtype": str(v.dtype if v.dtype != "auto" else ("bfloat16" if dev != "cpu"
                                                        else "float32")),
        "compile": v.compile, "quick": quick,
        "achieved_gflops": achieved / 1e9,
        "peak_flops": peak, "peak_source": peak_src,
        **res,
        "flop_count": "2*P_nonembed*T + 4*L*T^2*d (+2*d*V at the last position for the LM)",
        "baseline": "float32, batch 1, padded to max_length 128, no cache / prefix sharing",
        "targets_h100": {"minilm_seq128_items_per_s": 100_000, "smollm2_pairs_per_s": 10_000,
                         "rank100_p99_ms": 5.0},
        "wall_s": time.perf_counter() - t0,
        "finite": bool(math.isfinite(res["items_per_s"])),
    }
