"""Item catalogs: versioned item lists in storage (the unit of work's ``catalogs`` port,
:class:`armlab.services.ports.CatalogStore`; ``catalogs`` / ``catalog_items`` on the database).

Loading the same content again is a no-op; different content bumps ``version`` and replaces
the items in one transaction. Scorers key their cached item embeddings by (catalog name,
version), so a reload invalidates the cache without any explicit signal.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from armlab.core.catalog import CatalogInfo, CatalogView, check_name, content_hash, normalise_items
from armlab.errors import NotFound, ValidationFailed
from armlab.services.ports import ReadsUnitOfWork

UowFactory = Callable[[], AbstractContextManager[ReadsUnitOfWork]]


def load_catalog(uow: ReadsUnitOfWork, *, name: str, items: list[dict[str, Any]]
                 ) -> dict[str, Any]:
    """Store ``items`` as catalog ``name``; bump the version when the content changed.

    The caller commits (``uow.commit()``). Returns {name, version, item_count, content_hash,
    changed}.
    """
    check_name(name)
    items = normalise_items(items)
    if not items:
        raise ValidationFailed("a catalog needs at least one item", field="items")
    digest = content_hash(items)
    current = uow.catalogs.get(name)
    if current is not None and current.content_hash == digest:
        return _summary(current, changed=False)
    info = CatalogInfo(name=name, version=1 if current is None else current.version + 1,
                       item_count=len(items), content_hash=digest)
    uow.catalogs.replace(info, items)
    return _summary(info, changed=True)


def store_catalog(uow_factory: UowFactory, *, name: str,
                  items: list[dict[str, Any]]) -> dict[str, Any]:
    """``armlab catalog load``: :func:`load_catalog` in its own committed transaction."""
    with uow_factory() as uow:
        out = load_catalog(uow, name=name, items=items)
        uow.commit()
    return out


def _summary(cat: CatalogInfo, *, changed: bool | None) -> dict[str, Any]:
    return {
        "name": cat.name,
        "version": cat.version,
        "item_count": cat.item_count,
        "content_hash": cat.content_hash,
        "changed": changed,
    }


def get_catalog(uow: ReadsUnitOfWork, *, name: str) -> CatalogView:
    """The catalog's items as a :class:`CatalogView` (raises NotFound)."""
    info = uow.catalogs.get(name)
    if info is None:
        raise NotFound(
            f"catalog {name!r} not found; load it with `armlab catalog load {name} FILE`"
        )
    return CatalogView(name=name, version=info.version, items=uow.catalogs.items(name))


def list_catalogs(uow: ReadsUnitOfWork) -> list[dict[str, Any]]:
    """Every catalog's summary, by name (``changed`` is None)."""
    return [_summary(c, changed=None) for c in uow.catalogs.list_all()]


class CatalogCache:
    """Per-process cache of catalogs for the request path.

    The version is re-read at most every ``ttl_s`` seconds (one indexed primary-key read, in a
    unit of work of its own from ``uow_factory``); items are reloaded only when the version
    changed.
    """

    def __init__(self, uow_factory: UowFactory, ttl_s: float = 1.0) -> None:
        self._uow = uow_factory
        self._ttl = ttl_s
        self._lock = threading.Lock()
        self._views: dict[str, tuple[float, CatalogView]] = {}

    def get(self, name: str) -> CatalogView:
        now = time.monotonic()
        with self._lock:
            hit = self._views.get(name)
            if hit is not None and now - hit[0] < self._ttl:
                return hit[1]
            with self._uow() as uow:
                version = uow.catalogs.version(name)
                if version is None:
                    raise NotFound(f"catalog {name!r} not found")
                if hit is not None and hit[1].version == version:
                    view = hit[1]
                else:
                    view = get_catalog(uow, name=name)
            self._views[name] = (now, view)
            return view
