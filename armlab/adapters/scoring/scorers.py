"""Scorers: one per variant kind. Each turns (user context, candidate items) into scores.

All forward passes run under ``torch.inference_mode()``. Sequences are sorted by length and
padded per batch ("length bucketing") so short texts do not pay for long ones; on CUDA the
padded length is rounded up to a multiple of 8 for tensor-core friendly shapes (and fewer
torch.compile specialisations). ``bucketing=False, pad_to_max=True, batch_size=1`` gives the
naive baseline the benchmark compares against.

The kinds live one per module (``bi_encoder``, ``cross_encoder``, ``lm_yes_no``, ``composite``
for popularity, blend and rerank) on shared plumbing (``base``, ``torch_scorer``); this module
builds a scorer for a variant and ranks with it, and re-exports the names callers import.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from armlab.adapters.scoring.base import (
    Item,
    Scorer,
    UserContext,
    catalog_score_matrix,
    rank_catalog_many,
    render_item,
    render_user,
    score_many,
    top_k,
)
from armlab.adapters.scoring.bi_encoder import BiEncoderScorer
from armlab.adapters.scoring.composite import (
    BlendScorer,
    PopularityScorer,
    RerankScorer,
    can_rank_catalog,
)
from armlab.adapters.scoring.cross_encoder import CrossEncoderScorer
from armlab.adapters.scoring.lm_yes_no import LMYesNoScorer
from armlab.core.variants import VariantConfig, parse_variant
from armlab.errors import ScoringError

__all__ = [
    "BiEncoderScorer", "BlendScorer", "CrossEncoderScorer", "Item", "LMYesNoScorer",
    "PopularityScorer", "RerankScorer", "Scorer", "UserContext", "build_scorer",
    "can_rank_catalog", "catalog_score_matrix", "rank", "rank_catalog_many", "render_item",
    "render_user", "score_many", "top_k",
]


def build_scorer(
    variant: VariantConfig | dict[str, Any],
    *,
    device: str = "auto",
    models_dir: Path | None = None,
    cache_dir: Path | None = None,
    popularity: dict[str, float] | None = None,
    **kw: Any,
) -> Any:
    """A scorer for a variant config (models resolved offline, loaded once per process)."""
    v = parse_variant(variant)
    common = {"device": device, "models_dir": models_dir, "cache_dir": cache_dir, **kw}
    sub: dict[str, Any] = {"device": device, "models_dir": models_dir, "cache_dir": cache_dir,
                           "popularity": popularity}
    own: Any
    if v.kind == "popularity":
        return PopularityScorer(v, popularity)
    if v.kind == "bi_encoder":
        own = BiEncoderScorer(v, **common)
    elif v.kind == "cross_encoder":
        own = CrossEncoderScorer(v, **common)
    else:
        own = LMYesNoScorer(v, **common)
    if v.prior is not None:
        own = BlendScorer(v, own, build_scorer(v.prior.variant, **sub), v.prior.weight)
    if v.candidates_from is not None:
        return RerankScorer(v, build_scorer(v.candidates_from, **sub), own)
    return own


def rank(
    scorer: Any,
    user: UserContext,
    items: Sequence[Item],
    k: int,
    exclude: set[str] | None = None,
) -> list[dict[str, Any]]:
    """Score candidates and return the best ``k`` as ``[{"item_id", "score"}]``."""
    if k < 1:
        raise ScoringError(f"k must be >= 1, got {k}")
    if not items:
        return []
    ids = [str(it.get("id")) for it in items]
    return top_k(ids, scorer.score(user, items), k, exclude)
