"""Wires adapters together once: engine, session factory, and per-process services.

Routes, the CLI and the consumers receive a :class:`Services` instead of building their own
database engines. Nothing here runs at import time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from armlab.platform.db import make_engine, make_session_factory
from armlab.settings import Settings


@dataclass
class Services:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker  # type: ignore[type-arg]
    # Long-lived helpers other areas attach (snapshot cache, event producer, scorer...).
    extras: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        for obj in list(self.extras.values()):
            closer = getattr(obj, "close", None)
            if callable(closer):
                try:
                    closer()
                except Exception:  # noqa: BLE001,S110 - best effort on shutdown
                    pass
        self.engine.dispose()


def bootstrap(settings: Settings, *, engine: Engine | None = None) -> Services:
    engine = engine or make_engine(settings.database_url)
    return Services(settings=settings, engine=engine, session_factory=make_session_factory(engine))
