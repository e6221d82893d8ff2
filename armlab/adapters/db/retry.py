"""Which database errors are worth retrying, and which ones the records written caused.

A failure is *transient* when trying the same work again later can succeed: the connection
broke or could not be made (SQLSTATE class 08, or no SQLSTATE at all because the client never
reached the server), the server is shutting down or starting up (57P01-57P03), the transaction
lost a serialisation race or a deadlock (class 40), the server is out of connections or memory
(class 53), or SQLite's file is locked. Everything else (a constraint, a type or a syntax error)
fails the same way every time and is raised at once. The classification reads PostgreSQL's
SQLSTATE codes (psycopg's ``sqlstate``), not exception class names.

The database stores hand these to the service layer as their ``is_transient`` /
``is_data_error`` (:class:`SqlFailures`); :func:`armlab.services.retrying.retrying` is the
retry policy the services wrap around them.

:func:`is_data_error` is the database half of the ingest runner's other question (is this
failure caused by the records written?): the database refused the values (``DataError``,
``IntegrityError``), or binding a value failed before the driver was reached.
"""

from __future__ import annotations

import sqlite3

import psycopg
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError

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


class SqlFailures:
    """The storage ports' failure classification on the database (a mixin of the SQL stores:
    :class:`armlab.services.ports.StorageFailures`)."""

    def is_transient(self, exc: BaseException) -> bool:
        return is_transient(exc)

    def is_data_error(self, exc: BaseException,
                      value_errors: tuple[type[BaseException], ...] = ()) -> bool:
        return is_data_error(exc, value_errors)
