"""``armlab scorer``: the batching scorer as its own HTTP process (POST /score, GET /stats)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from armlab.adapters.scoring.batching import ScorerPool, ScoringService
from armlab.adapters.scoring.scorers import UserContext
from armlab.core.variants import parse_variant
from armlab.entrypoints.api.errors import install_error_handlers


class ScoreUser(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field("", max_length=10_000)
    history: list[dict[str, Any]] = Field(default_factory=list, max_length=1000)


class ScoreIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    variant: dict[str, Any]
    user: ScoreUser = Field(default_factory=lambda: ScoreUser())
    items: list[dict[str, Any]] = Field(..., min_length=1, max_length=100_000)
    k: int = Field(10, ge=1, le=100_000)


def create_scorer_app(
    *,
    device: str = "auto",
    models_dir: Path | None = None,
    cache_dir: Path | None = None,
    max_batch: int = 32,
    max_wait_s: float = 0.002,
) -> FastAPI:
    pool = ScorerPool(device=device, models_dir=models_dir, cache_dir=cache_dir)
    service = ScoringService(pool, max_batch=max_batch, max_wait_s=max_wait_s)
    app = FastAPI(title="armlab scorer", version="0.1.0")
    install_error_handlers(app)
    app.state.scoring = service

    @app.post("/score")
    def score(body: ScoreIn) -> dict[str, Any]:
        """Rank ``items`` for ``user`` with ``variant``; concurrent calls are batched."""
        variant = parse_variant(body.variant)
        items = [dict(it, id=str(it.get("id"))) for it in body.items]
        ranked = service.rank(variant, UserContext(body.user.text, body.user.history),
                              k=body.k, items=items)
        return {"items": ranked}

    @app.get("/stats")
    def stats() -> dict[str, Any]:
        """Requests, batches, mean batch size and items/s since start."""
        return service.stats()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
