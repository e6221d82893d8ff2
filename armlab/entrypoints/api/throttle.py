"""Throttling of failed authentication: exponential back-off per client address and token name.

Each *key* (``addr:<client address>``, ``name:<token name>``) counts its failed attempts. The
first :attr:`Throttle.free` failures cost nothing; each further one blocks the key for
``base_s * 2**k`` seconds (1, 2, 4, ... s), never more than :attr:`Throttle.max_s` (60 s by
default). While a key is blocked, every attempt through it is answered 429 with
``Retry-After`` *without checking the credential*: a guess made while blocked learns nothing,
so a guesser gets ``free`` tries and then about one per back-off period. A key's count is
forgotten :attr:`Throttle.forget_s` after its last failure, and a successful sign-in resets
the count of the name it signed in as.

The fast path of a valid credential never takes the lock: :meth:`Throttle.retry_after` is a
lock-free dictionary read (an empty table is one truth test), and :meth:`Throttle.succeeded`
takes the lock only when the key has failures on record. Only failures write, under one lock.

Forgotten keys are dropped (at most every ``forget_s``, by a failure), so once an attack stops
the table empties again. It holds at most :attr:`Throttle.max_keys` keys; past that, the keys
idle longest are dropped.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from armlab.errors import TooManyRequests


@dataclass
class _Record:
    failures: int
    last: float  # the last failure (the throttle's clock)
    until: float  # blocked until (the throttle's clock)


def address_key(host: str | None) -> str | None:
    return None if not host else f"addr:{host}"


def name_key(name: str | None) -> str | None:
    return None if not name else f"name:{name}"


class Throttle:
    def __init__(self, *, free: int = 5, base_s: float = 1.0, max_s: float = 60.0,
                 forget_s: float = 600.0, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.free = free
        self.base_s = base_s
        self.max_s = max_s
        self.forget_s = forget_s
        self.max_keys = max_keys
        self._clock = clock
        self._records: dict[str, _Record] = {}
        self._lock = threading.Lock()
        self._pruned = clock()

    @property
    def enabled(self) -> bool:
        return self.free > 0

    def retry_after(self, keys: Iterable[str | None]) -> float:
        """Seconds until every key in ``keys`` may try again (0: none is blocked). Lock-free."""
        records = self._records
        if not records:
            return 0.0
        wait = 0.0
        now = -1.0
        for key in keys:
            record = records.get(key) if key else None
            if record is None:
                continue
            if now < 0:
                now = self._clock()
            wait = max(wait, record.until - now)
        return wait

    def host_retry_after(self, host: str | None) -> float:
        """:meth:`retry_after` of a client address; one truth test while nothing failed."""
        if not self._records or not host:
            return 0.0
        return self.retry_after((address_key(host),))

    def check(self, keys: Iterable[str | None]) -> None:
        """Raise :class:`TooManyRequests` when a key in ``keys`` is blocked."""
        wait = self.retry_after(keys)
        if wait > 0:
            raise TooManyRequests(
                "too many failed authentication attempts from this client or for this "
                f"token name; retry in {math.ceil(wait)} s", retry_after_s=math.ceil(wait))

    def failed(self, keys: Iterable[str | None]) -> None:
        """Count one failed attempt against each key (and block it once past ``free``)."""
        if not self.enabled:
            return
        now = self._clock()
        with self._lock:
            for key in keys:
                if not key:
                    continue
                record = self._records.get(key)
                if record is None or now - record.last > self.forget_s:
                    record = self._records[key] = _Record(0, now, 0.0)
                record.failures += 1
                record.last = now
                over = record.failures - self.free
                if over > 0:
                    record.until = now + min(self.max_s, self.base_s * 2.0 ** min(over - 1, 30))
            if len(self._records) > self.max_keys or now - self._pruned > self.forget_s:
                self._shrink(now)

    def succeeded(self, key: str | None) -> None:
        """A success for ``key`` (a token name): its count starts again from zero."""
        if key and key in self._records:  # lock-free in the common case: nothing on record
            with self._lock:
                self._records.pop(key, None)

    def _shrink(self, now: float) -> None:
        self._pruned = now
        for key in [k for k, r in self._records.items() if now - r.last > self.forget_s]:
            del self._records[key]
        excess = len(self._records) - self.max_keys
        if excess > 0:
            for key, _ in sorted(self._records.items(), key=lambda kv: kv[1].last)[:excess]:
                del self._records[key]

    def __len__(self) -> int:
        return len(self._records)
