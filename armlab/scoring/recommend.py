"""The recommend use case: pick an arm for the unit, then rank items with that arm's variant.

Kept apart from the route so it can be called in-process (the demo) and tested with a fake
assigner. The assigner (armlab.platform.assignment, from the allocation area) returns the arm,
its variant config, the logged propensity and the impression id; scoring never touches the DB
except through the catalog cache (a primary-key version read at most once per ``ttl_s``).
"""

from __future__ import annotations

from typing import Any

from armlab.errors import ServiceUnavailable, ValidationFailed
from armlab.scoring.scorers import UserContext


def ensure_scoring(services: Any) -> None:
    """Attach the scorer pool, the batching service and the catalog cache once per process."""
    from armlab.platform.catalog import CatalogCache
    from armlab.scoring.service import ScorerPool, ScoringService

    extras = services.extras
    st = services.settings
    if "scorer_pool" not in extras:
        from armlab.scoring.models import set_cpu_threads

        set_cpu_threads(getattr(st, "scoring_threads", 0))
        extras["scorer_pool"] = ScorerPool(
            device=st.scoring_device, models_dir=st.models_dir,
            cache_dir=st.home / "model-cache",
        )
    if "scoring" not in extras:
        extras["scoring"] = ScoringService(extras["scorer_pool"])
    if "catalogs" not in extras:
        extras["catalogs"] = CatalogCache(services.session_factory, ttl_s=st.snapshot_refresh_s)


def recommend(
    services: Any,
    *,
    key: str,
    unit_id: str,
    user_text: str | None,
    history: list[str],
    candidates: list[dict[str, Any]] | None,
    catalog: str | None,
    k: int,
    exclude_history: bool = True,
    context: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assign an arm and return its top-k items with the assignment's logging fields."""
    if (candidates is None) == (catalog is None):
        raise ValidationFailed("give exactly one of `candidates` or `catalog`", field="candidates")
    assigner = services.extras.get("assigner")
    if assigner is None:
        raise ServiceUnavailable("no assigner is running in this process (routes_assign)")
    ensure_scoring(services)
    view = services.extras["catalogs"].get(catalog) if catalog is not None else None
    lookup: dict[str, dict[str, Any]] = {}
    if view is not None:
        lookup = {i: view.items[n] for i, n in view.index.items()}
    elif candidates:
        lookup = {str(c["id"]): c for c in candidates}
    hist = [lookup.get(h, {"id": h, "title": ""}) for h in history]
    user = UserContext(text=user_text or "", history=hist)
    ctx = dict(context or {})
    ctx.setdefault("k", k)
    assignment = assigner.assign(key, unit_id, ctx)
    scoring = services.extras["scoring"]
    exclude = set(history) if exclude_history else set()
    if view is not None:
        items = scoring.rank(assignment.variant, user, k=k, catalog=view, exclude=exclude)
    else:
        items = scoring.rank(assignment.variant, user, k=k, items=candidates, exclude=exclude)
    return {
        "impression_id": assignment.impression_id,
        "experiment_key": assignment.experiment_key,
        "arm": assignment.arm_key,
        "propensity": assignment.propensity,
        "served_at": assignment.served_at.isoformat(),
        "items": items,
    }
