"""The API freezes its start-up heap out of the cyclic garbage collector (full collections of
it made every few dashboard chart requests 200-800 ms slower) and unfreezes it on shutdown."""

from __future__ import annotations

import gc

from fastapi.testclient import TestClient

from armlab.entrypoints.api.app import create_app
from armlab.settings import Settings


def test_startup_heap_is_frozen_while_the_app_runs(sqlite_url: str) -> None:
    gc.unfreeze()
    with TestClient(create_app(Settings(database_url=sqlite_url, transport="memory"))) as c:
        assert c.get("/healthz").status_code == 200
        frozen = gc.get_freeze_count()
        assert frozen > 10_000  # the modules, models and app built at start-up
    assert gc.get_freeze_count() == 0


def test_freezing_can_be_turned_off(sqlite_url: str) -> None:
    gc.unfreeze()
    settings = Settings(database_url=sqlite_url, transport="memory", gc_freeze=False)
    with TestClient(create_app(settings)):
        assert gc.get_freeze_count() == 0
