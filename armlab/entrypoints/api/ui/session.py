"""Dashboard sessions: a signed cookie after sign-in with an armlab token, and CSRF tokens.

The session cookie (``armlab_session``) is HttpOnly, SameSite=Strict, and signed with
``ARMLAB_UI_SECRET`` (itsdangerous, HMAC-SHA1 over a key derived from the secret). It holds
the token's name and role, a random session id, a random CSRF token, when the session began
and when it was last renewed, and a *credential fingerprint*: HMAC-SHA256 of the token's
secret under a key derived from ``ARMLAB_UI_SECRET`` (16 bytes; never the secret itself, and
worthless without the UI secret). Every request checks, against the token table the process
runs with now:

- that a configured token still has that name, role *and* secret (the fingerprint): removing
  a token, changing its role or rotating its secret ends its sessions at once, and after a
  restart too when ``ARMLAB_UI_SECRET`` is set (the cookies stay readable, the old secret's
  fingerprint matches nothing);
- that the session is not older than ``ARMLAB_UI_SESSION_MAX_S`` since sign-in (absolute,
  whatever the activity) and was used within ``ARMLAB_UI_SESSION_TTL_S`` (idle timeout: a
  request renews the cookie, at most once a minute);
- that its id was not signed out. Sign-out records the id in this process's revocation set
  until the session's absolute end, so a copy of the cookie taken before "Sign out" is dead
  after it. The set lives in memory: another API process, or this one after a restart, does
  not know the id (the idle and absolute limits and token rotation still end it).

CSRF: every state-changing form carries the session's CSRF token in a hidden field, compared
in constant time on the server (the synchroniser-token pattern); a request without a valid
one is refused with 403. The sign-in form, which has no session yet, is bound to a random
pre-session cookie (``armlab_login``) the same way (double submit).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeSerializer, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from armlab.entrypoints.api.auth import Authenticator, Principal

SESSION_COOKIE = "armlab_session"
LOGIN_COOKIE = "armlab_login"
PATH = "/ui"
#: A request renews the cookie (the idle clock) when its last renewal is this old.
RENEW_AFTER_S = 60
#: Clock skew tolerated on a cookie's times (several processes, one secret).
SKEW_S = 60
#: Where a request's renewed cookie waits for :class:`SessionRenewal` (``scope["state"]``).
_RENEW_KEY = "armlab_ui_renew"


def _now() -> float:
    return time.time()


@dataclass(frozen=True)
class Session:
    principal: Principal
    csrf: str
    sid: str = ""
    fingerprint: str = ""
    issued: int = 0  # when the session began (sign-in), epoch seconds

    @property
    def is_admin(self) -> bool:
        return self.principal.role == "admin"


class Revocations:
    """Signed-out session ids, each kept until its session would have ended anyway; in this
    process's memory (see the module's docstring for what that does not cover)."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def revoke(self, sid: str, until: float) -> None:
        now = _now()
        with self._lock:
            for old in [s for s, t in self._until.items() if t < now]:
                del self._until[old]
            self._until[sid] = until

    def __contains__(self, sid: object) -> bool:
        return sid in self._until

    def __len__(self) -> int:
        return len(self._until)


class SessionManager:
    """Issues and reads the dashboard's cookies."""

    def __init__(self, secret: str, *, ttl_s: int, max_s: int, secure: bool) -> None:
        key = secret or secrets.token_urlsafe(32)
        # v2: the payload carries the session id, the times and the credential fingerprint;
        # a cookie of the earlier format fails the signature (its salt) and signs in again.
        self._signer = URLSafeSerializer(key, salt="armlab-ui-session-v2")
        self._login = URLSafeTimedSerializer(secret or secrets.token_urlsafe(32),
                                             salt="armlab-ui-login")
        self._fp_key = hashlib.sha256(b"armlab-ui-credential\0" + key.encode()).digest()
        self.ttl_s = ttl_s
        self.max_s = max_s
        self.secure = secure
        self.revoked = Revocations()

    def _set(self, response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(name, value, max_age=max_age, path=PATH, httponly=True,
                            samesite="strict", secure=self.secure)

    def _cookie(self, session: Session, now: float) -> tuple[str, int]:
        """The cookie's value for ``session`` renewed at ``now``, and its max-age."""
        value = self._signer.dumps({"n": session.principal.name, "r": session.principal.role,
                                    "c": session.csrf, "s": session.sid,
                                    "f": session.fingerprint, "i": session.issued,
                                    "a": int(now)})
        left = session.issued + self.max_s - int(now)
        return value, max(1, min(self.ttl_s, left))

    # -- the session -------------------------------------------------------------------
    def start(self, response: Response, principal: Principal, credential: bytes) -> Session:
        """Set a new session cookie for ``principal``, signed in with the token secret
        ``credential`` (a fresh session id and CSRF token each sign-in)."""
        now = _now()
        session = Session(principal, secrets.token_urlsafe(32), secrets.token_urlsafe(18),
                          Authenticator.fingerprint(self._fp_key, credential), int(now))
        value, max_age = self._cookie(session, now)
        self._set(response, SESSION_COOKIE, value, max_age)
        response.delete_cookie(LOGIN_COOKIE, path=PATH)
        return session

    def end(self, request: Request, response: Response, session: Session | None) -> None:
        """Sign out: the session's id is refused from now on (in this process) and the
        browser's cookie is deleted."""
        if session is not None:
            self.revoked.revoke(session.sid, session.issued + self.max_s + SKEW_S)
        request.scope.get("state", {}).pop(_RENEW_KEY, None)
        response.delete_cookie(SESSION_COOKIE, path=PATH)

    def read(self, request: Request, auth: Authenticator) -> Session | None:
        """The request's valid session, or None (absent, forged, expired, signed out, or its
        token removed, changed or rotated). A valid one older than :data:`RENEW_AFTER_S`
        since its last renewal gets a renewed cookie on the response."""
        raw = request.cookies.get(SESSION_COOKIE)
        if not raw:
            return None
        try:
            data = self._signer.loads(raw)
            principal = Principal(name=str(data["n"]), role=str(data["r"]))
            session = Session(principal, str(data["c"]), str(data["s"]), str(data["f"]),
                              int(data["i"]))
            renewed = int(data["a"])
        except (BadSignature, KeyError, TypeError, ValueError):
            return None
        now = _now()
        if not (now - self.max_s <= session.issued <= renewed <= now + SKEW_S) or \
                now - renewed > self.ttl_s:
            return None
        if session.sid in self.revoked:
            return None
        if not auth.holds(principal, self._fp_key, session.fingerprint):
            return None
        if now - renewed >= RENEW_AFTER_S:
            request.scope.setdefault("state", {})[_RENEW_KEY] = self._cookie(session, now)
        return session

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


class SessionRenewal:
    """Pure ASGI middleware: a ``/ui`` response whose request renewed its session (see
    :meth:`SessionManager.read`) carries the renewed cookie."""

    def __init__(self, app: ASGIApp, manager: SessionManager) -> None:
        self.app = app
        self.manager = manager

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(PATH):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})

        async def send_with_cookie(message: Message) -> None:
            renewed = state.pop(_RENEW_KEY, None) if message["type"] == \
                "http.response.start" else None
            if renewed is not None and not _sets_session(message):
                value, max_age = renewed
                cookie = Response()
                self.manager._set(cookie, SESSION_COOKIE, value, max_age)
                message["headers"] = list(message.get("headers", [])) + [
                    (k, v) for k, v in cookie.raw_headers if k == b"set-cookie"]
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def _sets_session(message: Message) -> bool:
    """Whether a response already sets or deletes the session cookie (sign-in, sign-out)."""
    prefix = SESSION_COOKIE.encode() + b"="
    return any(k.lower() == b"set-cookie" and v.startswith(prefix)
               for k, v in message.get("headers", []))
