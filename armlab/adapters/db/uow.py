"""Unit of work: one session, one transaction, committed explicitly and only here.

Service functions take a unit of work, do their reads and writes through its repositories
(``experiments``, ``audit``, ``evidence``; see :mod:`armlab.adapters.db.repositories`), its
read ports (``dashboard``, ``report``, ``impression_log``, ``catalogs``) or ``session``, and
leave the decision to commit to the caller (a route, a CLI command, the allocator). Leaving
the ``with`` block without ``commit()`` rolls everything back, so a failure half-way through
a use case never leaves half of it in the database.

:func:`armlab.adapters.db.repositories.changed_unflushed` (``experiments.unflushed_change``)
asks the session's change tracking whether a stored object's attribute was changed in memory
(the registry's guard on frozen variants and guardrails).
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from armlab.adapters.db.catalog_store import SqlCatalogs
from armlab.adapters.db.dashboard_queries import SqlDashboardQueries
from armlab.adapters.db.report_queries import SqlImpressionLog, SqlReportQueries
from armlab.adapters.db.repositories import SqlAuditTrail, SqlEvidence, SqlExperiments
from armlab.errors import ConcurrentModification


class UnitOfWork:
    """``with UnitOfWork(session_factory) as uow: ...; uow.commit()``."""

    def __init__(self, session_factory: Callable[[], Session]) -> None:
        self._session_factory = session_factory
        self._session: Session | None = None
        self.committed = False

    @property
    def session(self) -> Session:
        if self._session is None:
            raise RuntimeError("UnitOfWork.session used outside its 'with' block")
        return self._session

    def __enter__(self) -> UnitOfWork:
        self._session = self._session_factory()
        self.committed = False
        self.experiments = SqlExperiments(self._session)
        self.audit = SqlAuditTrail(self._session)
        self.evidence = SqlEvidence(self._session)
        self.dashboard = SqlDashboardQueries(self._session)
        self.report = SqlReportQueries(self._session)
        self.impression_log = SqlImpressionLog(self._session)
        self.catalogs = SqlCatalogs(self._session)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        session = self.session
        try:
            if not self.committed:
                # Objects read here stay readable after the block (a read-only unit of work
                # is never committed); detach them before the rollback would expire them.
                session.expunge_all()
                session.rollback()
        finally:
            session.close()
            self._session = None

    def flush(self) -> None:
        """Flush pending changes; a lost optimistic-lock race becomes ConcurrentModification."""
        try:
            self.session.flush()
        except StaleDataError as exc:
            self.session.rollback()
            raise ConcurrentModification(
                "the experiment was changed by another request; reload it and retry"
            ) from exc

    def commit(self) -> None:
        """Commit the transaction. Optimistic-lock failures raise ConcurrentModification (409)."""
        try:
            self.session.commit()
        except StaleDataError as exc:
            self.session.rollback()
            raise ConcurrentModification(
                "the experiment was changed by another request; reload it and retry"
            ) from exc
        self.committed = True

    def rollback(self) -> None:
        self.session.rollback()
