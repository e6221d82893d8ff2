"""FastAPI dependencies shared by every router: the services and the principal.

``get_services`` and ``require_role`` are ``async``: they only read app state and compare
tokens, and FastAPI runs a sync dependency in the AnyIO worker thread pool, where it would
queue behind whatever holds the pool's threads (an ``async`` route would wait on it too).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request

from armlab.bootstrap import Services
from armlab.entrypoints.api.auth import Authenticator, Principal


async def get_services(request: Request) -> Services:
    return request.app.state.services


def require_role(role: str) -> Callable[[Request], Awaitable[Principal]]:
    """Dependency factory: authenticate the bearer token (throttled per client address) and
    check it grants ``role``."""

    async def dependency(request: Request) -> Principal:
        auth: Authenticator = request.app.state.authenticator
        principal = auth.authenticate(request.headers.get("authorization"),
                                      request.client.host if request.client else None)
        auth.require(principal, role)
        return principal

    return dependency
