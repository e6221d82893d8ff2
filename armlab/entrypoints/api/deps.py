"""FastAPI dependencies shared by every router: the services and the principal."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request

from armlab.bootstrap import Services
from armlab.entrypoints.api.auth import Authenticator, Principal


def get_services(request: Request) -> Services:
    return request.app.state.services


def require_role(role: str) -> Callable[[Request], Principal]:
    """Dependency factory: authenticate the bearer token and check it grants ``role``."""

    def dependency(request: Request) -> Principal:
        auth: Authenticator = request.app.state.authenticator
        principal = auth.authenticate(request.headers.get("authorization"))
        auth.require(principal, role)
        return principal

    return dependency
