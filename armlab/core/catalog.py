"""Item catalogs as values: the versioned item list scorers rank, and the rules for items.

A catalog's ``version`` keys cached item embeddings, so loading different content (a new
version) invalidates them without any explicit signal. Storing catalogs is
:mod:`armlab.services.catalog`'s job; reading item files is :mod:`armlab.adapters.data.items`'.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from armlab.errors import ValidationFailed

Item = dict[str, Any]
MAX_ITEM_ID_LEN = 128


@dataclass(frozen=True, slots=True)
class CatalogInfo:
    """A stored catalog's header: its version, how many items and the hash of their content."""

    name: str
    version: int
    item_count: int
    content_hash: str


@dataclass
class CatalogView:
    """A versioned item list. The version keys the embedding cache (a reload invalidates it)."""

    name: str
    version: int
    items: list[Item]

    def __post_init__(self) -> None:
        self.ids = [str(it["id"]) for it in self.items]
        self.index = {i: n for n, i in enumerate(self.ids)}


def normalise_items(items: list[dict[str, Any]], *, source: str = "items") -> list[dict[str, Any]]:
    """Check ids (present, unique, ≤128 chars) and coerce id/title/text to strings."""
    seen: set[str] = set()
    out = []
    for n, it in enumerate(items, 1):
        raw = it.get("id", it.get("item_id"))
        if raw is None or str(raw).strip() == "":
            raise ValidationFailed(f"{source}: item {n} has no id", field="id")
        iid = str(raw).strip()
        if len(iid) > MAX_ITEM_ID_LEN:
            raise ValidationFailed(
                f"{source}: item id {iid[:20]!r}... exceeds 128 chars", field="id"
            )
        if iid in seen:
            raise ValidationFailed(f"{source}: duplicate item id {iid!r}", field="id")
        seen.add(iid)
        item = {k: v for k, v in it.items() if k != "item_id"}
        item["id"] = iid
        item["title"] = str(it.get("title") or "")
        item["text"] = str(it.get("text") or "")
        if it.get("popularity") not in (None, ""):
            try:
                item["popularity"] = float(it["popularity"])
            except (TypeError, ValueError):
                raise ValidationFailed(
                    f"{source}: item {iid!r} popularity must be a number", field="popularity"
                ) from None
        out.append(item)
    return out


def content_hash(items: list[dict[str, Any]]) -> str:
    """SHA-256 of the items in canonical JSON, order-independent."""
    h = hashlib.sha256()
    for it in sorted(items, key=lambda x: x["id"]):
        h.update(json.dumps(it, sort_keys=True, separators=(",", ":"), default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


def check_name(name: str) -> None:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
        raise ValidationFailed(
            f"catalog name {name!r} must be 1-64 characters of letters, digits, - _ .",
            field="name",
        )
