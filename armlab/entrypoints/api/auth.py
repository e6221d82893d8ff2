"""Bearer-token authentication with roles, from ``ARMLAB_AUTH_TOKENS``.

Format: ``name:role:secret`` triples separated by commas. ``admin`` may do everything;
``producer`` sends events and asks for assignments/recommendations; ``reader`` reads.
Secrets are compared in constant time (hmac.compare_digest) against every configured token so
the time taken does not reveal which prefix matched. Wrong tokens are throttled per client
address (:mod:`armlab.entrypoints.api.throttle`): after a few, the address gets 429 with
``Retry-After`` for an exponentially growing while (at most a minute), whatever it sends.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

from armlab.entrypoints.api.throttle import Throttle, address_key
from armlab.errors import ConfigurationError, Forbidden, Unauthorized

ROLES = ("admin", "producer", "reader")
# Which roles satisfy a required role.
GRANTS: dict[str, frozenset[str]] = {
    "admin": frozenset({"admin"}),
    "producer": frozenset({"admin", "producer"}),
    "reader": frozenset({"admin", "reader", "producer"}),
}


@dataclass(frozen=True)
class Principal:
    name: str
    role: str


def parse_tokens(raw: str) -> list[tuple[str, str, bytes]]:
    """Parse ``name:role:secret,...``; raise ConfigurationError naming the bad entry."""
    tokens: list[tuple[str, str, bytes]] = []
    # Errors name an entry by its position (and its name when it has the full shape), never
    # by its text: a malformed entry may be a bare secret, or have the secret where the role
    # belongs.
    for i, entry in enumerate((e.strip() for e in raw.split(",")), start=1):
        if not entry:
            continue
        parts = entry.split(":", 2)
        if len(parts) != 3 or not all(parts):
            raise ConfigurationError(
                f"ARMLAB_AUTH_TOKENS entry {i} must look like name:role:secret (its value is "
                "not shown: it may hold a secret)"
            )
        name, role, secret = parts
        if role not in ROLES:
            raise ConfigurationError(
                f"ARMLAB_AUTH_TOKENS entry {i} ({name!r}) has an unknown role; "
                f"valid roles: {', '.join(ROLES)}"
            )
        tokens.append((name, role, secret.encode()))
    return tokens


class Authenticator:
    def __init__(self, raw_tokens: str, *, disabled: bool = False,
                 throttle: Throttle | None = None) -> None:
        self._tokens = parse_tokens(raw_tokens)
        self._disabled = disabled
        self.throttle = throttle if throttle is not None else Throttle()
        # fingerprint key -> {(name, role, fingerprint of the secret)} (see holds)
        self._fingerprints: dict[bytes, frozenset[tuple[str, str, str]]] = {}

    def authenticate(self, authorization: str | None, client: str | None = None) -> Principal:
        """The principal of an ``Authorization: Bearer`` header. With ``client`` (the client's
        address) the attempt goes through the throttle: a blocked address gets
        :class:`~armlab.errors.TooManyRequests` before its token is looked at, and a wrong
        token counts against it. (The API's tokens carry no name, so bearer attempts are
        counted per address only; the sign-in form also counts the name typed.)"""
        if self._disabled:
            return Principal(name="embedded", role="admin")
        if not authorization:
            raise Unauthorized("missing Authorization header; send 'Authorization: Bearer <token>'")
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise Unauthorized("Authorization header must be 'Bearer <token>'")
        key = address_key(client)
        if key is not None:
            self.throttle.check((key,))
        found = self.lookup(presented.strip().encode())
        if found is None:
            if key is not None:
                self.throttle.failed((key,))
            raise Unauthorized("invalid token")
        return found

    def lookup(self, candidate: bytes) -> Principal | None:
        """The principal whose secret is ``candidate`` (constant time over every token)."""
        found: Principal | None = None
        for name, role, secret in self._tokens:
            if hmac.compare_digest(candidate, secret) and found is None:
                found = Principal(name=name, role=role)
        return found

    @property
    def disabled(self) -> bool:
        return self._disabled

    @staticmethod
    def fingerprint(key: bytes, secret: bytes) -> str:
        """A keyed fingerprint of a token's secret (HMAC-SHA256 under ``key``, 16 bytes):
        what a dashboard session carries to stay bound to the credential that created it."""
        digest = hmac.new(key, secret, hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def holds(self, principal: Principal, key: bytes, fingerprint: str) -> bool:
        """Whether a configured token still has ``principal``'s name and role and a secret
        whose :meth:`fingerprint` under ``key`` is ``fingerprint``: a dashboard session
        outlives no token removal, role change or secret rotation."""
        if self._disabled:
            return principal.name == "embedded"
        table = self._fingerprints.get(key)
        if table is None:
            table = frozenset((name, role, self.fingerprint(key, secret))
                              for name, role, secret in self._tokens)
            self._fingerprints[key] = table
        found = False
        for name, role, fp in table:
            same = hmac.compare_digest(fp.encode(), fingerprint.encode())
            found |= same and name == principal.name and role == principal.role
        return found

    def require(self, principal: Principal, role: str) -> None:
        if principal.role not in GRANTS[role]:
            raise Forbidden(
                f"token {principal.name!r} has role {principal.role!r}; this needs role {role!r}"
            )
