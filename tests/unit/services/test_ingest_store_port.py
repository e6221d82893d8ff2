"""The ingest runner's storage port on SQLite, and how the runner classifies failures.

The runner reaches the database only through :class:`armlab.services.ports_consumer.IngestStore`
(the database one: :class:`armlab.adapters.db.consumer_batches.SqlIngestStore`). Its exactly-once
design rests on ``store.batch()`` being ONE transaction: the fence and the offsets it advanced
roll back with the rest when anything inside fails. And whether a failure lies in the records'
content (bisect, dead-letter the culprit) or in the environment (retry the whole batch) is
still told apart, with the SQLAlchemy half of the question in the adapter.
"""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy.exc import DataError, IntegrityError, OperationalError, StatementError

from armlab.adapters.db.consumer_batches import SqlIngestStore
from armlab.adapters.db.engine import make_engine, make_session_factory
from armlab.adapters.db.retry import SqlFailures
from armlab.core.event_effects import Effects
from armlab.core.fencing import Fenced, StoredRowsDiffer
from armlab.services.consumer import IngestRunner, IngestStore, is_record_error
from armlab.services.consumer_upkeep import RetryBatch

TP = ("armlab.impressions", 0)


@pytest.fixture
def store(sqlite_url: str) -> SqlIngestStore:
    return SqlIngestStore(make_session_factory(make_engine(sqlite_url)))


def test_a_batch_is_one_transaction(store: SqlIngestStore) -> None:
    with store.batch() as tx:
        tx.advance_offsets("g", {TP: (None, 10)})
    assert store.load_offsets("g", [TP]) == {TP: 10}
    with pytest.raises(RuntimeError), store.batch() as tx:
        tx.advance_offsets("g", {TP: (10, 20)})
        tx.write_effects("g", Effects())
        raise RuntimeError("the handler failed after the offsets moved")
    assert store.load_offsets("g", [TP]) == {TP: 10}  # rolled back with the batch


def test_a_zombie_is_fenced_and_changes_nothing(store: SqlIngestStore) -> None:
    with store.batch() as tx:
        tx.advance_offsets("g", {TP: (None, 10)})
    with pytest.raises(Fenced) as info, store.batch() as tx:
        tx.advance_offsets("g", {TP: (5, 15)})  # it started from an offset long gone
    assert info.value.tps == [TP]
    assert store.load_offsets("g", [TP]) == {TP: 10}
    assert store.stored_offsets("g") == [("g", TP[0], 0, 10)]
    assert store.reset_offsets("g", None, {}) == 1
    assert store.stored_offsets("g") == []


def test_the_runner_takes_the_port(sqlite_url: str) -> None:
    port = SqlIngestStore(make_session_factory(make_engine(sqlite_url)))
    assert isinstance(port, IngestStore)
    assert IngestRunner(port, source=None).store is port  # type: ignore[arg-type]


def _db_error(cls: type[StatementError], orig: BaseException) -> StatementError:
    return cls("INSERT ...", {}, orig)  # type: ignore[call-arg,arg-type]


@pytest.mark.parametrize(("exc", "record"), [
    # the database refused a value: the records' content
    (_db_error(DataError, psycopg.errors.NumericValueOutOfRange("out of range")), True),
    (_db_error(IntegrityError, psycopg.errors.UniqueViolation("duplicate key")), True),
    # binding a value failed before the driver: content when the cause is a value error
    (StatementError("bind failed", "INSERT ...", {}, ValueError("bad float")), True),
    (StatementError("bind failed", "INSERT ...", {}, RuntimeError("a bug")), False),
    # handling or encoding a record
    (ValueError("not a number"), True),
    (UnicodeEncodeError("utf-8", "x", 0, 1, "surrogate"), True),
    (ZeroDivisionError(), True),
    # the environment: retried as a whole, never bisected
    (_db_error(OperationalError, psycopg.OperationalError("connection refused")), False),
    (_db_error(OperationalError,
               psycopg.errors.SerializationFailure("could not serialize")), False),
    (Fenced([TP]), False),
    (StoredRowsDiffer("impressions: 1 of 2 new rows stored"), False),
    (RetryBatch("dead-letter produce failed"), False),
    (RuntimeError("anything else"), False),
])
def test_record_errors_are_told_from_the_environment(exc: BaseException, record: bool) -> None:
    assert is_record_error(exc, SqlFailures()) is record
