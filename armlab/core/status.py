"""The lifecycle status of an experiment: ``draft -> running -> stopped -> shipped`` (a running
experiment may also ship directly).

A :class:`~enum.StrEnum`: each member *is* its string (``ExperimentStatus.RUNNING ==
"running"``, same hash, same JSON), so statuses read back from storage as plain strings
compare equal to the members and the stored values and API answers are unchanged.
"""

from __future__ import annotations

from enum import StrEnum


class ExperimentStatus(StrEnum):
    """The lifecycle status of an experiment."""

    DRAFT = "draft"
    RUNNING = "running"
    STOPPED = "stopped"
    SHIPPED = "shipped"


#: Every status's value, in lifecycle order (what a status filter accepts).
STATUS_VALUES = tuple(s.value for s in ExperimentStatus)

#: The statuses in which an experiment no longer allocates: it serves one fixed arm.
ENDED = (ExperimentStatus.STOPPED, ExperimentStatus.SHIPPED)
