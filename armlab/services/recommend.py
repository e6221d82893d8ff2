"""The recommend use case: pick an arm for the unit, then rank items with that arm's variant.

Kept apart from the route so it runs in-process (the demo) and is tested with a fake assigner.
The assigner returns the arm, its variant config, the logged propensity and the impression id;
scoring never touches the database except through the catalog cache (a primary-key version
read at most once per ``ttl_s``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from armlab.adapters.scoring.batching import ScoringService
from armlab.adapters.scoring.scorers import UserContext
from armlab.errors import ValidationFailed
from armlab.services.catalog import CatalogCache


class AssignmentLike(Protocol):
    @property
    def impression_id(self) -> str: ...
    @property
    def experiment_key(self) -> str: ...
    @property
    def arm_key(self) -> str: ...
    @property
    def variant(self) -> dict[str, Any]: ...
    @property
    def propensity(self) -> float: ...
    @property
    def served_at(self) -> datetime: ...


class Assigns(Protocol):
    """What recommend needs of an assigner (armlab.services.assignment.Assigner fits)."""

    def assign(
        self, experiment_key: str, unit_id: str, context: dict[str, Any] | None = None
    ) -> AssignmentLike: ...


def recommend(
    *,
    assigner: Assigns,
    scoring: ScoringService,
    catalogs: CatalogCache,
    key: str,
    unit_id: str,
    user_text: str | None,
    history: list[str],
    candidates: list[dict[str, Any]] | None,
    catalog: str | None,
    k: int,
    exclude_history: bool = True,
    exclude: list[str] | None = None,
    context: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assign an arm and return its top-k items with the assignment's logging fields."""
    if (candidates is None) == (catalog is None):
        raise ValidationFailed("give exactly one of `candidates` or `catalog`", field="candidates")
    view = catalogs.get(catalog) if catalog is not None else None
    if view is not None:  # the catalog's id index: no per-request copy of the catalogue
        hist = [view.items[view.index[h]] if h in view.index else {"id": h, "title": ""}
                for h in history]
    else:
        lookup = {str(c["id"]): c for c in candidates or ()}
        hist = [lookup.get(h, {"id": h, "title": ""}) for h in history]
    user = UserContext(text=user_text or "", history=hist)
    ctx = dict(context or {})
    ctx.setdefault("k", k)
    assignment = assigner.assign(key, unit_id, ctx)
    excluded = set(exclude or ())
    if exclude_history:
        excluded |= set(history)
    if view is not None:
        items = scoring.rank(assignment.variant, user, k=k, catalog=view, exclude=excluded)
    else:
        items = scoring.rank(assignment.variant, user, k=k, items=candidates, exclude=excluded)
    return {
        "impression_id": assignment.impression_id,
        "experiment_key": assignment.experiment_key,
        "arm": assignment.arm_key,
        "propensity": assignment.propensity,
        "served_at": assignment.served_at.isoformat(),
        "items": items,
    }
