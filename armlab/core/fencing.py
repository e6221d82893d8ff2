"""How a batch's transaction tells the ingest runner that it lost a race.

Both are control flow between the storage side of ingestion
(:mod:`armlab.adapters.db.consumer_store`) and the runner (:mod:`armlab.services.consumer`); they
never escape the runner. Declared here, below both, so the runner needs nothing of the
database to recognise them.
"""

from __future__ import annotations

TP = tuple[str, int]


class Fenced(Exception):  # noqa: N818 - control flow, never escapes the runner
    """Another consumer owns (and has advanced) a partition this batch covers."""

    def __init__(self, tps: list[TP]) -> None:
        super().__init__(f"fenced on {tps}")
        self.tps = tps


class StoredRowsDiffer(Exception):  # noqa: N818 - control flow, never escapes the runner
    """The database stored fewer rows than the batch decided to insert: another transaction
    stored one of them first. The batch is rolled back and handled again from what is
    stored (with :func:`armlab.adapters.db.consumer_store.lock_ids` this does not happen; it is
    the check that it does not)."""
