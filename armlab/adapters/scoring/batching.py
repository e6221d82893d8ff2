"""The scorer service: a batching queue in front of the scorers.

Concurrent requests (API handler threads) are queued; one worker thread takes the oldest,
then waits up to ``max_wait_s`` for more requests for the same variant (and catalog), up to
``max_batch`` requests, and runs them together: user texts of a batch go through the encoder
in one forward pass and, against a cached catalog, one (B, d) x (d, N) matrix product ranks
every user at once. Each caller gets its own result through a Future.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from armlab.adapters.scoring.scorers import (
    Item,
    UserContext,
    build_scorer,
    can_rank_catalog,
    rank_catalog_many,
    score_many,
    top_k,
)
from armlab.core.catalog import CatalogView
from armlab.core.variants import VariantConfig, parse_variant
from armlab.errors import ArmlabError, ScoringError, ServiceUnavailable


class ScorerPool:
    """One scorer per distinct variant config per process (models are shared underneath)."""

    def __init__(
        self,
        *,
        device: str = "auto",
        models_dir: Path | None = None,
        cache_dir: Path | None = None,
        popularity: dict[str, float] | None = None,
    ) -> None:
        self.device = device
        self.models_dir = models_dir
        self.cache_dir = cache_dir
        self.popularity = popularity
        self._lock = threading.Lock()
        self._scorers: dict[str, Any] = {}

    def get(self, variant: VariantConfig | dict[str, Any]) -> Any:
        v = parse_variant(variant)
        key = v.cache_key()
        with self._lock:
            sc = self._scorers.get(key)
            if sc is None:
                sc = build_scorer(v, device=self.device, models_dir=self.models_dir,
                                  cache_dir=self.cache_dir, popularity=self.popularity)
                self._scorers[key] = sc
            return sc


@dataclass
class _Request:
    variant: VariantConfig
    user: UserContext
    k: int
    items: Sequence[Item] | None = None
    catalog: CatalogView | None = None
    exclude: set[str] = field(default_factory=set)
    future: Future[list[dict[str, Any]]] = field(default_factory=Future)

    def group(self) -> tuple[str, str, int]:
        cat = self.catalog
        return (self.variant.cache_key(), cat.name if cat else "", cat.version if cat else 0)


class ScoringService:
    """Batching front of a :class:`ScorerPool`: ``rank`` blocks, ``submit`` returns a Future."""

    def __init__(
        self,
        pool: ScorerPool,
        *,
        max_batch: int = 32,
        max_wait_s: float = 0.002,
        timeout_s: float = 30.0,
    ) -> None:
        if max_batch < 1 or max_wait_s < 0:
            raise ScoringError("max_batch must be >= 1 and max_wait_s >= 0")
        self.pool = pool
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.timeout_s = timeout_s
        self._q: queue.Queue[_Request | None] = queue.Queue()
        self._held: list[_Request] = []  # taken from the queue but belonging to another group
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._stats_lock = threading.Lock()
        self.requests = 0
        self.batches = 0
        self.items = 0
        self.busy_s = 0.0

    # -- lifecycle
    def start(self) -> ScoringService:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="armlab-scorer", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._q.put(None)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # -- API
    def submit(
        self,
        variant: VariantConfig | dict[str, Any],
        user: UserContext,
        *,
        k: int,
        items: Sequence[Item] | None = None,
        catalog: CatalogView | None = None,
        exclude: set[str] | None = None,
    ) -> Future[list[dict[str, Any]]]:
        if (items is None) == (catalog is None):
            raise ScoringError("give either candidate items or a catalog")
        if k < 1:
            raise ScoringError(f"k must be >= 1, got {k}")
        if self._thread is None:
            self.start()
        req = _Request(parse_variant(variant), user, k, items, catalog, set(exclude or ()))
        self._q.put(req)
        return req.future

    def rank(self, variant: VariantConfig | dict[str, Any], user: UserContext, **kw: Any
             ) -> list[dict[str, Any]]:
        fut = self.submit(variant, user, **kw)
        try:
            return fut.result(timeout=self.timeout_s)
        except TimeoutError:
            raise ServiceUnavailable(f"scoring took longer than {self.timeout_s}s") from None

    def stats(self) -> dict[str, Any]:
        with self._stats_lock:
            return {
                "requests": self.requests,
                "batches": self.batches,
                "mean_batch": self.requests / self.batches if self.batches else 0.0,
                "items_scored": self.items,
                "items_per_s": self.items / self.busy_s if self.busy_s else 0.0,
            }

    # -- worker
    def _next(self, timeout: float | None) -> _Request | None:
        if self._held:
            return self._held.pop(0)
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            first = self._next(timeout=0.1)
            if first is None:
                continue
            batch = [first]
            deadline = time.monotonic() + self.max_wait_s
            others: list[_Request] = []
            while len(batch) < self.max_batch:
                left = deadline - time.monotonic()
                try:
                    nxt = self._q.get_nowait() if left <= 0 else self._q.get(timeout=left)
                except queue.Empty:
                    break
                if nxt is None:
                    break
                (batch if nxt.group() == first.group() else others).append(nxt)
            self._held.extend(others)
            self._execute(batch)

    def _execute(self, batch: list[_Request]) -> None:
        t0 = time.perf_counter()
        n_items = 0
        try:
            scorer = self.pool.get(batch[0].variant)
            if batch[0].catalog is not None:
                results = self._rank_catalog(scorer, batch)
                n_items = sum(len(r.catalog.items) for r in batch if r.catalog)
            else:
                results = self._rank_items(scorer, batch)
                n_items = sum(len(r.items or ()) for r in batch)
            for r, res in zip(batch, results, strict=True):
                r.future.set_result(res)
        except ArmlabError as exc:
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(exc)
        except Exception as exc:  # noqa: BLE001 - a scoring failure must reach the caller
            err = ScoringError(f"scoring failed: {type(exc).__name__}: {exc}")
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(err)
        with self._stats_lock:
            self.requests += len(batch)
            self.batches += 1
            self.items += n_items
            self.busy_s += time.perf_counter() - t0

    @staticmethod
    def _rank_catalog(scorer: Any, batch: list[_Request]) -> list[list[dict[str, Any]]]:
        cat = batch[0].catalog
        assert cat is not None
        if can_rank_catalog(scorer):
            return rank_catalog_many(
                scorer, [r.user for r in batch], cat, [r.k for r in batch],
                [r.exclude for r in batch]
            )
        return [top_k(cat.ids, scorer.score(r.user, cat.items), r.k, r.exclude) for r in batch]

    @staticmethod
    def _rank_items(scorer: Any, batch: list[_Request]) -> list[list[dict[str, Any]]]:
        out = []
        score_lists = score_many(scorer, [(r.user, r.items or []) for r in batch])
        for r, scores in zip(batch, score_lists, strict=True):
            ids = [str(it.get("id")) for it in (r.items or [])]
            out.append(top_k(ids, np.asarray(scores), r.k, r.exclude))
        return out
