"""FastAPI dependencies shared by every router: services, a unit of work, the principal."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from fastapi import Depends, Request

from armlab.adapters.db.uow import UnitOfWork
from armlab.bootstrap import Services
from armlab.entrypoints.api.auth import Authenticator, Principal


def get_services(request: Request) -> Services:
    return request.app.state.services


def get_uow(services: Services = Depends(get_services)) -> Iterator[UnitOfWork]:
    """A unit of work for a read path (never committed: it rolls back when the request ends).
    Write paths open their own and commit."""
    with services.uow() as uow:
        yield uow


def require_role(role: str) -> Callable[[Request], Principal]:
    """Dependency factory: authenticate the bearer token and check it grants ``role``."""

    def dependency(request: Request) -> Principal:
        auth: Authenticator = request.app.state.authenticator
        principal = auth.authenticate(request.headers.get("authorization"))
        auth.require(principal, role)
        return principal

    return dependency
