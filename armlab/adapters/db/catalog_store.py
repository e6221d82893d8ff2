"""Item catalogs in the database (``catalogs`` / ``catalog_items``): :class:`SqlCatalogs`, the
unit of work's ``catalogs``. Items go in and come out as plain dicts (``id``, ``title``,
``text``, ``popularity`` and any other attribute)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from armlab.adapters.db.models import Catalog, CatalogItem
from armlab.core.catalog import CatalogInfo

_CORE = ("id", "title", "text", "popularity")


def _info(cat: Catalog) -> CatalogInfo:
    return CatalogInfo(name=cat.name, version=cat.version, item_count=cat.item_count,
                       content_hash=cat.content_hash)


class SqlCatalogs:
    """Implements :class:`armlab.services.ports.CatalogStore` in the unit of work's session
    (nothing here commits)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, name: str) -> CatalogInfo | None:
        cat = self.session.get(Catalog, name)
        return None if cat is None else _info(cat)

    def version(self, name: str) -> int | None:
        """The catalog's version alone (one primary-key read)."""
        return self.session.scalar(select(Catalog.version).where(Catalog.name == name))

    def items(self, name: str) -> list[dict[str, Any]]:
        """The catalog's items ordered by id."""
        rows = self.session.scalars(
            select(CatalogItem).where(CatalogItem.catalog_name == name)
            .order_by(CatalogItem.item_id)
        )
        return [
            {**(r.attrs or {}), "id": r.item_id, "title": r.title, "text": r.text,
             "popularity": r.popularity}
            for r in rows
        ]

    def list_all(self) -> list[CatalogInfo]:
        """Every catalog, by name."""
        return [_info(c) for c in self.session.scalars(select(Catalog).order_by(Catalog.name))]

    def replace(self, info: CatalogInfo, items: list[dict[str, Any]]) -> None:
        """Store ``info`` (a new catalog, or a new version of one) and make ``items`` its
        items, replacing the ones it had; flushed."""
        s = self.session
        cat = s.get(Catalog, info.name)
        if cat is None:
            s.add(Catalog(name=info.name, version=info.version, content_hash=info.content_hash,
                          item_count=info.item_count))
        else:
            s.execute(delete(CatalogItem).where(CatalogItem.catalog_name == info.name))
            cat.version = info.version
            cat.content_hash = info.content_hash
            cat.item_count = info.item_count
        s.flush()
        s.add_all(
            CatalogItem(
                catalog_name=info.name,
                item_id=it["id"],
                title=it["title"],
                text=it["text"],
                popularity=float(it.get("popularity") or 0.0),
                attrs={k: v for k, v in it.items() if k not in _CORE},
            )
            for it in items
        )
        s.flush()
