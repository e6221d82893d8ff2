"""Scorers without a model of their own: popularity, a blend of two scorers, and a
rerank of one scorer's candidates by another."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from armlab.adapters.scoring.base import (
    Item,
    UserContext,
    catalog_score_matrix,
    score_many,
)
from armlab.core.catalog import CatalogView
from armlab.core.variants import VariantConfig


class PopularityScorer:
    """Non-language-model control: log(1 + count), from the item's ``popularity`` field or
    from a counts map (e.g. rating counts in the training data)."""

    def __init__(self, variant: VariantConfig, counts: dict[str, float] | None = None) -> None:
        self.variant = variant
        self.counts = counts or {}
        self.items_scored = 0

    def score(self, user: UserContext, items: Sequence[Item]) -> npt.NDArray[np.float64]:
        vals = []
        for it in items:
            v = it.get("popularity")
            if v is None:
                v = self.counts.get(str(it.get("id")), 0.0)
            vals.append(math.log1p(max(float(v), 0.0)))
        self.items_scored += len(vals)
        return np.asarray(vals, dtype=np.float64)


class BlendScorer:
    """``own + weight * prior`` (the variant's ``prior``): a content score that adds to the
    collaborative signal instead of replacing it."""

    def __init__(self, variant: VariantConfig, own: Any, prior: Any, weight: float) -> None:
        self.variant = variant
        self.own = own
        self.prior = prior
        self.weight = weight
        self._prior_vectors: OrderedDict[tuple[str, int], Any] = OrderedDict()

    @property
    def items_scored(self) -> int:
        return int(getattr(self.own, "items_scored", 0)) + int(
            getattr(self.prior, "items_scored", 0))

    def score(self, user: UserContext, items: Sequence[Item]) -> npt.NDArray[np.float64]:
        return self.score_many([(user, items)])[0]

    def score_many(
        self, reqs: Sequence[tuple[UserContext, Sequence[Item]]]
    ) -> list[npt.NDArray[np.float64]]:
        own = score_many(self.own, reqs)
        prior = score_many(self.prior, reqs)
        return [o + self.weight * p for o, p in zip(own, prior, strict=True)]

    def catalog_score_matrix(self, users: Sequence[UserContext], catalog: CatalogView) -> Any:
        import torch

        own = catalog_score_matrix(self.own, users, catalog)
        if isinstance(self.prior, PopularityScorer):  # user-independent: once per version
            key = (catalog.name, catalog.version)
            vec = self._prior_vectors.get(key)
            if vec is None:
                vec = torch.as_tensor(self.prior.score(UserContext(), catalog.items),
                                      dtype=torch.float32, device=own.device)
                self._prior_vectors[key] = vec
                while len(self._prior_vectors) > 8:
                    self._prior_vectors.popitem(last=False)
            return own.float() + self.weight * vec
        prior = catalog_score_matrix(self.prior, users, catalog)
        return own.float() + self.weight * prior.float().to(own.device)


class RerankScorer:
    """A variant with ``candidates_from``: the inner variant ranks everything, the outer one
    rescores its top ``rerank_top``. Reranked items keep the outer score; the rest are placed
    below them in the inner order (score = min outer score - 1 - rank/N) so one ordering is
    well defined."""

    def __init__(self, variant: VariantConfig, inner: Any, outer: Any) -> None:
        self.variant = variant
        self.inner = inner
        self.outer = outer

    @property
    def items_scored(self) -> int:
        return int(getattr(self.inner, "items_scored", 0)) + int(
            getattr(self.outer, "items_scored", 0))

    def score(self, user: UserContext, items: Sequence[Item]) -> npt.NDArray[np.float64]:
        base = self.inner.score(user, items)
        order = np.argsort(-base, kind="stable")
        top = order[: self.variant.rerank_top]
        outer = np.asarray(self.outer.score(user, [items[i] for i in top]), dtype=np.float64)
        out = np.empty(len(items))
        out[top] = outer
        rest = order[self.variant.rerank_top :]
        floor = (outer.min() if len(outer) else 0.0) - 1.0
        out[rest] = floor - np.arange(len(rest)) / max(len(rest), 1)
        return out


def can_rank_catalog(scorer: Any) -> bool:
    """True when the scorer ranks a catalog with one matrix product per batch."""
    return hasattr(scorer, "catalog_score_matrix") and (
        not isinstance(scorer, BlendScorer) or can_rank_catalog(scorer.own))
