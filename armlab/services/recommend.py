"""The recommend use case: pick an arm for the unit, then rank items with that arm's variant.

An interleaving experiment (``design: interleaving``) that is running picks a set of rankers
instead, ranks with each and answers their team-draft merge with its ``interleaving`` log
(:mod:`armlab.services.interleave`); ``arm`` is the team of the first item and
``propensity`` the probability of the set.

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
from armlab.core.catalog import CatalogView
from armlab.errors import ValidationFailed
from armlab.services.catalog import CatalogCache
from armlab.services.interleave import InterleavedAssignment, rank_interleaved


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
    """What recommend needs of an assigner (armlab.services.assignment.Assigner fits). An
    assigner with ``serve`` (the Assigner) is asked that instead, which also serves
    interleaving experiments (:class:`InterleavedAssignment`)."""

    def assign(
        self, experiment_key: str, unit_id: str, context: dict[str, Any] | None = None
    ) -> AssignmentLike: ...


def _user(view: CatalogView | None, candidates: list[dict[str, Any]] | None,
          user_text: str | None, history: list[str]) -> UserContext:
    """The user's text and history items (looked up in the catalog or the candidates)."""
    if view is not None:  # the catalog's id index: no per-request copy of the catalogue
        hist = [view.items[view.index[h]] if h in view.index else {"id": h, "title": ""}
                for h in history]
    else:
        lookup = {str(c["id"]): c for c in candidates or ()}
        hist = [lookup.get(h, {"id": h, "title": ""}) for h in history]
    return UserContext(text=user_text or "", history=hist)


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
    user = _user(view, candidates, user_text, history)
    ctx = dict(context or {})
    ctx.setdefault("k", k)
    serve = getattr(assigner, "serve", None)
    served: AssignmentLike | InterleavedAssignment = (
        serve(key, unit_id, ctx) if serve is not None else assigner.assign(key, unit_id, ctx))
    excluded = set(exclude or ())
    if exclude_history:
        excluded |= set(history)
    if isinstance(served, InterleavedAssignment):
        items, log = rank_interleaved(served, scoring, user, k=k, items=candidates,
                                      catalog=view, exclude=excluded)
        return {
            "impression_id": served.impression_id,
            "experiment_key": served.experiment_key,
            "arm": log["teams"][0] if log["teams"] else served.rankers[0],
            "propensity": served.propensity,
            "served_at": served.served_at.isoformat(),
            "items": items,
            "interleaving": log,
        }
    if view is not None:
        items = scoring.rank(served.variant, user, k=k, catalog=view, exclude=excluded)
    else:
        items = scoring.rank(served.variant, user, k=k, items=candidates, exclude=excluded)
    return {
        "impression_id": served.impression_id,
        "experiment_key": served.experiment_key,
        "arm": served.arm_key,
        "propensity": served.propensity,
        "served_at": served.served_at.isoformat(),
        "items": items,
    }
