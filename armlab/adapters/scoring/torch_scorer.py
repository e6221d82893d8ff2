"""The device, model and padding plumbing of the scorers that run a torch model."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from armlab.adapters.scoring.checkpoints import (
    load_model,
    resolve_device,
    resolve_dtype,
    resolve_model,
)
from armlab.core.variants import VariantConfig
from armlab.errors import ScoringError


class _TorchScorer:
    """Shared device/model plumbing."""

    task = "encoder"

    def __init__(
        self,
        variant: VariantConfig,
        *,
        device: str = "auto",
        models_dir: Path | None = None,
        cache_dir: Path | None = None,
        bucketing: bool = True,
        pad_to_max: bool = False,
        batch_size: int | None = None,
    ) -> None:
        import torch

        self.variant = variant
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(variant.dtype, self.device)
        name = variant.model_name
        if name is None:
            raise ScoringError(f"variant kind {variant.kind} needs a model")
        self.resolved = resolve_model(name, models_dir=models_dir)
        self.tok, self.model = load_model(
            self.resolved, task=self.task, device=self.device, dtype=self.dtype,
            cache_dir=cache_dir,
        )
        self.forward = self.model
        if variant.compile:
            self.forward = torch.compile(self.model, dynamic=True)
        self.bucketing = bucketing
        self.pad_to_max = pad_to_max
        self.batch_size = batch_size or variant.batch_size
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        self.items_scored = 0
        self._lock = threading.Lock()  # one forward at a time per scorer

    def _pad_len(self, longest: int) -> int:
        if self.pad_to_max:
            return self.variant.max_length
        if self.device.startswith("cuda"):
            return min(self.variant.max_length, ((longest + 7) // 8) * 8)
        return longest

    def _pad(self, seqs: list[list[int]], left: bool) -> tuple[Any, Any]:
        import torch

        t = self._pad_len(max(len(s) for s in seqs))
        ids = torch.full((len(seqs), t), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), t), dtype=torch.long)
        for r, s in enumerate(seqs):
            if left:
                ids[r, t - len(s) :] = torch.tensor(s)
                mask[r, t - len(s) :] = 1
            else:
                ids[r, : len(s)] = torch.tensor(s)
                mask[r, : len(s)] = 1
        return ids.to(self.device), mask.to(self.device)
