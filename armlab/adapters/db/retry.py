"""Which database errors are worth retrying, and the one retry policy armlab uses for them.

A failure is *transient* when trying the same work again later can succeed: the connection
broke or could not be made (SQLSTATE class 08, or no SQLSTATE at all because the client never
reached the server), the server is shutting down or starting up (57P01-57P03), the transaction
lost a serialisation race or a deadlock (class 40), the server is out of connections or memory
(class 53), or SQLite's file is locked. Everything else (a constraint, a type or a syntax error)
fails the same way every time and is raised at once. The classification reads PostgreSQL's
SQLSTATE codes (psycopg's ``sqlstate``), not exception class names.

:func:`db_retrying` wraps that in a tenacity policy: exponential back-off from 0.2 s up to
``max_wait_s``, forever or until a stop event is set, with a hook per retry (metrics, logs).

:func:`is_data_error` is the database half of the ingest runner's other question (is this
failure caused by the records written?): the database refused the values (``DataError``,
``IntegrityError``), or binding a value failed before the driver was reached.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable

import psycopg
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_never,
    wait_exponential,
)
from tenacity.stop import stop_base

# SQLSTATE classes and codes (PostgreSQL manual, appendix A) after which a retry can succeed.
TRANSIENT_CLASSES = frozenset({"08", "40", "53"})
TRANSIENT_CODES = frozenset({"57P01", "57P02", "57P03"})


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` (a SQLAlchemy or driver error) is worth retrying (see module doc)."""
    orig: BaseException | None = exc
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        orig = exc.orig
    if isinstance(orig, psycopg.Error):
        code = orig.sqlstate
        if code is None:  # raised by the client: no connection, or the connection is gone
            return isinstance(orig, psycopg.OperationalError | psycopg.InterfaceError)
        return code[:2] in TRANSIENT_CLASSES or code in TRANSIENT_CODES
    if isinstance(orig, sqlite3.OperationalError):
        return "locked" in str(orig) or "busy" in str(orig)
    return False


def is_data_error(exc: BaseException,
                  value_errors: tuple[type[BaseException], ...] = ()) -> bool:
    """True when the database failed on the values it was given: a ``DataError`` or an
    ``IntegrityError``, or a statement whose bind-parameter processing raised one of
    ``value_errors`` before the driver was reached. False for anything else (including
    every error that is not the database's)."""
    if isinstance(exc, DataError | IntegrityError):
        return True
    if isinstance(exc, StatementError):  # bind-parameter processing failed before the driver
        return exc.orig is not None and isinstance(exc.orig, value_errors)
    return False


class _stop_when_set(stop_base):  # noqa: N801 - tenacity's naming
    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.event.is_set()


def db_retrying(
    *,
    stop_event: threading.Event | None = None,
    attempts: int | None = None,
    max_wait_s: float = 5.0,
    retry_also: Callable[[BaseException], bool] | None = None,
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> Retrying:
    """A tenacity ``Retrying`` for transient database errors (and whatever ``retry_also`` says).

    Stops after ``attempts`` tries, or when ``stop_event`` is set, or never; the last error is
    re-raised. ``on_retry(error, seconds_until_next_try)`` runs before each wait.
    """

    def retryable(exc: BaseException) -> bool:
        return is_transient(exc) or (retry_also is not None and retry_also(exc))

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
