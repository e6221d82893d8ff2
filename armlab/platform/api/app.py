"""The FastAPI application factory. Routers live in their own modules and plug in here."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from armlab.platform.api.auth import Authenticator
from armlab.platform.api.errors import install_error_handlers
from armlab.platform.bootstrap import Services, bootstrap
from armlab.settings import Settings, get_settings

# Each module exposes ``router`` (an APIRouter) and may expose ``on_startup(services)``
# and ``on_shutdown(services)`` hooks, and ``middleware`` (an ASGI middleware class wrapped
# around the routers, e.g. a fast path for a hot endpoint).
ROUTER_MODULES = (
    "armlab.platform.api.routes_health",
    "armlab.platform.api.routes_assign",       # /assign (hottest path, matched early)
    "armlab.platform.api.routes_experiments",  # registry, lifecycle, results
    "armlab.platform.api.routes_events",       # /v1/events (producer HTTP bridge)
    "armlab.platform.api.routes_recommend",    # /recommend (scoring)
    "armlab.platform.api.routes_report",       # /report (demo/report)
)


def _router_modules() -> list[object]:
    modules = []
    for name in ROUTER_MODULES:
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    return modules


def create_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    """Build the API. The engine is created in the lifespan unless ``services`` is given."""
    settings = settings or (services.settings if services else get_settings())
    modules = _router_modules()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = services is None
        svc = services or bootstrap(settings)
        app.state.services = svc
        for m in modules:
            hook = getattr(m, "on_startup", None)
            if hook:
                hook(svc)
        try:
            yield
        finally:
            for m in reversed(modules):
                hook = getattr(m, "on_shutdown", None)
                if hook:
                    hook(svc)
            if own:
                svc.close()

    app = FastAPI(
        title="armlab",
        version="0.1.0",
        description="Bandit-based continuous experimentation for language-model recommenders.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.authenticator = Authenticator(
        settings.auth_tokens.get_secret_value(), disabled=settings.auth_disabled
    )
    install_error_handlers(app)
    for m in modules:
        app.include_router(m.router)  # type: ignore[attr-defined]
        mw = getattr(m, "middleware", None)
        if mw is not None:
            app.add_middleware(mw)
    return app
