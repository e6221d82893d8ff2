"""Scorers: one per variant kind. Each turns (user context, candidate items) into scores.

All forward passes run under ``torch.inference_mode()``. Sequences are sorted by length and
padded per batch ("length bucketing") so short texts do not pay for long ones; on CUDA the
padded length is rounded up to a multiple of 8 for tensor-core friendly shapes (and fewer
torch.compile specialisations). ``bucketing=False, pad_to_max=True, batch_size=1`` gives the
naive baseline the benchmark compares against.
"""

from __future__ import annotations

import copy
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from armlab.adapters.scoring.models import load_model, resolve_device, resolve_dtype, resolve_model
from armlab.core.catalog import CatalogView
from armlab.core.variants import VariantConfig, parse_variant
from armlab.errors import ScoringError

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


class CrossEncoderScorer(_TorchScorer):
    """(user text, item text) pairs through an encoder with a classification head
    (Nogueira & Cho 2019). One logit → that logit; two → logit[1] - logit[0]."""

    task = "sequence_classification"

    def score(self, user: UserContext, items: Sequence[Item]) -> npt.NDArray[np.float64]:
        return self.score_many([(user, items)])[0]

    def score_many(
        self, reqs: Sequence[tuple[UserContext, Sequence[Item]]]
    ) -> list[npt.NDArray[np.float64]]:
        """All (user, item) pairs of several requests in one length-bucketed run."""
        import torch

        firsts, seconds, sizes = [], [], []
        for user, items in reqs:
            utext = render_user(self.variant, user)
            firsts += [utext] * len(items)
            seconds += [render_item(self.variant.item_template, it) for it in items]
            sizes.append(len(items))
        flat = np.zeros(len(firsts))
        if firsts:
            enc = self.tok(firsts, seconds, truncation=True, max_length=self.variant.max_length,
                           padding=False)
            seqs = [list(x) for x in enc["input_ids"]]
            types = [list(x) for x in enc.get("token_type_ids", [[0] * len(s) for s in seqs])]
            with self._lock, torch.inference_mode():
                for idx in _batches([len(s) for s in seqs], self.batch_size, self.bucketing):
                    ids, mask = self._pad([seqs[i] for i in idx], left=False)
                    tt, _ = self._pad([types[i] for i in idx], left=False)
                    tt = tt * mask  # pad positions carry pad_id in the type tensor; zero them
                    logits = self.forward(input_ids=ids, attention_mask=mask,
                                          token_type_ids=tt).logits.float()
                    sc = logits[:, 0] if logits.shape[-1] == 1 else logits[:, 1] - logits[:, 0]
                    flat[idx] = sc.cpu().numpy()
            self.items_scored += len(seqs)
        out, at = [], 0
        for n in sizes:
            out.append(flat[at : at + n])
            at += n
        return out


class LMYesNoScorer(_TorchScorer):
    """Score = log P(yes) - log P(no) at the answer position of ONE forward pass.

    The prompt is ``prefix(user) + item + suffix``. With ``share_prefix`` (default) the prefix
    runs once and its KV cache is repeated over the candidates, which then only process
    their own tokens; otherwise each (prefix + candidate) pair is a row of a left-padded batch.
    Both give the same score. yes/no probabilities sum over the tokens of " yes", "yes",
    " Yes", "Yes" (and the same for no) so the score does not hinge on casing or spacing.
    Only the last position's logits are computed (``logits_to_keep=1``).
    """

    task = "causal_lm"

    def __init__(self, variant: VariantConfig, *, share_prefix: bool = True, **kw: Any) -> None:
        super().__init__(variant, **kw)
        self.share_prefix = share_prefix
        self.yes_ids = self._answer_ids(variant.yes_token)
        self.no_ids = self._answer_ids(variant.no_token)
        if set(self.yes_ids) & set(self.no_ids):
            raise ScoringError("yes_token and no_token share a first token in this tokenizer")
        tpl = variant.prompt_template
        at = tpl.index("{item}")
        self._prefix_tpl, self._suffix = tpl[:at], tpl[at + len("{item}") :].format()

    def _answer_ids(self, word: str) -> list[int]:
        ids = []
        for form in (word, " " + word, word.capitalize(), " " + word.capitalize()):
            toks = self.tok(form, add_special_tokens=False)["input_ids"]
            unk = getattr(self.tok, "unk_token_id", None)
            if toks and toks[0] != unk and toks[0] not in ids:
                ids.append(toks[0])
        if not ids:
            raise ScoringError(f"answer token {word!r} is not in the model's vocabulary")
        return ids

    def build(self, user: UserContext, items: Sequence[Item]) -> tuple[list[int], list[list[int]]]:
        """Token ids of the shared prefix and of each candidate's continuation."""
        utext = render_user(self.variant, user)
        prefix = self.tok(self._prefix_tpl.format(user=utext), add_special_tokens=True)
        prefix_ids = list(prefix["input_ids"])
        suffix_ids = list(self.tok(self._suffix, add_special_tokens=False)["input_ids"])
        max_len = self.variant.max_length
        max_item = max(4, max_len // 4)
        conts = []
        for it in items:
            ids = self.tok(render_item(self.variant.item_template, it),
                           add_special_tokens=False)["input_ids"]
            conts.append(list(ids)[:max_item] + suffix_ids)
        keep = max_len - max((len(c) for c in conts), default=0)
        if keep < 4:
            raise ScoringError(f"max_length {max_len} is too small for the prompt")
        if len(prefix_ids) > keep:
            # Keep the instruction head and the most recent history (the prefix's tail).
            head = keep // 4
            prefix_ids = prefix_ids[:head] + prefix_ids[len(prefix_ids) - (keep - head) :]
        return prefix_ids, conts

    def _answer_scores(self, logits: Any) -> Any:
        import torch

        lp = torch.log_softmax(logits.float(), dim=-1)
        return torch.logsumexp(lp[:, self.yes_ids], -1) - torch.logsumexp(lp[:, self.no_ids], -1)

    def score(self, user: UserContext, items: Sequence[Item]) -> npt.NDArray[np.float64]:
        if not items:
            return np.zeros(0)
        prefix, conts = self.build(user, items)
        with self._lock:
            if self.share_prefix:
                out = self._score_shared(prefix, conts)
            else:
                out = self.score_pairs([prefix + c for c in conts])
        self.items_scored += len(conts)
        return out

    def score_many(
        self, reqs: Sequence[tuple[UserContext, Sequence[Item]]]
    ) -> list[npt.NDArray[np.float64]]:
        """Several requests: with a shared prefix, one prefix pass per request; otherwise every
        pair of every request goes into one left-padded, length-bucketed batch."""
        if self.share_prefix:
            return [self.score(u, items) for u, items in reqs]
        seqs, sizes = [], []
        for user, items in reqs:
            if items:
                prefix, conts = self.build(user, items)
                seqs += [prefix + c for c in conts]
            sizes.append(len(items))
        with self._lock:
            flat = self.score_pairs(seqs) if seqs else np.zeros(0)
        self.items_scored += len(seqs)
        out, at = [], 0
        for n in sizes:
            out.append(flat[at : at + n])
            at += n
        return out

    def score_pairs(self, seqs: list[list[int]]) -> npt.NDArray[np.float64]:
        """Each full sequence is one row of a left-padded batch (all end at the answer)."""
        import torch

        out = np.zeros(len(seqs))
        with torch.inference_mode():
            for idx in _batches([len(s) for s in seqs], self.batch_size, self.bucketing):
                ids, mask = self._pad([seqs[i] for i in idx], left=True)
                pos = (mask.cumsum(-1) - 1).clamp(min=0)
                logits = self.forward(
                    input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False,
                    logits_to_keep=1,
                ).logits[:, -1]
                out[idx] = self._answer_scores(logits).cpu().numpy()
        return out

    def _score_shared(self, prefix: list[int], conts: list[list[int]]) -> npt.NDArray[np.float64]:
        import torch

        out = np.zeros(len(conts))
        p = len(prefix)
        with torch.inference_mode():
            pre = torch.tensor([prefix], device=self.device)
            cache = self.forward(input_ids=pre, use_cache=True, logits_to_keep=1).past_key_values
            for idx in _batches([len(c) for c in conts], self.batch_size, self.bucketing):
                ids, cmask = self._pad([conts[i] for i in idx], left=True)
                b = ids.shape[0]
                c = copy.deepcopy(cache)
                c.batch_repeat_interleave(b)
                mask = torch.cat([torch.ones((b, p), dtype=cmask.dtype, device=cmask.device),
                                  cmask], dim=1)
                pos = (p + cmask.cumsum(-1) - 1).clamp(min=p)
                logits = self.forward(
                    input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=c,
                    use_cache=True, logits_to_keep=1,
                ).logits[:, -1]
                out[idx] = self._answer_scores(logits).cpu().numpy()
        return out


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


def can_rank_catalog(scorer: Any) -> bool:
    """True when the scorer ranks a catalog with one matrix product per batch."""
    return hasattr(scorer, "catalog_score_matrix") and (
        not isinstance(scorer, BlendScorer) or can_rank_catalog(scorer.own))


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
