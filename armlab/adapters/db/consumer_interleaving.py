"""The consumer's writes for interleaving experiments: one batch's unit impressions, unit
credits and pair tallies (:class:`~armlab.core.event_records.Effects`, computed by
:mod:`armlab.core.interleaving.credits`) added to ``interleaving_units``,
``interleaving_credits`` and ``interleaving_pairs`` (:mod:`armlab.adapters.db.models_interleaving`).

Each is one upsert that ADDS (``ON CONFLICT ... DO UPDATE SET x = x + excluded.x``, PostgreSQL
and SQLite), the rows pre-summed per key and sent in sorted key order, inside the batch's
transaction: exactly once with the offsets committed beside them, and consumers of one group
never wait on each other in a cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from armlab.adapters.db.consumer_json import JsonParam, insert_rows
from armlab.core.event_records import Effects

_UNIT_ROW = [("experiment_id", "int"), ("unit_id", "text"), ("impressions", "int")]
_CREDIT_ROW = [("experiment_id", "int"), ("unit_id", "text"), ("ranker_a", "text"),
               ("ranker_b", "text"), ("credit", "float")]
_TALLIES = ("compared", "a_wins", "b_wins", "a_clicks", "b_clicks")
_PAIR_ROW = [("experiment_id", "int"), ("ranker_a", "text"), ("ranker_b", "text"),
             ("partition", "int"), *((name, "int") for name in _TALLIES)]


def write_interleaving(session: Session, fx: Effects) -> None:
    """Add the batch's interleaving effects to their three tables (nothing when empty)."""
    j = JsonParam(session)
    if fx.interleaving_units:
        _add(session, j, "interleaving_units", _UNIT_ROW, 2, [
            {"experiment_id": exp_id, "unit_id": unit, "impressions": int(n)}
            for (exp_id, unit), n in sorted(fx.interleaving_units.items()) if n])
    if fx.interleaving_credits:
        _add(session, j, "interleaving_credits", _CREDIT_ROW, 4, [
            {"experiment_id": exp_id, "unit_id": unit, "ranker_a": a, "ranker_b": b,
             "credit": float(c)}
            for (exp_id, unit, a, b), c in sorted(fx.interleaving_credits.items())])
    if fx.interleaving_pairs:
        _add(session, j, "interleaving_pairs", _PAIR_ROW, 4, [
            {"experiment_id": exp_id, "ranker_a": a, "ranker_b": b, "partition": part,
             **{name: int(v) for name, v in zip(_TALLIES, tallies, strict=True)}}
            for (exp_id, a, b, part), tallies in sorted(fx.interleaving_pairs.items())])


def _add(session: Session, j: JsonParam, table: str, spec: Sequence[tuple[str, str]],
         n_keys: int, rows: list[dict[str, Any]]) -> None:
    """One upsert of ``rows`` into ``table``: the first ``n_keys`` columns of ``spec`` are the
    key, every other column is added to the stored row."""
    if not rows:
        return
    keys = [name for name, _ in spec[:n_keys]]
    added = ", ".join(f"{name} = {table}.{name} + excluded.{name}" for name, _ in spec[n_keys:])
    insert_rows(session, j, table, spec, rows,
                f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {added}")
