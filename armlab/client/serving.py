"""A typed serving client for ``/assign`` and ``/recommend`` that never fails a page.

Usage::

    from armlab.client import ServingClient

    with ServingClient("http://armlab:8000", token="p-secret") as armlab:
        a = armlab.assign("homepage-recs", unit_id="user-42")
        render(a.arm, a.variant)
        if a.should_log:              # False for a local fallback
            producer.send_impression(..., impression_id=a.impression_id,
                                     propensity=a.propensity)

Every call has a total deadline (``timeout_s``, default 0.5 s; connecting may take at most
``connect_timeout_s``, default 0.25 s). Only failures that are safe to repeat are retried,
with jittered exponential back-off and within the deadline: a refused connection or a connect
timeout (the request never reached the server) and 502/503/504 (honouring ``Retry-After`` when
it fits in what is left of the deadline). A 4xx is never retried. When the server cannot
answer in time the call returns a **local fallback**: the experiment's control arm (learned
once per experiment from ``GET /v1/experiments/{key}`` after the first successful call, or
given with ``fallback_arms=`` / ``fallback_arm=``), ``fallback=True``, propensity 1 and a
local impression id ``fallback-<hex>`` the server never issued.

**Do not log an impression for a fallback** (``should_log`` is False): the server did not
assign it, so it is not a draw from the policy and its impression id is unknown to armlab;
logging it would add control traffic the allocation never chose to the experiment's data.

A small circuit breaker spares an app under an outage the deadline on every call: after
``breaker_failures`` consecutive failed calls it answers the fallback at once for
``breaker_cooldown_s``, then lets one call through to try the server again (a success closes
it, a failure opens it for another cool-down).
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar
from urllib.parse import quote

import httpx

log = logging.getLogger(__name__)

#: Prefix of every locally generated impression id (never issued by the server).
FALLBACK_PREFIX = "fallback-"
_RETRY_STATUSES = frozenset({502, 503, 504})
_T = TypeVar("_T")


class ScoredItem(NamedTuple):
    item_id: str
    score: float


@dataclass(frozen=True)
class Assignment:
    """The answer of ``POST /v1/experiments/{key}/assign`` (or its local fallback)."""

    experiment_key: str
    impression_id: str
    arm: str
    variant: dict[str, Any]
    propensity: float
    served_at: datetime
    fallback: bool = False
    #: Why the fallback was served ("" for a server answer).
    reason: str = ""
    snapshot_id: int | None = None

    @property
    def should_log(self) -> bool:
        """Send impression and feedback events for this answer? False for a fallback."""
        return not self.fallback


@dataclass(frozen=True)
class Recommendation:
    """The answer of ``POST /v1/experiments/{key}/recommend`` (or its local fallback)."""

    experiment_key: str
    impression_id: str
    arm: str
    propensity: float
    served_at: datetime
    items: list[ScoredItem] = field(default_factory=list)
    fallback: bool = False
    reason: str = ""
    #: An interleaved list's log (``design: interleaving``): send it unchanged as the
    #: impression's ``interleaving``. None for other experiments and for a fallback.
    interleaving: dict[str, Any] | None = None

    @property
    def should_log(self) -> bool:
        """Send impression and feedback events for this answer? False for a fallback."""
        return not self.fallback


class _Failure(Exception):
    """One call could not get an answer; ``counts`` whether the breaker should count it."""

    def __init__(self, reason: str, *, counts: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.counts = counts


class CircuitBreaker:
    """Closed -> open after ``failures`` consecutive failures; open for ``cooldown_s``, then
    one trial call (half-open): success closes it, failure opens it again."""

    def __init__(self, failures: int = 3, cooldown_s: float = 5.0,
                 clock: Any = time.monotonic) -> None:
        self.failures = failures
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._consecutive = 0
        self._open_until: float | None = None
        self._trial = False

    @property
    def is_open(self) -> bool:
        return self._open_until is not None and self._clock() < self._open_until

    def allow(self) -> bool:
        """May a call go to the server now?"""
        with self._lock:
            if self._open_until is None:
                return True
            if self._clock() < self._open_until or self._trial:
                return False
            self._trial = True  # half-open: this caller tries, the others keep falling back
            return True

    def success(self) -> None:
        with self._lock:
            self._consecutive = 0
            self._open_until = None
            self._trial = False

    def failure(self) -> None:
        with self._lock:
            self._consecutive += 1
            if self._trial or self._consecutive >= self.failures:
                self._open_until = self._clock() + self.cooldown_s
            self._trial = False


def _parse_time(value: Any) -> datetime:
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class ServingClient:
    """``ServingClient(base_url, token)``: ``assign`` and ``recommend`` with a deadline,
    bounded retries, a local control-arm fallback and a circuit breaker. Thread-safe."""

    def __init__(
        self,
        base_url: str,
        token: str = "",
        *,
        timeout_s: float = 0.5,
        connect_timeout_s: float = 0.25,
        max_attempts: int = 3,
        backoff_s: float = 0.02,
        breaker_failures: int = 3,
        breaker_cooldown_s: float = 5.0,
        fallback_arms: dict[str, str] | None = None,
        default_fallback_arm: str = "control",
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_attempts = max(1, max_attempts)
        self.backoff_s = backoff_s
        self.default_fallback_arm = default_fallback_arm
        self.breaker = CircuitBreaker(breaker_failures, breaker_cooldown_s)
        self._configured = dict(fallback_arms or {})
        #: experiment key -> (control arm key, its variant), learned from the server
        self._learned: dict[str, tuple[str, dict[str, Any]]] = {}
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=self.base_url, headers=headers, transport=transport,
                                  timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s))

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- public calls ---------------------------------------------------------------------

    def assign(self, experiment_key: str, unit_id: str, *,
               context: dict[str, Any] | None = None, fallback_arm: str | None = None,
               timeout_s: float | None = None) -> Assignment:
        """The arm for ``unit_id``; the control arm (``fallback=True``) if the server cannot
        answer within the deadline."""
        body: dict[str, Any] = {"unit_id": unit_id}
        if context is not None:
            body["context"] = context
        try:
            return self._call(experiment_key, "assign", body, timeout_s, _assignment)
        except _Failure as exc:
            arm, variant = self._fallback_arm(experiment_key, fallback_arm)
            return Assignment(experiment_key=experiment_key, impression_id=_local_id(), arm=arm,
                              variant=variant, propensity=1.0, served_at=datetime.now(UTC),
                              fallback=True, reason=exc.reason)

    def recommend(
        self, experiment_key: str, unit_id: str, *, user_text: str | None = None,
        history: list[str] | None = None, candidates: list[dict[str, Any]] | None = None,
        catalog: str | None = None, k: int = 10, exclude_history: bool = True,
        exclude: list[str] | None = None, context: dict[str, Any] | None = None,
        fallback_arm: str | None = None, timeout_s: float | None = None,
    ) -> Recommendation:
        """The arm and its top-k items (an interleaving experiment's merged list with its
        ``interleaving`` log). Fallback: the control arm with the first ``k``
        ``candidates`` in the order given (minus ``exclude`` and, with ``exclude_history``,
        the history), score 0, no interleaving; with a server-side ``catalog`` the fallback
        has no items."""
        user: dict[str, Any] = {"history": list(history or [])}
        if user_text is not None:
            user["text"] = user_text
        body: dict[str, Any] = {"unit_id": unit_id, "user": user, "k": k,
                                "exclude_history": exclude_history,
                                "exclude": list(exclude or [])}
        if candidates is not None:
            body["candidates"] = candidates
        if catalog is not None:
            body["catalog"] = catalog
        if context is not None:
            body["context"] = context
        try:
            return self._call(experiment_key, "recommend", body, timeout_s, _recommendation)
        except _Failure as exc:
            arm, _ = self._fallback_arm(experiment_key, fallback_arm)
            skip = set(exclude or []) | (set(history or []) if exclude_history else set())
            items = [ScoredItem(str(c["id"]), 0.0) for c in candidates or []
                     if str(c["id"]) not in skip][:k]
            return Recommendation(experiment_key=experiment_key, impression_id=_local_id(),
                                  arm=arm, propensity=1.0, served_at=datetime.now(UTC),
                                  items=items, fallback=True, reason=exc.reason)

    def control_arm(self, experiment_key: str) -> str | None:
        """The control arm learned from the server (None before the first success)."""
        learned = self._learned.get(experiment_key)
        return learned[0] if learned else None

    # --- plumbing -------------------------------------------------------------------------

    def _fallback_arm(self, key: str, override: str | None) -> tuple[str, dict[str, Any]]:
        learned = self._learned.get(key)
        arm = override or self._configured.get(key) or (learned[0] if learned else None) \
            or self.default_fallback_arm
        variant = dict(learned[1]) if learned and learned[0] == arm else {}
        return arm, variant

    def _call(self, key: str, op: str, body: dict[str, Any], timeout_s: float | None,
              parse: Callable[[dict[str, Any]], _T]) -> _T:
        if not self.breaker.allow():
            raise _Failure("circuit open")
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.timeout_s)
        try:
            data = self._post(f"/v1/experiments/{quote(key, safe='')}/{op}", body, deadline)
            try:
                result = parse(data)
            except (KeyError, TypeError, ValueError) as exc:
                raise _Failure(f"unexpected answer ({type(exc).__name__}: {exc})") from exc
        except Exception as exc:
            if not isinstance(exc, _Failure):  # anything else still must not fail the page
                exc = _Failure(f"{type(exc).__name__}: {exc}")
            if exc.counts:
                self.breaker.failure()
            else:
                self.breaker.success()  # the server answered (a 4xx): it is up
            log.warning("armlab %s %s: serving the fallback (%s)", op, key, exc.reason)
            raise exc from None
        self.breaker.success()
        if key not in self._learned:
            self._learn(key, deadline)
        return result

    def _post(self, path: str, body: dict[str, Any], deadline: float) -> dict[str, Any]:
        reason = "no attempt"
        for attempt in range(self.max_attempts):
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Failure(f"deadline passed ({reason})")
            timeout = httpx.Timeout(left, connect=min(self.connect_timeout_s, left))
            wait: float | None = None
            try:
                resp = self._http.post(path, json=body, timeout=timeout)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                reason = f"cannot connect: {type(exc).__name__}"  # never reached the server
            except httpx.HTTPError as exc:
                # a read timeout or a broken connection: the server may have assigned, and
                # the deadline is spent or close to it; not retried
                raise _Failure(f"{type(exc).__name__}") from exc
            else:
                if resp.status_code == 200:
                    try:
                        data = resp.json()
                    except ValueError as exc:
                        raise _Failure("invalid JSON in the answer") from exc
                    if not isinstance(data, dict):
                        raise _Failure("unexpected answer")
                    return data
                if resp.status_code not in _RETRY_STATUSES:
                    raise _Failure(f"HTTP {resp.status_code}: {resp.text[:200]}",
                                   counts=resp.status_code >= 500)
                reason = f"HTTP {resp.status_code}"
                wait = _retry_after(resp)
            if attempt + 1 == self.max_attempts:
                break
            if wait is None:
                wait = self.backoff_s * (2 ** attempt) * random.uniform(0.5, 1.5)
            if time.monotonic() + wait >= deadline:
                raise _Failure(f"{reason}; retry would pass the deadline")
            time.sleep(wait)
        raise _Failure(reason)

    def _learn(self, key: str, deadline: float) -> None:
        """Cache the experiment's control arm and its variant: one read, within what is left
        of the call's deadline (best effort: with too little left, the next success tries)."""
        left = deadline - time.monotonic()
        if left < 0.02:
            return
        try:
            resp = self._http.get(f"/v1/experiments/{quote(key, safe='')}", timeout=httpx.Timeout(
                left, connect=min(self.connect_timeout_s, left)))
            if resp.status_code != 200:
                return
            data = resp.json()
            control = str(data["control_arm_key"])
            variant = next((dict(a.get("variant") or {}) for a in data.get("arms", [])
                            if a.get("key") == control), {})
        except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
            return
        self._learned[key] = (control, variant)


def _assignment(data: dict[str, Any]) -> Assignment:
    return Assignment(
        experiment_key=str(data["experiment_key"]), impression_id=str(data["impression_id"]),
        arm=str(data["arm"]), variant=dict(data["variant"]),
        propensity=float(data["propensity"]), served_at=_parse_time(data["served_at"]),
        snapshot_id=data.get("snapshot_id"))


def _recommendation(data: dict[str, Any]) -> Recommendation:
    return Recommendation(
        experiment_key=str(data["experiment_key"]), impression_id=str(data["impression_id"]),
        arm=str(data["arm"]), propensity=float(data["propensity"]),
        served_at=_parse_time(data["served_at"]),
        items=[ScoredItem(str(i["item_id"]), float(i["score"])) for i in data["items"]],
        interleaving=_interleaving(data.get("interleaving")))


def _interleaving(raw: Any) -> dict[str, Any] | None:
    """The answer's interleaving log, checked for shape (a bad one is an unexpected answer)."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("rankers"), list) \
            or not isinstance(raw.get("teams"), list):
        raise ValueError("interleaving: an object with rankers and teams")
    return dict(raw)


def _local_id() -> str:
    return f"{FALLBACK_PREFIX}{uuid.uuid4().hex}"
