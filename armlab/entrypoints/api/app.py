"""The FastAPI application factory: routers, error handlers, and the process's services.

``create_app(settings)`` builds :class:`armlab.bootstrap.Services` in the lifespan (nothing at
import time) and closes them on shutdown; ``create_app(settings, services)`` uses services the
caller built (the demo, tests) and leaves closing them to the caller. Start-up starts the
assignment cache and warms the event producer in the background.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from armlab import __version__
from armlab.bootstrap import Services, bootstrap
from armlab.entrypoints.api import (
    routes_assign,
    routes_events,
    routes_experiments,
    routes_health,
    routes_recommend,
    routes_report,
)
from armlab.entrypoints.api.auth import Authenticator
from armlab.entrypoints.api.errors import install_error_handlers
from armlab.entrypoints.api.headers import SecurityHeaders
from armlab.entrypoints.api.limits import BodyLimit
from armlab.entrypoints.api.throttle import Throttle
from armlab.entrypoints.api.ui import install_dashboard
from armlab.settings import Settings, get_settings

# Order matters: /assign (the hottest path) is matched right after the health probes.
ROUTERS = (
    routes_health.router,
    routes_assign.router,
    routes_experiments.router,
    routes_events.router,
    routes_recommend.router,
    routes_report.router,
)


def create_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    """Build the API. The services are built in the lifespan unless ``services`` is given."""
    settings = settings or (services.settings if services else get_settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc = services or bootstrap(settings,
                                    db_call_timeout_s=settings.api_db_timeout_s or None)
        app.state.services = svc
        app.state.event_gate = gate = routes_events.EventGate.from_settings(settings)
        svc.assigner.start()
        routes_events.warm_producer(svc)
        if settings.gc_freeze:
            # Move everything built so far (modules, models, the app: ~180k objects) out of
            # the cyclic collector's reach: a full collection then scans only what requests
            # allocate. Without it, every few chart requests paid a full collection of the
            # whole heap (200-800 ms on the 2-core VM; the dashboard benchmark's slow mode).
            # No gc.collect() first: it would cost a full collection per start-up (tests
            # start hundreds of apps); start-up garbage stays frozen until shutdown.
            gc.freeze()
        try:
            yield
        finally:
            gate.close()
            if settings.gc_freeze:
                gc.unfreeze()  # what this app built may be collected again once it is gone
            if services is None:
                svc.close()
            else:
                svc.assigner.close()

    app = FastAPI(
        title="armlab",
        version=__version__,
        description="Bandit-based continuous experimentation for language-model recommenders.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.authenticator = Authenticator(
        settings.auth_tokens.get_secret_value(), disabled=settings.auth_disabled,
        throttle=Throttle(free=settings.auth_throttle_failures,
                          max_s=settings.auth_throttle_max_s),
    )
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    install_dashboard(app, settings)  # the HTML dashboard under /ui
    app.add_middleware(SecurityHeaders)  # on the HTML pages: the dashboard and the report
    app.add_middleware(routes_assign.AssignFastPath)
    # Added last, so outermost: an oversized body is refused before anything reads it.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app
