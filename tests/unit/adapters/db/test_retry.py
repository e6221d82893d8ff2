"""Which database errors are retried (by SQLSTATE), and the retry policy itself."""

from __future__ import annotations

import sqlite3
import threading

import psycopg
import pytest
from psycopg import errors as pg
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from armlab.adapters.db.retry import is_transient
from armlab.services.retrying import retrying as make_retrying


def wrapped(orig: BaseException, cls: type[DBAPIError] = OperationalError) -> DBAPIError:
    return cls("SELECT 1", {}, orig)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("orig", "transient"),
    [
        (pg.AdminShutdown("terminating connection"), True),       # 57P01: server restarting
        (pg.CannotConnectNow("starting up"), True),               # 57P03
        (pg.lookup("08006")("connection failure"), True),         # class 08
        (pg.SerializationFailure("retry"), True),                 # 40001
        (pg.DeadlockDetected("deadlock"), True),                  # 40P01
        (pg.TooManyConnections("full"), True),                    # 53300
        (psycopg.OperationalError("connection refused"), True),   # client side, no SQLSTATE
        (psycopg.InterfaceError("connection already closed"), True),
        (pg.UniqueViolation("duplicate key"), False),             # 23505: same every time
        (pg.NotNullViolation("null"), False),
        (pg.UndefinedTable("no table"), False),
        (pg.QueryCanceled("statement timeout"), False),
        (sqlite3.OperationalError("database is locked"), True),
        (sqlite3.OperationalError("no such table: x"), False),
        (ValueError("not a database error"), False),
    ],
)
def test_is_transient_by_sqlstate(orig: BaseException, transient: bool) -> None:
    assert is_transient(wrapped(orig)) is transient
    assert is_transient(orig) is transient


def test_an_invalidated_connection_is_transient() -> None:
    err = wrapped(pg.UniqueViolation("x"), IntegrityError)
    assert not is_transient(err)
    err.connection_invalidated = True
    assert is_transient(err)


def test_retries_transient_errors_then_succeeds() -> None:
    calls: list[int] = []
    waits: list[float] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise wrapped(pg.AdminShutdown("restart"))
        return "ok"

    retrying = make_retrying(is_transient, max_wait_s=0.01, on_retry=lambda e, w: waits.append(w))
    retrying.sleep = lambda _s: None  # type: ignore[method-assign]
    assert retrying(flaky) == "ok"
    assert len(calls) == 3 and len(waits) == 2


def test_a_permanent_error_is_raised_at_once() -> None:
    calls: list[int] = []

    def broken() -> None:
        calls.append(1)
        raise wrapped(pg.UniqueViolation("dup"), IntegrityError)

    with pytest.raises(IntegrityError):
        make_retrying(is_transient, max_wait_s=0.01)(broken)
    assert calls == [1]


def test_attempts_and_the_stop_event_end_the_retries() -> None:
    def down() -> None:
        raise wrapped(psycopg.OperationalError("refused"))

    r = make_retrying(is_transient, attempts=2, max_wait_s=0.01)
    r.sleep = lambda _s: None  # type: ignore[method-assign]
    with pytest.raises(OperationalError):
        r(down)
    assert r.statistics["attempt_number"] == 2

    stop = threading.Event()
    calls: list[int] = []

    def down_then_stop() -> None:
        calls.append(1)
        if len(calls) == 2:
            stop.set()
        down()

    r = make_retrying(is_transient, stop_event=stop, max_wait_s=0.01)
    r.sleep = lambda _s: None  # type: ignore[method-assign]
    with pytest.raises(OperationalError):
        r(down_then_stop)
    assert len(calls) == 2


def test_retry_also_extends_what_is_retried() -> None:
    class Custom(Exception):
        pass

    calls: list[int] = []

    def once() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise Custom
        return 7

    r = make_retrying(is_transient, retry_also=lambda e: isinstance(e, Custom), max_wait_s=0.01)
    r.sleep = lambda _s: None  # type: ignore[method-assign]
    assert r(once) == 7
