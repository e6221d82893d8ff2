"""Item catalogs: versioned item lists in the database (``catalogs`` / ``catalog_items``).

Loading the same content again is a no-op; different content bumps ``version`` and replaces
the items in one transaction. Scorers key their cached item embeddings by (catalog name,
version), so a reload invalidates the cache without any explicit signal.
"""

from __future__ import annotations

import csv
import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from armlab.errors import NotFound, ValidationFailed
from armlab.platform.models import Catalog, CatalogItem
from armlab.platform.uow import UnitOfWork
from armlab.scoring.scorers import CatalogView

_CORE = ("id", "title", "text", "popularity")


def read_items_file(path: str | Path) -> list[dict[str, Any]]:
    """Items from JSONL (one object per line) or CSV (header row); each needs ``id``."""
    p = Path(path)
    if not p.is_file():
        raise ValidationFailed(f"items file not found: {p}", field="file")
    items: list[dict[str, Any]] = []
    if p.suffix.lower() == ".csv":
        with p.open(encoding="utf-8", newline="") as fh:
            items = [dict(row) for row in csv.DictReader(fh)]
    else:
        with p.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValidationFailed(f"{p}:{n}: not JSON ({exc.msg})", field="file") from None
                if not isinstance(obj, dict):
                    raise ValidationFailed(f"{p}:{n}: expected a JSON object", field="file")
                items.append(obj)
    return normalise_items(items, source=str(p))


def normalise_items(items: list[dict[str, Any]], *, source: str = "items") -> list[dict[str, Any]]:
    """Check ids (present, unique, ≤128 chars) and coerce id/title/text to strings."""
    seen: set[str] = set()
    out = []
    for n, it in enumerate(items, 1):
        raw = it.get("id", it.get("item_id"))
        if raw is None or str(raw).strip() == "":
            raise ValidationFailed(f"{source}: item {n} has no id", field="id")
        iid = str(raw).strip()
        if len(iid) > 128:
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


def _check_name(name: str) -> None:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
        raise ValidationFailed(
            f"catalog name {name!r} must be 1-64 characters of letters, digits, - _ .",
            field="name",
        )


def load_catalog(uow: UnitOfWork, *, name: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    """Store ``items`` as catalog ``name``; bump the version when the content changed.

    The caller commits (``uow.commit()``). Returns {name, version, item_count, content_hash,
    changed}.
    """
    _check_name(name)
    items = normalise_items(items)
    if not items:
        raise ValidationFailed("a catalog needs at least one item", field="items")
    digest = content_hash(items)
    s = uow.session
    cat = s.get(Catalog, name)
    if cat is not None and cat.content_hash == digest:
        return _summary(cat, changed=False)
    if cat is None:
        cat = Catalog(name=name, version=1, content_hash=digest, item_count=len(items))
        s.add(cat)
    else:
        s.execute(delete(CatalogItem).where(CatalogItem.catalog_name == name))
        cat.version += 1
        cat.content_hash = digest
        cat.item_count = len(items)
    s.flush()
    s.add_all(
        CatalogItem(
            catalog_name=name,
            item_id=it["id"],
            title=it["title"],
            text=it["text"],
            popularity=float(it.get("popularity") or 0.0),
            attrs={k: v for k, v in it.items() if k not in _CORE},
        )
        for it in items
    )
    s.flush()
    return _summary(cat, changed=True)


def _summary(cat: Catalog, *, changed: bool) -> dict[str, Any]:
    return {
        "name": cat.name,
        "version": cat.version,
        "item_count": cat.item_count,
        "content_hash": cat.content_hash,
        "changed": changed,
    }


def get_catalog(session: Session, *, name: str) -> CatalogView:
    """The catalog's items as a :class:`CatalogView` (raises NotFound)."""
    cat = session.get(Catalog, name)
    if cat is None:
        raise NotFound(
            f"catalog {name!r} not found; load it with `armlab catalog load {name} FILE`"
        )
    rows = session.scalars(
        select(CatalogItem).where(CatalogItem.catalog_name == name).order_by(CatalogItem.item_id)
    ).all()
    items = [
        {**(r.attrs or {}), "id": r.item_id, "title": r.title, "text": r.text,
         "popularity": r.popularity}
        for r in rows
    ]
    return CatalogView(name=name, version=cat.version, items=items)


def list_catalogs(session: Session) -> list[dict[str, Any]]:
    return [_summary(c, changed=False) | {"changed": None}
            for c in session.scalars(select(Catalog).order_by(Catalog.name))]


class CatalogCache:
    """Per-process cache of catalogs for the request path.

    The version is re-read at most every ``ttl_s`` seconds (one indexed primary-key read);
    items are reloaded only when the version changed.
    """

    def __init__(self, session_factory: sessionmaker[Session], ttl_s: float = 1.0) -> None:
        self._sf = session_factory
        self._ttl = ttl_s
        self._lock = threading.Lock()
        self._views: dict[str, tuple[float, CatalogView]] = {}

    def get(self, name: str) -> CatalogView:
        now = time.monotonic()
        with self._lock:
            hit = self._views.get(name)
            if hit is not None and now - hit[0] < self._ttl:
                return hit[1]
            with self._sf() as s:
                version = s.scalar(select(Catalog.version).where(Catalog.name == name))
                if version is None:
                    raise NotFound(f"catalog {name!r} not found")
                if hit is not None and hit[1].version == version:
                    view = hit[1]
                else:
                    view = get_catalog(s, name=name)
            self._views[name] = (now, view)
            return view
