"""The ``bi_encoder`` variant kind: sentence embeddings, cosine similarity."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from armlab.adapters.scoring.base import (
    Item,
    UserContext,
    _batches,
    rank_catalog_many,
    render_item,
    render_user,
)
from armlab.adapters.scoring.torch_scorer import _TorchScorer
from armlab.core.catalog import CatalogView
from armlab.core.variants import VariantConfig
from armlab.errors import ScoringError


class BiEncoderScorer(_TorchScorer):
    """Sentence-embedding scorer (Reimers & Gurevych 2019, Sentence-BERT).

    all-MiniLM-L6-v2 defines its embedding as the attention-masked mean of the last hidden
    states followed by L2 normalisation; cosine similarity is then a dot product.
    """

    task = "encoder"

    def __init__(self, variant: VariantConfig, **kw: Any) -> None:
        super().__init__(variant, **kw)
        self.unit = variant.normalize or variant.similarity == "cosine"
        self.encoded = 0  # texts through the encoder (cache hits excluded)
        self._text_cache: OrderedDict[str, Any] = OrderedDict()
        self._text_cache_max = 200_000
        self._catalogs: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._catalogs_max = 8

    # -- encoding
    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        enc = self.tok(
            list(texts), truncation=True, max_length=self.variant.max_length, padding=False
        )
        return [list(x) for x in enc["input_ids"]]

    def encode_ids(self, seqs: list[list[int]]) -> Any:
        """(N, d) embeddings on the scorer's device, float32 on CPU, model dtype on CUDA."""
        import torch

        out: Any = None
        with torch.inference_mode():
            for idx in _batches([len(s) for s in seqs], self.batch_size, self.bucketing):
                ids, mask = self._pad([seqs[i] for i in idx], left=False)
                hidden = self.forward(input_ids=ids, attention_mask=mask).last_hidden_state
                if self.variant.pooling == "cls":
                    emb = hidden[:, 0]
                else:
                    m = mask.unsqueeze(-1).to(hidden.dtype)
                    emb = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
                if self.unit:
                    emb = torch.nn.functional.normalize(emb.float(), p=2, dim=-1).to(emb.dtype)
                if out is None:
                    out = torch.empty((len(seqs), emb.shape[-1]), dtype=emb.dtype,
                                      device=emb.device)
                out[torch.tensor(idx, device=emb.device)] = emb
        self.encoded += len(seqs)
        return out

    def encode(self, texts: Sequence[str]) -> Any:
        return self.encode_ids(self.tokenize(texts))

    def encode_cached(self, texts: Sequence[str]) -> Any:
        """Encode with a per-scorer LRU keyed by text (candidates repeat across requests)."""
        import torch

        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            embs = self.encode(missing)
            for t, e in zip(missing, embs, strict=True):
                self._text_cache[t] = e
            while len(self._text_cache) > self._text_cache_max:
                self._text_cache.popitem(last=False)
        rows = []
        for t in texts:
            self._text_cache.move_to_end(t)
            rows.append(self._text_cache[t])
        return torch.stack(rows)

    def user_vectors(self, users: Sequence[UserContext],
                     catalog: CatalogView | None = None) -> Any:
        """(B, d) user vectors: the encoded user template (``user_tower: text``), or the
        normalised mean of the history items' embeddings (``history_mean``; rows of the cached
        catalog when the items are in it, else the text cache). Call without the lock held."""
        import torch

        if self.variant.user_tower == "text":
            texts = [render_user(self.variant, u) for u in users]
            if not all(texts):
                raise ScoringError("the user context is empty: give user text or a history")
            with self._lock:
                return self.encode(texts)
        emb = self.catalog_embeddings(catalog) if catalog is not None else None
        rows: list[Any] = [None] * len(users)
        need_text = [n for n, u in enumerate(users) if not u.history]
        for n, u in enumerate(users):
            if not u.history:
                continue
            idx = ([catalog.index.get(str(h.get("id"))) for h in u.history]
                   if catalog is not None else [None] * len(u.history))
            parts = []
            if emb is not None and any(i is not None for i in idx):
                parts.append(emb[torch.tensor([i for i in idx if i is not None],
                                              device=emb.device)])
            missing = [h for h, i in zip(u.history, idx, strict=True) if i is None]
            if missing:
                with self._lock:
                    parts.append(self.encode_cached(
                        [render_item(self.variant.item_template, h) for h in missing]))
            v = torch.cat([p.float() for p in parts]).mean(0)
            rows[n] = torch.nn.functional.normalize(v, p=2, dim=-1) if self.unit else v
        if need_text:
            texts = [render_user(self.variant, users[n]) for n in need_text]
            if not all(texts):
                raise ScoringError("the user context is empty: give user text or a history")
            with self._lock:
                enc = self.encode(texts).float()
            for n, e in zip(need_text, enc, strict=True):
                rows[n] = e
        return torch.stack(rows)

    def encode_user(self, user: UserContext) -> Any:
        return self.user_vectors([user])[0]

    # -- catalogs
    def catalog_key(self, catalog_name: str, version: int) -> tuple[Any, ...]:
        v = self.variant
        return (self.resolved.key, v.item_template, v.max_length, v.pooling, self.unit,
                self.device, str(self.dtype), catalog_name, version)

    def catalog_embeddings(self, catalog: CatalogView) -> Any:
        """Item embeddings for a catalog, computed once per (model, template, name, version)."""
        key = self.catalog_key(catalog.name, catalog.version)
        with self._lock:
            emb = self._catalogs.get(key)
            if emb is None:
                texts = [render_item(self.variant.item_template, it) for it in catalog.items]
                emb = self.encode(texts)
                self.put_catalog_embeddings(catalog.name, catalog.version, emb)
            else:
                self._catalogs.move_to_end(key)
        return emb

    def put_catalog_embeddings(self, name: str, version: int, emb: Any) -> None:
        self._catalogs[self.catalog_key(name, version)] = emb
        while len(self._catalogs) > self._catalogs_max:
            self._catalogs.popitem(last=False)

    def rank_catalog(
        self, user: UserContext, catalog: CatalogView, k: int, exclude: set[str] | None = None
    ) -> list[dict[str, Any]]:
        """One user encoding + one matrix product + top-k over the cached catalog."""
        return self.rank_catalog_many([user], catalog, [k], [exclude or set()])[0]

    def rank_catalog_many(
        self,
        users: Sequence[UserContext],
        catalog: CatalogView,
        ks: Sequence[int],
        excludes: Sequence[set[str]],
    ) -> list[list[dict[str, Any]]]:
        """B users against one cached catalog: one encoder pass, one (B,d)x(d,N) product."""
        return rank_catalog_many(self, users, catalog, ks, excludes)

    def catalog_score_matrix(self, users: Sequence[UserContext], catalog: CatalogView) -> Any:
        """(B, N) scores of every catalog item for each user (a torch tensor)."""
        import torch

        emb = self.catalog_embeddings(catalog)
        u = self.user_vectors(users, catalog)
        with torch.inference_mode():
            s = u.to(emb.dtype) @ emb.T
        self.items_scored += len(users) * len(catalog.ids)
        return s

    def score(self, user: UserContext, items: Sequence[Item]) -> npt.NDArray[np.float64]:
        return self.score_many([(user, items)])[0]

    def score_many(
        self, reqs: Sequence[tuple[UserContext, Sequence[Item]]]
    ) -> list[npt.NDArray[np.float64]]:
        """Several requests: user texts in one forward, candidate texts via the text cache."""
        u = self.user_vectors([r[0] for r in reqs]).float()
        texts = [[render_item(self.variant.item_template, it) for it in items] for _, items in reqs]
        with self._lock:
            flat = [t for ts in texts for t in ts]
            e = self.encode_cached(flat).float() if flat else u[:0]
        out, at = [], 0
        for r, ts in enumerate(texts):
            if not ts:
                out.append(np.zeros(0))
                continue
            out.append((e[at : at + len(ts)] @ u[r]).cpu().numpy().astype(np.float64))
            at += len(ts)
        self.items_scored += len(flat)
        return out
