"""Item catalogs: versioned item lists in the database (``catalogs`` / ``catalog_items``).

Loading the same content again is a no-op; different content bumps ``version`` and replaces
the items in one transaction. Scorers key their cached item embeddings by (catalog name,
version), so a reload invalidates the cache without any explicit signal.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from armlab.adapters.db.models import Catalog, CatalogItem
from armlab.adapters.db.uow import UnitOfWork
from armlab.core.catalog import CatalogView, check_name, content_hash, normalise_items
from armlab.errors import NotFound, ValidationFailed

_CORE = ("id", "title", "text", "popularity")


def load_catalog(uow: UnitOfWork, *, name: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    """Store ``items`` as catalog ``name``; bump the version when the content changed.

    The caller commits (``uow.commit()``). Returns {name, version, item_count, content_hash,
    changed}.
    """
    check_name(name)
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


def store_catalog(uow_factory: Callable[[], UnitOfWork], *, name: str,
                  items: list[dict[str, Any]]) -> dict[str, Any]:
    """``armlab catalog load``: :func:`load_catalog` in its own committed transaction."""
    with uow_factory() as uow:
        out = load_catalog(uow, name=name, items=items)
        uow.commit()
    return out


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
