"""FastAPI dependencies shared by every router: services, sessions, the caller's principal."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from armlab.platform.api.auth import Authenticator, Principal
from armlab.platform.bootstrap import Services


def get_services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def get_session(services: Services = Depends(get_services)) -> Iterator[Session]:
    """A session for read paths; writes go through the service layer's unit of work."""
    with services.session_factory() as session:
        yield session


def require_role(role: str) -> Callable[[Request], Principal]:
    """Dependency factory: authenticate the bearer token and check it grants ``role``."""

    def dependency(request: Request) -> Principal:
        auth: Authenticator = request.app.state.authenticator
        principal = auth.authenticate(request.headers.get("authorization"))
        auth.require(principal, role)
        return principal

    return dependency
