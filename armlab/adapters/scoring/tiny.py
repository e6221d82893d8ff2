# ruff: noqa: S106  (special-token names, not passwords)
"""Tiny randomly initialised models built from a config, for tests and quick benchmarks.

They go through the same directory-based loading path as real models (a Hugging Face
directory with config.json, weights and a tokenizer), so tests exercise the real code.
The tokenizer is a word-level tokenizer built in code over a small vocabulary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

WORDS = (
    "the a of and to in is it you that he was for on are with as i his they be at one have "
    "this from or had by not word but what some we can out other were all there when up use "
    "your how said an each she which do their time if will way about many then them write "
    "would like so these her long make thing see him two has look more day could go come did "
    "number sound no yes most people my over know water than call first who may down side "
    "been now find any new work part take get place made live where after back little only "
    "round man year came show every good me give our under name very through just form "
    "sentence great think say help low line differ turn cause much mean before move right "
    "boy old too same tell does set three want air well also play small end put home read "
    "hand port large spell add even land here must big high such follow act why ask men "
    "change went light kind off need house picture try us again animal point mother world "
    "star wars space adventure sense sensibility love romance comedy drama action thriller "
    "horror movie film user likes item answer enjoyed would enjoy story toy"
).split()
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "<s>", "</s>")


def _tokenizer(kind: str):  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + tuple(dict.fromkeys(WORDS)) + tuple(".,:?!;"))}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    if kind == "bert":
        tk.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
            sep_token="[SEP]",
        ), len(vocab)
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", bos_token="<s>",
        eos_token="</s>",
    ), len(vocab)


def make_tiny_model(path: str | Path, kind: str = "encoder", *, seed: int = 0,
                    hidden: int = 32, layers: int = 2) -> Path:
    """Write a tiny random model directory: kind encoder|causal_lm|cross_encoder."""
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        BertModel,
        LlamaConfig,
        LlamaForCausalLM,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    cfg: Any
    model: Any
    if kind in ("encoder", "cross_encoder"):
        tok, n = _tokenizer("bert")
        cfg = BertConfig(  # type: ignore[call-arg]
            vocab_size=n, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
            intermediate_size=hidden * 2, max_position_embeddings=512, num_labels=1,
            pad_token_id=0,
        )
        model = BertModel(cfg) if kind == "encoder" else BertForSequenceClassification(cfg)
    elif kind == "causal_lm":
        tok, n = _tokenizer("llama")
        cfg = LlamaConfig(
            vocab_size=n, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=hidden * 2, max_position_embeddings=512,
            pad_token_id=0, bos_token_id=4, eos_token_id=5, tie_word_embeddings=True,
        )
        model = LlamaForCausalLM(cfg)
    else:
        raise ValueError(f"unknown tiny model kind {kind!r}")
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path
