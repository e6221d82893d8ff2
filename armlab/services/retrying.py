"""The one retry policy armlab's long-running use cases apply to storage failures.

Which failures are worth retrying is the storage adapter's knowledge (the ports'
``is_transient``: a broken connection, a server restart, a lost serialisation race, a locked
SQLite file); this module only wraps that in a tenacity policy: exponential back-off from
0.2 s up to ``max_wait_s``, forever or until a stop event is set or ``attempts`` ran out,
with a hook per retry (metrics, logs).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_never,
    wait_exponential,
)
from tenacity.stop import stop_base


class _stop_when_set(stop_base):  # noqa: N801 - tenacity's naming
    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.event.is_set()


def retrying(
    transient: Callable[[BaseException], bool],
    *,
    stop_event: threading.Event | None = None,
    attempts: int | None = None,
    max_wait_s: float = 5.0,
    retry_also: Callable[[BaseException], bool] | None = None,
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> Retrying:
    """A tenacity ``Retrying`` for the failures ``transient`` accepts (and whatever
    ``retry_also`` says).

    Stops after ``attempts`` tries, or when ``stop_event`` is set, or never; the last error is
    re-raised. ``on_retry(error, seconds_until_next_try)`` runs before each wait.
    """

    def retryable(exc: BaseException) -> bool:
        return transient(exc) or (retry_also is not None and retry_also(exc))

    stop: stop_base = stop_never
    if attempts is not None:
        stop = stop_after_attempt(attempts)
    if stop_event is not None:
        stop = stop | _stop_when_set(stop_event)

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            err = state.outcome.exception()
            if err is not None:
                on_retry(err, state.upcoming_sleep)

    return Retrying(
        retry=retry_if_exception(retryable),
        wait=wait_exponential(multiplier=0.2, min=0.2, max=max_wait_s),
        stop=stop,
        before_sleep=before_sleep,
        reraise=True,
    )
