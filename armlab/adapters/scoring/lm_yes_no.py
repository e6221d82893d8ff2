"""The ``lm_yes_no`` variant kind: log P(yes) - log P(no) from a causal language model."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from armlab.adapters.scoring.base import (
    Item,
    UserContext,
    _batches,
    render_item,
    render_user,
)
from armlab.adapters.scoring.torch_scorer import _TorchScorer
from armlab.core.variants import VariantConfig
from armlab.errors import ScoringError


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
