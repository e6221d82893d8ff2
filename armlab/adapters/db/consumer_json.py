"""The consumer store's statement helper: one JSON parameter read back as a table.

A batch reads and writes with one statement per table: the ids or rows travel as ONE JSON
parameter that the statement reads back as a table (:class:`JsonParam`), so there is one
round trip per statement, no per-row statements and no thousands of bind parameters to
compile. Each statement is written once; the only dialect-specific pieces are how a JSON
parameter becomes rows (``json_to_recordset`` / ``json_array_elements_text`` on PostgreSQL,
``json_each`` on SQLite), how timestamps are spelled inside it, and ``FOR UPDATE``
(PostgreSQL only; SQLite has one writer anyway).

Used by :mod:`armlab.adapters.db.consumer_effects`, :mod:`armlab.adapters.db.consumer_counters`
and :mod:`armlab.adapters.db.consumer_offsets_sql`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import DateTime, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from armlab.core.fencing import StoredRowsDiffer

_PG_TYPES = {"text": "text", "int": "int8", "float": "float8", "ts": "timestamptz",
             "json": "json"}
_TS = DateTime(timezone=True)


def dialect_insert(session: Session, table: Any) -> Any:
    """``INSERT`` for ``table`` in this session's dialect (it has ``on_conflict_do_*``)."""
    name = session.get_bind().dialect.name
    mod = postgresql if name == "postgresql" else sqlite
    return mod.insert(table)


class JsonParam:
    """How one JSON parameter becomes rows in this session's dialect."""

    def __init__(self, session: Session) -> None:
        self.dialect = session.get_bind().dialect
        self.pg = self.dialect.name == "postgresql"
        self._ts = None if self.pg else _TS.dialect_impl(self.dialect).bind_processor(
            self.dialect)

    def rows(self, param: str, columns: Sequence[tuple[str, str]]) -> str:
        """``(SELECT <columns> FROM <the JSON array of objects in :param>) AS r``."""
        if self.pg:
            spec = ", ".join(f"{name} {_PG_TYPES[kind]}" for name, kind in columns)
            return f"json_to_recordset(CAST(:{param} AS json)) AS r({spec})"
        cols = ", ".join(f"json_extract(value, '$.{name}') AS {name}" for name, _ in columns)
        return f"(SELECT {cols} FROM json_each(:{param})) AS r"

    def in_ids(self, column: str, param: str) -> str:
        """``column`` is one of the ids in :param. PostgreSQL gets a text array, so the planner
        knows how many ids there are and probes each partition's index (with a JSON set it
        guessed half the table and scanned every partition)."""
        if self.pg:
            return f"{column} = ANY (CAST(:{param} AS text[]))"
        return f"{column} IN (SELECT value FROM json_each(:{param}))"

    @property
    def for_update(self) -> str:
        return " FOR UPDATE" if self.pg else ""

    def encode(self, ids: list[str]) -> Any:
        """The parameter of :meth:`in_ids`: the list itself (PostgreSQL: a text array), or its
        JSON text (SQLite)."""
        return ids if self.pg else orjson.dumps(ids).decode()

    def encode_rows(self, rows: list[dict[str, Any]]) -> str:
        """The JSON text of ``rows``; timestamps as this dialect stores them (ISO 8601 for
        PostgreSQL's timestamptz, SQLAlchemy's own text form on SQLite)."""
        if self._ts is None:
            return orjson.dumps(rows).decode()
        fmt = self._ts
        return orjson.dumps(
            [{k: (fmt(v) if isinstance(v, datetime) else v) for k, v in r.items()}
             for r in rows]
        ).decode()


def column_names(columns: Sequence[tuple[str, str]]) -> str:
    return ", ".join(name for name, _ in columns)


def insert_rows(session: Session, j: JsonParam, table: str,
                columns: Sequence[tuple[str, str]], rows: list[dict[str, Any]],
                on_conflict: str, *, all_stored: str | None = None) -> None:
    """INSERT every row of ``rows`` in one statement (``WHERE true`` keeps SQLite's parser
    from reading ``ON CONFLICT`` as a join constraint). With ``all_stored`` (a key column),
    raise :class:`StoredRowsDiffer` unless every row was stored (the stored row decides)."""
    cols = column_names(columns)
    returning = f" RETURNING {all_stored}" if all_stored else ""
    result = session.execute(
        text(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {j.rows('rows', columns)} "
             f"WHERE true {on_conflict}{returning}"),
        {"rows": j.encode_rows(rows)},
    )
    if all_stored:
        stored = len(result.all())
        if stored != len(rows):
            raise StoredRowsDiffer(f"{table}: {stored} of {len(rows)} new rows stored")
