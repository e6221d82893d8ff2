"""What every scorer shares: the item and user texts, the scorer protocol, top-k, length
batches, and the calls that use a scorer's batched paths when it has them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from armlab.core.catalog import CatalogView
from armlab.core.variants import VariantConfig

Item = dict[str, Any]


class _Blank(dict):
    """format_map mapping: a field the item lacks renders as an empty string."""

    def __missing__(self, key: str) -> str:
        return ""


def render_item(template: str, item: Item) -> str:
    values = {k: ("" if v is None else v) for k, v in item.items()}
    if isinstance(values.get("genres"), list | tuple):
        values["genres"] = ", ".join(map(str, values["genres"]))
    return template.format_map(_Blank(values)).strip()


@dataclass
class UserContext:
    """What the request knows about the user: free text and/or a history of item dicts."""

    text: str = ""
    history: list[Item] = field(default_factory=list)

    def history_ids(self) -> set[str]:
        return {str(h.get("id")) for h in self.history if h.get("id") is not None}


def render_user(variant: VariantConfig, user: UserContext) -> str:
    history = ", ".join(str(h.get("title", h.get("id", ""))) for h in user.history)
    history_items = "; ".join(render_item(variant.item_template, h) for h in user.history)
    return variant.user_template.format_map(
        _Blank(text=user.text, history=history, history_items=history_items)
    ).strip()


class Scorer(Protocol):
    variant: VariantConfig

    def score(self, user: UserContext, items: Sequence[Item]) -> npt.NDArray[np.float64]: ...


def top_k(
    ids: Sequence[str], scores: npt.NDArray[np.float64], k: int, exclude: set[str] | None = None
) -> list[dict[str, Any]]:
    """Best-first ``[{"item_id", "score"}]``; ties keep input order (stable sort)."""
    order = np.argsort(-scores, kind="stable")
    out = []
    for j in order:
        if exclude and ids[j] in exclude:
            continue
        out.append({"item_id": ids[j], "score": float(scores[j])})
        if len(out) >= k:
            break
    return out


def _batches(lengths: Sequence[int], batch_size: int, bucketing: bool) -> list[list[int]]:
    order = list(range(len(lengths)))
    if bucketing:
        order.sort(key=lengths.__getitem__)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def score_many(scorer: Any, reqs: Sequence[tuple[UserContext, Sequence[Item]]]
               ) -> list[npt.NDArray[np.float64]]:
    """Each request's scores, batched when the scorer can batch."""
    many = getattr(scorer, "score_many", None)
    if many is not None:
        return [np.asarray(x, dtype=np.float64) for x in many(reqs)]
    return [np.asarray(scorer.score(u, items), dtype=np.float64) for u, items in reqs]


def catalog_score_matrix(scorer: Any, users: Sequence[UserContext], catalog: CatalogView
                         ) -> Any:
    """(B, N) torch scores of a catalog: the scorer's own matrix path when it has one."""
    import torch

    mat = getattr(scorer, "catalog_score_matrix", None)
    if mat is not None:
        return mat(users, catalog)
    return torch.as_tensor(np.stack([scorer.score(u, catalog.items) for u in users]),
                           dtype=torch.float32)


def rank_catalog_many(
    scorer: Any,
    users: Sequence[UserContext],
    catalog: CatalogView,
    ks: Sequence[int],
    excludes: Sequence[set[str]],
) -> list[list[dict[str, Any]]]:
    """Top-k of a (B, N) catalog score matrix per user, excluded items masked out."""
    import torch

    with torch.inference_mode():
        s = catalog_score_matrix(scorer, users, catalog)
        for row, ex in enumerate(excludes):
            idx = [catalog.index[i] for i in ex if i in catalog.index]
            if idx:
                s[row, torch.tensor(idx, device=s.device)] = -math.inf
        kk = min(max(ks), s.shape[1])
        top = torch.topk(s.float(), kk, dim=1)
        vals, pos = top.values.cpu().numpy(), top.indices.cpu().numpy()
    return [
        [
            {"item_id": catalog.ids[p], "score": float(v)}
            for v, p in zip(vals[r, : ks[r]], pos[r, : ks[r]], strict=True)
            if np.isfinite(v)
        ]
        for r in range(len(users))
    ]
