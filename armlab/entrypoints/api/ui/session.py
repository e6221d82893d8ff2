"""Dashboard sessions: a signed cookie after sign-in with an armlab token, and CSRF tokens.

The session cookie (``armlab_session``) is HttpOnly, SameSite=Strict, and signed and
time-stamped with ``ARMLAB_UI_SECRET`` (itsdangerous, HMAC-SHA1 over a key derived from the
secret); it holds the token's name and role and a random CSRF token, never the token itself.
Every request re-checks that a configured token still has that name and role.

CSRF: every state-changing form carries the session's CSRF token in a hidden field, compared
in constant time on the server (the synchroniser-token pattern); a request without a valid
one is refused with 403. The sign-in form, which has no session yet, is bound to a random
pre-session cookie (``armlab_login``) the same way (double submit).
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from armlab.entrypoints.api.auth import Authenticator, Principal

SESSION_COOKIE = "armlab_session"
LOGIN_COOKIE = "armlab_login"
PATH = "/ui"


@dataclass(frozen=True)
class Session:
    principal: Principal
    csrf: str

    @property
    def is_admin(self) -> bool:
        return self.principal.role == "admin"


class SessionManager:
    """Issues and reads the dashboard's cookies."""

    def __init__(self, secret: str, *, ttl_s: int, secure: bool) -> None:
        self._signer = URLSafeTimedSerializer(secret or secrets.token_urlsafe(32),
                                              salt="armlab-ui-session")
        self._login = URLSafeTimedSerializer(secret or secrets.token_urlsafe(32),
                                             salt="armlab-ui-login")
        self.ttl_s = ttl_s
        self.secure = secure

    def _set(self, response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(name, value, max_age=max_age, path=PATH, httponly=True,
                            samesite="strict", secure=self.secure)

    # -- the session -------------------------------------------------------------------
    def start(self, response: Response, principal: Principal) -> Session:
        """Set a new session cookie for ``principal`` (a fresh CSRF token each sign-in)."""
        session = Session(principal, secrets.token_urlsafe(32))
        value = self._signer.dumps({"n": principal.name, "r": principal.role,
                                    "c": session.csrf})
        self._set(response, SESSION_COOKIE, value, self.ttl_s)
        response.delete_cookie(LOGIN_COOKIE, path=PATH)
        return session

    def end(self, response: Response) -> None:
        response.delete_cookie(SESSION_COOKIE, path=PATH)

    def read(self, request: Request, auth: Authenticator) -> Session | None:
        """The request's valid session, or None (absent, forged, expired or revoked)."""
        raw = request.cookies.get(SESSION_COOKIE)
        if not raw:
            return None
        try:
            data = self._signer.loads(raw, max_age=self.ttl_s)
            principal = Principal(name=str(data["n"]), role=str(data["r"]))
            csrf = str(data["c"])
        except (BadSignature, KeyError, TypeError):
            return None
        if auth.current(principal) is None:
            return None
        return Session(principal, csrf)

    @staticmethod
    def csrf_ok(session: Session, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(session.csrf.encode(),
                                                       str(presented).encode())

    # -- the sign-in form --------------------------------------------------------------
    def login_token(self, request: Request) -> tuple[str, str]:
        """``(nonce, token)`` for the sign-in form: the token goes in the form, the nonce in
        the pre-session cookie (:meth:`set_login_cookie`)."""
        nonce = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
        return nonce, str(self._login.dumps(nonce))

    def set_login_cookie(self, response: Response, nonce: str) -> None:
        self._set(response, LOGIN_COOKIE, nonce, 3600)

    def login_ok(self, request: Request, presented: str | None) -> bool:
        nonce = request.cookies.get(LOGIN_COOKIE)
        if not nonce or not presented:
            return False
        try:
            signed = str(self._login.loads(presented, max_age=3600))
        except BadSignature:
            return False
        return hmac.compare_digest(signed.encode(), nonce.encode())
