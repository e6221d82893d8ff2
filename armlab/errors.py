"""Error hierarchy. Every error armlab raises on purpose derives from ArmlabError.

Messages name the offending value and what would be valid; the API maps each class to an
HTTP status in one place (armlab.entrypoints.api.errors) and the CLI prints
``error: <message>``.
"""

from __future__ import annotations

import re


class ArmlabError(Exception):
    """Root of armlab's errors. ``status`` is the HTTP status the API answers with."""

    status: int = 400
    title: str = "Bad request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigurationError(ArmlabError):
    title = "Invalid configuration"
    status = 500


class ValidationFailed(ArmlabError):
    """Input that is well-formed but not acceptable (a field out of range, a bad spec)."""

    status = 422
    title = "Validation failed"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFound(ArmlabError):
    status = 404
    title = "Not found"


class ExperimentNotFound(NotFound):
    title = "Experiment not found"


class ArmNotFound(NotFound):
    title = "Arm not found"


class Conflict(ArmlabError):
    status = 409
    title = "Conflict"


class ExperimentExists(Conflict):
    title = "Experiment already exists"


class IllegalTransition(Conflict):
    title = "Illegal state transition"


class ConcurrentModification(Conflict):
    title = "Concurrent modification"


class Unauthorized(ArmlabError):
    status = 401
    title = "Unauthorized"


class Forbidden(ArmlabError):
    status = 403
    title = "Forbidden"


class TooManyRequests(ArmlabError):
    """Too many failed authentication attempts: the API answers 429 with ``Retry-After``."""

    status = 429
    title = "Too many requests"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InvalidEvent(ArmlabError):
    """An event that fails validation; consumers send it to the dead-letter topic."""

    status = 422
    title = "Invalid event"

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


class ServiceUnavailable(ArmlabError):
    status = 503
    title = "Service unavailable"


class PolicyError(ArmlabError):
    """Bad policy parameters or statistics (raised by armlab.core.policies). ``errors`` holds
    (field, message) pairs when the problem is in named parameters."""

    status = 422
    title = "Invalid policy parameters"

    def __init__(self, message: str, errors: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.errors = list(errors or [])


class StatsError(ArmlabError):
    """Bad inputs to a statistical routine (raised by armlab.core.stats)."""

    status = 422
    title = "Invalid statistics input"


class ScoringError(ArmlabError):
    """Bad variant configs, missing models, scoring failures (armlab.core.variants and
    armlab.adapters.scoring)."""

    status = 422
    title = "Scoring error"


class ModelNotAvailable(ScoringError):
    status = 503
    title = "Model not available"


_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s'\"]*:)[^@\s'\"]+@")


def redact(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` URL replaced by
    ``***`` (for anything that prints a database or broker URL)."""
    return _URL_PASSWORD.sub(r"\1***@", text)
