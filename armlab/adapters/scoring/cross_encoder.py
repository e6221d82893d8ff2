"""The ``cross_encoder`` variant kind: (user, item) pairs through a classification head."""

from __future__ import annotations

from collections.abc import Sequence

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
